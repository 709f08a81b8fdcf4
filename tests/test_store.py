"""The Parquet store's compatibility: files written before a field existed read with its
default, and every row's spec still hashes to its stored trial id."""

import pyarrow.parquet as pq

import ntksweep
from ntksweep import store
from ntksweep.trial import run_trial
from ntksweep.trial_spec import ADDED_LATER, TrialSpec


def test_a_store_written_before_new_fields_existed_reads_with_their_defaults(tmp_path):
    """Files without the columns added since (architecture, …, gap_*_flow) still load: the
    spec fields take their defaults, and each row's spec hashes to its stored trial id."""
    spec = TrialSpec(width=8, n_train=4, n_eval=4, steps=2, checkpoints=2, device="cpu")
    store.write_trial(tmp_path, "x", spec, run_trial(spec))
    for path in tmp_path.rglob("*.parquet"):         # as the first release wrote them
        table = pq.read_table(path)
        old = [c for c in table.column_names
               if c not in ADDED_LATER and not c.endswith("_flow")]
        pq.write_table(table.select(old), path)
    trials, ckpts = ntksweep.load_results(tmp_path)
    for name, default in ADDED_LATER.items():
        assert (trials[name] == default).all() and (ckpts[name] == default).all()
    assert store.spec_from_row(trials.iloc[0]).trial_id == trials.trial_id[0] == spec.trial_id
