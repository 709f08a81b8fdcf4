"""One driver per output dir: a lock file with a heartbeat, on a local path or an object
store alike (it is written through ``store``'s text files).

A driver writes ``driver.lock`` (its host, pid, a random token and a generation number) and
rewrites it every ``HEARTBEAT`` seconds while it runs. Another driver refuses to start while
the lock is fresh, naming the holder; a lock whose heartbeat is older than ``STALE`` seconds,
or whose holder is a dead process on this host, is taken over, with the next generation.
Taking a lock writes it and reads it back after ``SETTLE`` seconds: of two drivers racing for
it, the one whose token is read back holds it and the other refuses (object stores have no
atomic create-if-absent).

A holder can lose its lock without knowing: a driver stopped for longer than ``STALE`` (Ctrl-Z,
a suspended laptop, a paused VM) is taken over, and when it continues it must not write
again. So every write is fenced by ``DriverLock.ensure_held``: within ``LEASE`` seconds of
the last time the holder read its own token back nobody can have taken the lock (that needs
``STALE`` seconds without a heartbeat); past it, the holder reads the lock again and raises
``LockLost`` if another driver holds it. The heartbeat never overwrites another driver's lock.

Files have no compare-and-swap, so a stop can also fall between a holder's read of its own
token and its write, which then lands late, over a taker's record. The newer generation wins:
- a holder that reads a record of an older generation than its own (a late write) rewrites
  its own, as taking the lock does;
- a holder that may have written late (a write that landed more than ``LEASE`` after the read
  that justified it), or whose own record has gone silent (older than ``LEASE + SETTLE``: a
  taker may be under way), rewrites it and reads it back only after ``RECLAIM`` seconds, time
  for a taker's heartbeat to restore its record — and raises ``LockLost`` if it did.
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
import uuid
from pathlib import Path

from ..errors import OutputDirError
from .location import delete_text, read_text, write_text

__all__ = ["DriverLock", "LockLost", "check_unlocked", "live_holder", "LOCK_FILE"]

LOCK_FILE = "driver.lock"
# seconds; the environment may shorten them (tests of a suspended driver)
HEARTBEAT = float(os.environ.get("NTKSWEEP_LOCK_HEARTBEAT", 10.0))
STALE = float(os.environ.get("NTKSWEEP_LOCK_STALE", 45.0))
LEASE = STALE / 3   # + SETTLE < STALE − HEARTBEAT: a verified holder stays the holder this long
SETTLE = 0.5
RECLAIM = 2 * HEARTBEAT + SETTLE   # a taker's heartbeat restores its record within this
CLAIM_TRIES = 5                    # late writes outlasted while taking the lock


class LockLost(OutputDirError):
    """Another driver took this one's output dir over (it was stopped for too long)."""


def _holder(out: str | Path) -> dict | None:
    try:
        text = read_text(out, LOCK_FILE)
    except UnicodeDecodeError:   # not a lock this version wrote: nobody holds it
        return None
    if text is None:
        return None
    try:
        held = json.loads(text)
        return held if isinstance(held, dict) else None
    except json.JSONDecodeError:  # a torn write: nobody holds it
        return None


def _generation(held: dict) -> int:
    try:
        return int(held.get("generation", 0) or 0)
    except (TypeError, ValueError):
        return 0


def _alive(held: dict) -> bool:
    """Whether the lock's holder may still be running."""
    if time.time() - float(held.get("heartbeat", 0)) > STALE:
        return False
    if held.get("host") == socket.gethostname():
        try:
            os.kill(int(held.get("pid", -1)), 0)
        except ProcessLookupError:
            return False
        except (PermissionError, ValueError):
            pass
    return True


def _refusal(out: str | Path, held: dict) -> OutputDirError:
    age = time.time() - float(held.get("started", time.time()))
    return OutputDirError(
        f"output dir {str(out)!r} is in use by another ntksweep driver (host "
        f"{held.get('host')!r}, pid {held.get('pid')}, running for {age:.0f} s): wait for it "
        f"to finish, or stop it; a lock whose driver died is taken over after {STALE:g} s "
        f"(or remove {LOCK_FILE} in the output dir)")


def live_holder(out: str | Path) -> dict | None:
    """The lock record (host, pid, started, heartbeat) of a live driver of ``out``, or None."""
    held = _holder(out)
    return held if held is not None and _alive(held) else None


def check_unlocked(out: str | Path) -> None:
    """Raise ``OutputDirError`` if a live driver holds the output dir (for --dry-run)."""
    if (held := live_holder(out)) is not None:
        raise _refusal(out, held)


class DriverLock:
    """Hold the output dir's lock until ``release()`` (a context manager too); fence every
    write with ``ensure_held()`` (module doc)."""

    def __init__(self, out: str | Path):
        self.out = out
        self.token = uuid.uuid4().hex
        self.generation = 1
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._verified = 0.0          # when a read last showed our token (time.time())
        self._lost: dict | None = None
        self._late = False            # a write of ours may have landed late (module doc)
        self._guard = threading.Lock()
        self.started = time.time()
        self.took_over = False        # acquired from a holder that left its record (stale)

    def _record(self) -> str:
        return json.dumps({"host": socket.gethostname(), "pid": os.getpid(),
                           "token": self.token, "generation": self.generation,
                           "started": self.started, "heartbeat": time.time()})

    def _write(self, read_at: float) -> bool:
        """Write our record; True if it landed more than ``LEASE`` after ``read_at``, the read
        that justified it (a stop fell in between: it may lie over a taker's record)."""
        write_text(self.out, LOCK_FILE, self._record())
        return time.time() - read_at > LEASE

    def acquire(self) -> DriverLock:
        read_at = time.time()
        check_unlocked(self.out)
        before = _holder(self.out) or {}
        self.took_over = bool(before)     # a released lock leaves no record behind
        self.generation = _generation(before) + 1
        self._claim(read_at)
        self._thread = threading.Thread(target=self._beat, name="driver-lock", daemon=True)
        self._thread.start()
        return self

    def _claim(self, read_at: float, settle: float = SETTLE) -> None:
        """Write our record, wait ``settle``, and read it back: ours, or a refusal. A record of
        an older generation read back is a stopped driver's late write: ours again."""
        for _ in range(CLAIM_TRIES):
            time.sleep(RECLAIM if self._write(read_at) else settle)
            read_at = time.time()
            held = _holder(self.out)
            if held is not None and held.get("token") == self.token:
                self._verified, self._late = read_at, False
                return
            if held is None or _generation(held) >= self.generation:
                break
            settle = SETTLE
        raise _refusal(self.out, held or {})

    def ensure_held(self) -> None:
        """Raise ``LockLost`` unless this driver still holds the lock (module doc): call it
        before every write. Cheap within ``LEASE`` of the last verification."""
        if self._lost is not None:
            raise self._lost_error()
        if time.time() - self._verified < LEASE:
            return
        with self._guard:
            if time.time() - self._verified < LEASE:
                return
            self._verify()

    def _verify(self) -> None:
        read_at = time.time()
        held = _holder(self.out)
        ours = held is not None and held.get("token") == self.token
        silent = ours and read_at - float(held.get("heartbeat", 0)) > LEASE + SETTLE
        if ours and not (silent or self._late):
            self._verified = read_at
            return
        if not ours and (held is None or _generation(held) >= self.generation):
            self._lost = held or {}
            raise self._lost_error()
        try:       # ours may lie over a taker's, or an older driver's lies over ours (module doc)
            self._claim(read_at, RECLAIM if ours else SETTLE)
        except OutputDirError:
            self._lost = _holder(self.out) or {}
            raise self._lost_error() from None

    def _lost_error(self) -> LockLost:
        held = self._lost or {}
        return LockLost(f"this driver lost the output dir {str(self.out)!r} to another driver "
                        f"(host {held.get('host')!r}, pid {held.get('pid')}) while it was "
                        f"stopped for more than {STALE:g} s; it stops here and writes nothing "
                        "more — the other driver carries the sweep on")

    def _beat(self) -> None:
        while not self._stop.wait(HEARTBEAT):
            try:
                with self._guard:
                    self._verify()       # never overwrite another driver's lock
                    self._late = self._write(self._verified)
            except LockLost:
                return                   # the writes find out through ensure_held
            except OSError:  # a full disk or a lost mount: the sweep reports it where it writes
                pass

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
            held = _holder(self.out)
            # a record of ours that may lie over a taker's stays (its pid's death frees it)
            if held is not None and held.get("token") == self.token and not self._late:
                delete_text(self.out, LOCK_FILE)

    def __enter__(self) -> DriverLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()
