"""The Parquet store read in bounded chunks: the same rows (and order) whatever the chunk
size, an unreadable file in the middle of a chunk skipped alone, the columns a caller needs
only, and a trial file copied into a second partition returned once."""

import shutil

import numpy as np
import pytest

import ntksweep
from ntksweep import store
from ntksweep.records import RECORD_COLUMNS, TrialOutcome
from ntksweep.store import scan
from ntksweep.trial_spec import TrialSpec

N = 11


def _write(out, n=N):
    base = TrialSpec(dataset="circle", n_train=2, n_eval=2, depth=2, steps=2, checkpoints=3)
    ids = []
    for i in range(n):
        spec = base.replace(seed=i, width=(8, 16, 32)[i % 3])
        records = [{c: float(10 * i + step) for c in RECORD_COLUMNS} | {"step": step}
                   for step in (0, 1, 2)]
        store.write_trial(out, "s", spec, TrialOutcome(spec.trial_id, "completed", records),
                          attempts=1 + i % 2)
        ids.append(spec.trial_id)
    return ids


def test_chunked_reads_are_the_whole_read_and_skip_only_the_broken_file(tmp_path, monkeypatch):
    _write(tmp_path)
    whole_trials, whole_ckpts = ntksweep.load_results(tmp_path)
    assert len(whole_trials) == N and len(whole_ckpts) == 3 * N
    monkeypatch.setattr(scan, "CHUNK_FILES", 4)             # chunks of 4: 3 of them
    trials, ckpts = ntksweep.load_results(tmp_path)
    assert trials.equals(whole_trials) and ckpts.equals(whole_ckpts)
    broken = sorted((tmp_path / "trials").rglob("*.parquet"))[5]
    broken.write_bytes(broken.read_bytes()[:30])
    with pytest.warns(UserWarning, match="1 unreadable file"):
        kept = store.load_trials(tmp_path)
    assert sorted(kept.trial_id) == sorted(set(whole_trials.trial_id) - {broken.stem})
    states, attempts = store.trial_states(tmp_path)
    assert set(states) == set(kept.trial_id)
    assert attempts == dict(zip(kept.trial_id, kept.attempts))


def test_a_few_columns_read_only_those(tmp_path):
    _write(tmp_path)
    few = store.load_trials(tmp_path, columns=["init_dist_inf"])
    assert {"init_dist_inf", "trial_id", "status", "width", "depth"} <= set(few.columns)
    assert "final_dist_init" not in few.columns
    full = store.load_trials(tmp_path)
    np.testing.assert_array_equal(few.init_dist_inf, full.init_dist_inf)


def test_a_trial_file_copied_into_another_partition_is_returned_once(tmp_path):
    ids = _write(tmp_path)
    source = next((tmp_path / "trials" / "width=8" / "depth=2").glob("*.parquet"))
    for table in ("trials", "checkpoints"):
        target = tmp_path / table / "width=16" / "depth=2"
        shutil.copy(tmp_path / table / "width=8" / "depth=2" / source.name, target)
    trials, ckpts = ntksweep.load_results(tmp_path)
    assert sorted(trials.trial_id) == sorted(ids)
    row = trials.set_index("trial_id").loc[source.stem]
    assert row.width == 8                                     # the copy whose spec it is
    mine = ckpts[ckpts.trial_id == source.stem]
    assert list(mine.step) == [0, 1, 2] and set(mine.width) == {8}
