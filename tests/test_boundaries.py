"""The house's boundaries, as the docs promise them: each external system imported by its one
adapter, the spec side and the command line's planning free of torch, Ray and MLflow, and
docs/ARCHITECTURE.md naming every module the package has."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PROBE = """
import sys
{imports}
print("\\nLOADED=" + ",".join(m for m in ("torch", "ray", "mlflow", "pyarrow", "matplotlib")
                              if m in sys.modules))
"""


def _loaded(*imports: str) -> set[str]:
    """The heavy packages a fresh interpreter holds after ``imports``."""
    code = PROBE.format(imports="\n".join(imports))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, cwd=ROOT)
    line = out.stdout.strip().splitlines()[-1].removeprefix("LOADED=")
    return set(filter(None, line.split(",")))


def test_each_external_system_has_one_adapter():
    """Only ``sweep`` imports Ray, only ``tracking`` MLflow, only ``store`` pyarrow."""
    owners = {"ray": "ntksweep/sweep/", "mlflow": "ntksweep/tracking/",
              "pyarrow": "ntksweep/store/"}
    for path in sorted((ROOT / "ntksweep").rglob("*.py")):
        rel = path.relative_to(ROOT).as_posix()
        for line in path.read_text().splitlines():
            words = line.strip().split()
            if words[:1] in (["import"], ["from"]) and len(words) > 1:
                top = words[1].split(".")[0]
                if top in owners:
                    assert rel.startswith(owners[top]), (rel, line)


def test_what_each_layer_pulls_in():
    assert _loaded("import ntksweep.records") == set()
    assert _loaded("import ntksweep.kernels") == {"torch"}
    assert _loaded("import ntksweep.store") == {"pyarrow"}              # strict: no torch
    assert _loaded("import ntksweep.trial") <= {"torch", "pyarrow"}     # no Ray, no MLflow
    # the spec side, planning, the summaries, sync and the command line: no torch
    for module in ("trial_spec", "sweep_spec", "plan", "console", "sync", "analysis.stats",
                   "cli"):
        assert _loaded(f"import ntksweep.{module}") <= {"pyarrow"}, module


def test_a_dry_run_status_and_help_import_no_torch_ray_or_mlflow(tmp_path):
    """The commands that only read a spec or an output dir start in a fraction of a second."""
    spec = tmp_path / "s.yaml"
    spec.write_text(f"name: light\noutput_dir: {tmp_path / 'out'}\n"
                    "base: {steps: 2, checkpoints: 2}\n")
    for argv in (["run", str(spec), "--dry-run"], ["--help"], ["run", "--help"],
                 ["trial", "--help"], ["status", str(tmp_path)]):
        run = (f"from ntksweep import cli\ntry:\n    cli.main({argv!r})\n"
               "except SystemExit:\n    pass")
        assert _loaded(run) <= {"pyarrow"}, argv


def _module_names() -> list[str]:
    """Every module of the package as the docs name it: ``plan``, ``trial/runner``, a
    package by its dir (``trial/``)."""
    names = []
    for path in sorted((ROOT / "ntksweep").rglob("*.py")):
        rel = path.relative_to(ROOT / "ntksweep")
        if rel.name != "__init__.py":
            names.append(rel.with_suffix("").as_posix())
        elif rel.parent != Path("."):
            names.append(rel.parent.as_posix() + "/")
    return names


def test_the_architecture_doc_names_every_module():
    doc = (ROOT / "docs" / "ARCHITECTURE.md").read_text()
    missing = [name for name in _module_names() if f"`{name}`" not in doc]
    assert not missing, f"docs/ARCHITECTURE.md does not name {missing}"
