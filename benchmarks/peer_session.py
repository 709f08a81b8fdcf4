"""Timing ntksweep against a peer that lives in another venv, interleaved: the peer's
process (``peer_neural_tangents.serve``) stays up with its cases compiled and times one call
per request, and each repeat runs the peer's call and then ours, case by case — so a shared
machine's drift (2× within an hour on the VM) falls on both sides of every ratio instead of
on whichever side ran later. Only one side computes at a time.
"""

from __future__ import annotations

import json
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np


class Peer:
    """``python script INPUTS.npz OUT.npz *args`` as a timing server (a context manager):
    ``outputs`` is what it wrote to OUT.npz, ``seconds(case)`` one timed call."""

    def __init__(self, python: str, script: str, inputs: dict, *args: str):
        self._dir = tempfile.TemporaryDirectory()
        tmp = Path(self._dir.name)
        np.savez(tmp / "inputs.npz", **inputs)
        self._log = open(tmp / "stderr.log", "w+")
        self._proc = subprocess.Popen(
            [python, script, str(tmp / "inputs.npz"), str(tmp / "out.npz"), *args],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._log, text=True)
        try:
            self.cases = self._reply()["ready"]
            with np.load(tmp / "out.npz") as out:
                self.outputs = {k: out[k] for k in out.files}
        except BaseException:
            self.__exit__()
            raise

    def _reply(self) -> dict:
        for line in self._proc.stdout:
            if line.startswith("{"):
                reply = json.loads(line)
                if "error" in reply:
                    raise RuntimeError(f"the peer: {reply['error']}")
                return reply
        self._log.seek(0)
        raise RuntimeError(f"the peer exited (code {self._proc.wait()}):\n{self._log.read()}")

    def seconds(self, case: str) -> float:
        self._proc.stdin.write(f"time {case}\n")
        self._proc.stdin.flush()
        return self._reply()["seconds"]

    def __enter__(self) -> Peer:
        return self

    def __exit__(self, *exc) -> None:
        try:
            self._proc.stdin.close()                     # the peer's loop ends, and it exits
        except BrokenPipeError:                          # it had already
            pass
        self._proc.wait()
        self._log.close()
        self._dir.cleanup()


def interleaved_best(peer: Peer, ours: dict[str, Callable[[], object]], repeats: int,
                     sync: Callable[[], None] = lambda: None) -> tuple[dict, dict, dict]:
    """(our best seconds per case, the peer's, what each of our cases returned in its
    warm-up call), over ``repeats`` rounds in which each case runs the peer's call and then
    ours (the peer compiled its cases before it said it was ready)."""
    results = {}
    for case, fn in ours.items():
        results[case] = fn()
        sync()
    best_ours, best_peer = dict.fromkeys(ours, float("inf")), dict.fromkeys(ours, float("inf"))
    for _ in range(repeats):
        for case, fn in ours.items():
            best_peer[case] = min(best_peer[case], peer.seconds(case))
            t0 = time.perf_counter()
            fn()
            sync()
            best_ours[case] = min(best_ours[case], time.perf_counter() - t0)
    return best_ours, best_peer, results
