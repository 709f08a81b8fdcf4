"""What a sweep prints while it runs: its start-up phases at once, progress as log lines without
a terminal."""

import io
import subprocess
import sys
import time

import pytest
import yaml

from ntksweep.console import LogProgress, progress


def test_progress_lines_wait_for_the_warm_up_before_an_eta():
    """Without a terminal: a line per update here (every=0); no ETA until the first wave of
    trials (the workers' start-up) is done and one more trial gives a rate."""
    out = io.StringIO()
    bar = LogProgress(5, every=0.0, stream=out, warmup=2)
    for _ in range(5):
        bar.update(1)
        time.sleep(0.01)
    lines = out.getvalue().splitlines()
    assert all("warming up" in line and "ETA" not in line for line in lines[:2]), lines
    assert all("ETA" in line for line in lines[2:4]), lines
    assert lines[-1].startswith("trials: 5/5 done") and "warming" not in lines[-1]
    quiet = progress(3, quiet=True)                                # nothing at all
    quiet.update(1)
    quiet.close()


@pytest.mark.slow
def test_a_sweep_says_what_it_does_from_its_first_moment_and_its_driver_never_loads_torch(
        tmp_path):
    """Without a terminal: one line per start-up phase, in order, before the progress lines
    (the first once the plan is checked, before Ray or MLflow start: a refused spec prints
    its one error line alone); the driver defines the actors but leaves torch to them."""
    spec = tmp_path / "s.yaml"
    spec.write_text(yaml.safe_dump({"name": "talks", "output_dir": str(tmp_path / "out"),
                                    "base": {"dataset": "circle", "n_train": 8, "n_eval": 8,
                                             "depth": 2, "steps": 4, "checkpoints": 2},
                                    "grid": {"width": [8, 16]}}))
    script = ("import sys; from ntksweep import cli; rc = cli.main(['run', sys.argv[1], "
              "'--num-cpus', '2']); print('torch loaded:', 'torch' in sys.modules); "
              "sys.exit(rc)")
    run = subprocess.run([sys.executable, "-c", script, str(spec)], capture_output=True,
                         text=True, timeout=600)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "torch loaded: False" in run.stdout
    phases = [line for line in run.stderr.splitlines() if line.startswith("[")]
    expected = ["trials to run", "starting a local Ray", "Ray ready",
                "the first trial is running"]
    assert len(phases) == len(expected), run.stderr
    for line, words in zip(phases, expected):
        assert words in line, (line, words)
    assert float(phases[0][1:].split()[0]) < float(phases[-1][1:].split()[0])
    progress_at = run.stderr.index("trials: ")
    assert run.stderr.index(phases[-1]) < progress_at
