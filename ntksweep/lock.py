"""One driver per output dir: a lock file with a heartbeat, on a local path or an object
store alike (it is written through ``store``'s text files).

A driver writes ``driver.lock`` (its host, pid and a random token) and rewrites it every
``HEARTBEAT`` seconds while it runs. Another driver refuses to start while the lock is
fresh, naming the holder; a lock whose heartbeat is older than ``STALE`` seconds, or whose
holder is a dead process on this host, is taken over. Taking a lock writes it and reads it
back after ``SETTLE`` seconds: of two drivers racing for it, the one whose token is read back
holds it and the other refuses (object stores have no atomic create-if-absent).
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
import uuid
from pathlib import Path

from . import store
from .errors import OutputDirError

__all__ = ["DriverLock", "check_unlocked", "live_holder", "LOCK_FILE"]

LOCK_FILE = "driver.lock"
HEARTBEAT = 10.0
STALE = 45.0
SETTLE = 0.5


def _holder(out: str | Path) -> dict | None:
    text = store.read_text(out, LOCK_FILE)
    if text is None:
        return None
    try:
        held = json.loads(text)
        return held if isinstance(held, dict) else None
    except json.JSONDecodeError:  # a torn write: nobody holds it
        return None


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
    """Hold the output dir's lock until ``release()`` (a context manager too)."""

    def __init__(self, out: str | Path):
        self.out = out
        self.token = uuid.uuid4().hex
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.started = time.time()

    def _record(self) -> str:
        return json.dumps({"host": socket.gethostname(), "pid": os.getpid(),
                           "token": self.token, "started": self.started,
                           "heartbeat": time.time()})

    def acquire(self) -> DriverLock:
        check_unlocked(self.out)
        store.write_text(self.out, LOCK_FILE, self._record())
        time.sleep(SETTLE)
        held = _holder(self.out)
        if held is None or held.get("token") != self.token:
            raise _refusal(self.out, held or {})
        self._thread = threading.Thread(target=self._beat, name="driver-lock", daemon=True)
        self._thread.start()
        return self

    def _beat(self) -> None:
        while not self._stop.wait(HEARTBEAT):
            try:
                store.write_text(self.out, LOCK_FILE, self._record())
            except OSError:  # a full disk or a lost mount: the sweep reports it where it writes
                pass

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
            held = _holder(self.out)
            if held is not None and held.get("token") == self.token:
                store.delete_text(self.out, LOCK_FILE)

    def __enter__(self) -> DriverLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()
