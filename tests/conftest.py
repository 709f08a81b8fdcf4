import os

import pytest

# Local test clusters: Ray 2.60's token auth is for shared clusters (shared/NOTES.md).
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
