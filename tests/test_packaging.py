"""The environment files agree, and every notebook follows the book's conventions."""
import json
import re
import sys
from pathlib import Path

import pytest
import yaml

if sys.version_info >= (3, 11):
    import tomllib
else:
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted(p for g in ("chapters/*.ipynb", "exercises/*.ipynb", "exercises/solutions/*.ipynb")
                   for p in ROOT.glob(g))


def _name(req: str) -> str:
    return re.split(r"[<>=!~;\[ ]", req.strip(), maxsplit=1)[0].lower()


def test_environment_yml_lists_the_pyproject_dependencies():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    wanted = list(project["dependencies"])
    for extra in ("notebooks", "test", "book"):
        wanted += project["optional-dependencies"][extra]
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    listed = {l.split(";")[0].replace(" ", ""): l for l in pip if not l.startswith("-e")}
    for req in wanted:
        if "python_version" in req:          # back-ports for old Pythons; conda pins 3.11
            continue
        assert req.split(";")[0].replace(" ", "") in listed, f"environment.yml misses {req!r}"
    names = {_name(r) for r in wanted}
    extra = {_name(l) for l in listed} - names
    assert not extra, f"environment.yml lists packages pyproject.toml does not: {extra}"
    assert "-e .[notebooks,test,book]" in pip


def test_torch_is_not_pinned_in_pyproject():
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    assert not any(d.startswith("torch==") for d in deps)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_conventions(path):
    nb = json.loads(path.read_text())
    code = [c for c in nb["cells"] if c["cell_type"] == "code"]
    assert "setup_notebook(" in "".join(code[0]["source"]), "first code cell must call setup_notebook"
    for i, c in enumerate(nb["cells"]):
        if c["cell_type"] != "code":
            assert not c.get("metadata", {}).get("tags"), f"cell {i}: tags on a markdown cell do nothing"
            continue
        src = "".join(c["source"])
        assert "NBVAL_" not in src, f"cell {i}: use tags, not NBVAL comments"
        assert not c["outputs"] or c["execution_count"] is not None, f"cell {i}: outputs without a count"
        for o in c["outputs"]:
            assert o["output_type"] != "error", f"cell {i}: stored error"
            text = "".join(o.get("text", "")) + "".join(o.get("data", {}).get("text/plain", ""))
            assert not re.search(r" at 0x[0-9a-f]+|it/s\]", text), f"cell {i}: address or progress bar"
            assert "image/svg+xml" not in o.get("data", {}), f"cell {i}: figures must be PNG"
            if o.get("name") == "stderr":
                tags = c.get("metadata", {}).get("tags", [])
                assert "nbval-ignore-output" in tags, f"cell {i}: stderr in a compared cell"


def test_license_citation_and_entry_points():
    import importlib

    meta = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert meta["license"] == "MIT" and "MIT License" in (ROOT / "LICENSE").read_text()
    cff = yaml.safe_load((ROOT / "CITATION.cff").read_text())
    titles = [r["title"] for r in cff["references"]]
    assert len(titles) == 5 and any("High-Resolution Vision Transformer" in t for t in titles)
    bib = (ROOT / "docs" / "references.bib").read_text()
    assert bib.count("@inproceedings") == 5
    for name, target in meta["scripts"].items():
        module, func = target.split(":")
        assert callable(getattr(importlib.import_module(module), func)), name


def test_installed_triton_is_in_the_declared_range():
    import importlib.metadata as md

    from packaging.requirements import Requirement
    from packaging.version import Version

    meta = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    (req,) = [Requirement(r) for r in meta["dependencies"] if r.startswith("triton")]
    try:
        installed = Version(md.version("triton"))
    except md.PackageNotFoundError:
        pytest.skip("Triton is not installed (not Linux)")
    assert req.specifier.contains(installed), f"triton {installed} is outside {req.specifier}"


def test_ruff_is_clean():
    import shutil
    import subprocess

    ruff = shutil.which("ruff") or str(Path(sys.executable).parent / "ruff")
    r = subprocess.run([ruff, "check", "hrvit_edu", "tests", "tools"], cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 0, r.stdout
