"""What a sweep prints while it runs: progress as log lines without a terminal."""

import io
import time

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
