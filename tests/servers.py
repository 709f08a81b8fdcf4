"""Real servers the tests start and stop: `mlflow server`, moto's S3-compatible server, and
Ray nodes started with `ray start` (what a user types on a cluster), each as its own process."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

from ntksweep.tracking import SERVER_ENV


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until(ready: Callable[[], bool], what: str, proc: subprocess.Popen | None = None,
               timeout: float = 120.0) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if ready():
            return
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{what} exited with code {proc.returncode}")
        time.sleep(0.5)
    raise TimeoutError(f"{what} did not come up within {timeout:.0f} s")


def processes_under(pid: int, marker: str) -> list[int]:
    """The processes descending from ``pid`` whose command line contains ``marker`` (Linux
    /proc; a Ray actor's command line is its title, ``ray::Class.method``)."""
    parent, cmdline = {}, {}
    for d in Path("/proc").iterdir():
        try:
            parent[int(d.name)] = int((d / "stat").read_text().rsplit(")", 1)[1].split()[1])
            cmdline[int(d.name)] = (d / "cmdline").read_bytes().decode(errors="replace")
        except (ValueError, OSError):
            continue

    def descends(p: int) -> bool:
        while p > 1:
            if p == pid:
                return True
            p = parent.get(p, 0)
        return False

    return [p for p, c in cmdline.items() if marker in c and p != pid and descends(p)]


def stop_running_trials(driver_pid: int) -> list[int]:
    """SIGSTOP the Ray workers under ``driver_pid`` that are in a trial, so that it stays
    live for as long as a test needs (one just ending may be among them); their pids."""
    pids = processes_under(driver_pid, "ray::TrialWorker.run")
    for pid in pids:
        os.kill(pid, signal.SIGSTOP)
    return pids


def resume(pids: list[int]) -> None:
    """SIGCONT the processes ``stop_running_trials`` stopped (those still there)."""
    for pid in pids:
        try:
            os.kill(pid, signal.SIGCONT)
        except ProcessLookupError:
            pass


def _http_ok(url: str) -> bool:
    try:
        urllib.request.urlopen(url, timeout=2)
        return True
    except OSError:
        return False


def _stop(proc: subprocess.Popen | None, sig=signal.SIGTERM, timeout: float = 60) -> None:
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(sig)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(10)


class MlflowServer:
    """A real `mlflow server` process with a SQLite backend."""

    def __init__(self, root: Path, port: int | None = None):
        self.root, self.port = root, port or free_port()
        self.uri = f"http://127.0.0.1:{self.port}"
        self.proc = None

    def start(self) -> MlflowServer:
        self.root.mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port",
             str(self.port), "--backend-store-uri", f"sqlite:///{self.root}/server.db",
             "--default-artifact-root", str(self.root / "artifacts"), "--workers", "1"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            env={**os.environ, **SERVER_ENV})  # no job runner: half of a 2-core machine
        wait_until(lambda: _http_ok(f"{self.uri}/health"), "mlflow server", self.proc)
        return self

    def stop(self) -> None:
        _stop(self.proc)


class MotoS3:
    """moto's S3-compatible server (``python -m moto.server``) with one bucket; clients find
    it through AWS_ENDPOINT_URL, as they would find MinIO or any S3-compatible store."""

    def __init__(self, bucket: str = "ntksweep-test"):
        self.port = free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self.bucket = bucket
        self.env = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                    "AWS_DEFAULT_REGION": "us-east-1", "AWS_ENDPOINT_URL": self.endpoint}
        self.proc = None

    def start(self) -> MotoS3:
        self.proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1",
                                      "-p", str(self.port)],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_until(lambda: _http_ok(f"{self.endpoint}/moto-api/"), "moto server", self.proc)
        self.client().create_bucket(Bucket=self.bucket)
        return self

    def client(self):
        import boto3

        return boto3.client("s3", endpoint_url=self.endpoint, region_name="us-east-1",
                            aws_access_key_id="testing", aws_secret_access_key="testing")

    def keys(self, prefix: str = "") -> list[str]:
        pages = self.client().get_paginator("list_objects_v2").paginate(
            Bucket=self.bucket, Prefix=prefix)
        return sorted(o["Key"] for page in pages for o in page.get("Contents", []))

    def stop(self) -> None:
        _stop(self.proc)


class RayNodes:
    """A Ray cluster of separate `ray start --block` processes on this machine: a head (with
    the dashboard, so `ray job submit` works) and workers, with token authentication on.
    Every port is chosen free, so it coexists with the tests' own local Ray."""

    def __init__(self, cpus_per_node: int = 1):
        self.cpus = cpus_per_node
        # short: Ray's Unix sockets live under it (108-byte path limit)
        self.temp_dir = Path(f"/tmp/ntk-ray-{os.getpid()}-{free_port()}")
        self.gcs_port, self.dashboard_port = free_port(), free_port()
        self.address = f"127.0.0.1:{self.gcs_port}"
        self.dashboard = f"http://127.0.0.1:{self.dashboard_port}"
        self.env = {**os.environ, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": os.urandom(16).hex(),
                    "RAY_USAGE_STATS_ENABLED": "0"}
        self.procs: list[subprocess.Popen] = []

    def _node_ports(self) -> list[str]:
        return ["--dashboard-agent-listen-port", str(free_port()),
                "--dashboard-agent-grpc-port", str(free_port()),
                "--runtime-env-agent-port", str(free_port()),
                "--metrics-export-port", str(free_port())]

    def _start(self, args: list[str], log: str) -> subprocess.Popen:
        out = open(self.temp_dir / log, "w")  # noqa: SIM115  (closed with the process)
        self.procs.append(subprocess.Popen(
            ["ray", "start", "--block", "--node-ip-address", "127.0.0.1",
             "--num-cpus", str(self.cpus), *self._node_ports(), *args],
            env=self.env, stdout=out, stderr=subprocess.STDOUT))
        return self.procs[-1]

    def _start_node(self, args: list[str], name: str, nodes: int) -> None:
        """Start one node and wait until the cluster has ``nodes`` alive. A raylet gives its
        dashboard agent a fixed 15 s to write its port file and exits when it is late
        (ray-project/ray#65983: "The current node timed out during startup"), which a
        loaded 2-core VM sometimes is: that node is started again, twice at most."""
        for attempt in range(3):
            log = f"{name}.{attempt}.log"
            proc = self._start(args, log)
            try:
                wait_until(lambda: self.alive_nodes() == nodes, f"ray {name}", proc, timeout=180)
                return
            except RuntimeError:
                if "timed out during startup" not in (self.temp_dir / log).read_text():
                    raise
        raise RuntimeError(f"ray {name} timed out during startup 3 times")

    def alive_nodes(self) -> int:
        res = subprocess.run(["ray", "status", "--address", self.address], env=self.env,
                             capture_output=True, text=True, timeout=60)
        if res.returncode != 0:
            return 0
        active = res.stdout.split("Active:")[-1].split("Pending:")[0]
        return sum(line.strip().startswith("1 node_") for line in active.splitlines())

    def start(self, n_workers: int = 1) -> RayNodes:
        self.temp_dir.mkdir(parents=True)
        try:
            self._start_node(["--head", "--port", str(self.gcs_port), "--include-dashboard",
                              "true", "--dashboard-host", "127.0.0.1", "--dashboard-port",
                              str(self.dashboard_port), "--temp-dir", str(self.temp_dir)],
                             "head", 1)
            for i in range(n_workers):
                self._start_node(["--address", self.address], f"worker{i}", 2 + i)
        except (RuntimeError, TimeoutError) as e:  # say why: the logs go with the temp dir
            logs = self.logs()
            self.stop()
            raise RuntimeError(f"{e}; `ray start` said:\n{logs}") from None
        return self

    def logs(self) -> str:
        return "\n".join(p.read_text()[-3000:] for p in sorted(self.temp_dir.glob("*.log")))

    def stop(self) -> None:
        for proc in reversed(self.procs):  # workers first, then the head
            _stop(proc)
        shutil.rmtree(self.temp_dir, ignore_errors=True)
