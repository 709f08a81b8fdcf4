"""The docs stay true: their links resolve, and the user guide's worked example runs and
shows the laws its prose claims."""

import contextlib
import io
import re
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", ROOT / "docs" / "guide.md", ROOT / "docs" / "ARCHITECTURE.md",
        ROOT / "cluster" / "README.md"]


def _anchor(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation dropped, spaces to dashes."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def _anchors(path: Path) -> set[str]:
    return {_anchor(line.lstrip("#")) for line in path.read_text().splitlines()
            if line.startswith("#")}


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_link_of_the_docs_resolves(doc):
    broken = []
    for target in re.findall(r"\]\(([^)\s]+)\)", doc.read_text()):
        if "://" in target or target.startswith("mailto:"):
            continue
        file, _, anchor = target.partition("#")
        path = (doc.parent / file).resolve() if file else doc
        if not path.exists() or (anchor and path.suffix == ".md"
                                 and anchor not in _anchors(path)):
            broken.append(target)
    assert not broken, f"{doc.name}: links to nothing: {broken}"


def _example_cells() -> list[str]:
    guide = (ROOT / "docs" / "guide.md").read_text()
    section = guide.split("## The Python API: a worked example", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```python\n(.*?)```", section, re.S)


@pytest.mark.slow
def test_the_guides_worked_example_runs_and_shows_what_it_says(ray_local, tmp_path,
                                                               monkeypatch):
    """The cells run in order in one namespace, as a notebook does; what the prose reads
    off them holds: Θ_0 → Θ_∞ like n^(−½) within the fit's CI, the trial's loss falls
    while its kernel moves little, and the sweep's kernels move less the wider they are."""
    monkeypatch.chdir(tmp_path)
    cells, ns = _example_cells(), {}
    assert len(cells) == 4
    for cell in cells:
        with contextlib.redirect_stdout(io.StringIO()):
            exec(compile(cell, "guide.md", "exec"), ns)
    assert ns["fit"].slope_lo < -0.5 < ns["fit"].slope_hi
    records = ns["outcome"].records
    assert records[-1]["train_loss"] < records[0]["train_loss"] / 5
    assert records[-1]["dist_init"] < 0.3
    assert ns["summary"].counts == {"completed": 9}
    assert (tmp_path / "out" / "nb" / "dist_inf_vs_width.png").stat().st_size > 10_000
    moved = ns["ckpts"][ns["ckpts"].step == ns["ckpts"].step.max()].groupby("width").dist_init
    assert moved.mean().is_monotonic_decreasing
    distance = np.linalg.norm(ns["theta"].numpy() - ns["limit"]) / np.linalg.norm(ns["limit"])
    assert distance < 0.1


def test_the_guides_spec_reference_is_a_valid_spec_showing_every_field_at_its_default():
    """The reference spec says "defaults in ntksweep/trial_spec.py": it loads, and each base
    field it lists holds the default a spec that omits it gets; only the grid axes (width,
    seed) are left to the grid."""
    import dataclasses

    import yaml

    from ntksweep.sweep_spec import load_sweep_spec
    from ntksweep.trial_spec import TrialSpec

    guide = (ROOT / "docs" / "guide.md").read_text()
    reference = yaml.safe_load(re.findall(r"```yaml\n(.*?)```", guide, re.S)[0])
    load_sweep_spec(reference)
    defaults = {f.name: f.default for f in dataclasses.fields(TrialSpec)}
    base = reference["base"]
    assert {k: v for k, v in base.items() if defaults[k] != v} == {}
    assert set(defaults) - set(base) == set(reference["grid"])


def test_the_readmes_example_spec_shows_the_defaults():
    """The README's sweep in short loads, and every base field it shows is at its default
    (a reader copies it to learn what the defaults are)."""
    import dataclasses

    import yaml

    from ntksweep.sweep_spec import load_sweep_spec
    from ntksweep.trial_spec import TrialSpec

    readme = (ROOT / "README.md").read_text()
    example = yaml.safe_load(re.findall(r"```yaml\n(.*?)```", readme, re.S)[0])
    load_sweep_spec(example)
    defaults = {f.name: f.default for f in dataclasses.fields(TrialSpec)}
    assert {k: v for k, v in example["base"].items() if defaults[k] != v} == {}
