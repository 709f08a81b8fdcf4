import os

import pytest
from servers import MlflowServer, MotoS3

# Local test clusters: Ray 2.60's token auth is for shared clusters (docs/ARCHITECTURE.md, Ray).
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
# A tracking server that is down must fail fast in tests, not after minutes of retries.
os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "5")


@pytest.fixture
def ray_local():
    """A real local Ray with 2 CPUs, started on first use and reused until a test needs a
    differently shaped cluster (``ray_fresh``) or the session ends."""
    import ray

    if ray.is_initialized() and ray.cluster_resources().get("GPU", 0) > 0:
        ray.shutdown()
    if not ray.is_initialized():
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray


@pytest.fixture
def ray_fresh():
    """No Ray running: the test starts (and stops) its own cluster."""
    import ray

    ray.shutdown()
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session", autouse=True)
def _stop_ray_at_exit():
    yield
    import ray

    ray.shutdown()


@pytest.fixture
def mlflow_server(tmp_path):
    """A real `mlflow server` process on localhost (SQLite backend in tmp_path)."""
    server = MlflowServer(tmp_path / "mlflow-server").start()
    yield server
    server.stop()


@pytest.fixture
def s3(monkeypatch):
    """A real S3-compatible server (moto) with one bucket; this process's AWS settings point
    at it, as a user's would at MinIO."""
    from ntksweep import store

    server = MotoS3().start()
    for k, v in server.env.items():
        monkeypatch.setenv(k, v)
    store.forget_filesystems()       # filesystems built for another endpoint
    yield server
    store.forget_filesystems()
    server.stop()


# The fast tier (`pytest -m "not slow"`) is pure maths, specs, the store and small trials;
# every test that starts a Ray cluster, an MLflow server or an S3 server is in the full suite
# only, whatever its own marks say.
_SERVICES = {"ray_local", "ray_fresh", "mlflow_server", "s3"}


def pytest_collection_modifyitems(config, items):
    for item in items:
        if _SERVICES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)


# The fast tier's time, printed at the end of every run (CI's too): the inner loop's budget
# is ~3 minutes on 2 cores.
_FAST = {"seconds": 0.0, "tests": 0}


def pytest_runtest_logreport(report):
    if "slow" not in report.keywords:
        _FAST["seconds"] += report.duration
        _FAST["tests"] += report.when == "call"


def pytest_terminal_summary(terminalreporter):
    terminalreporter.write_line(f"fast tier (-m 'not slow'): {_FAST['tests']} tests, "
                                f"{_FAST['seconds']:.0f} s of this run")
