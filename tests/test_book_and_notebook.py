import subprocess
import sys

import nbformat
import pytest
from nbformat.v4 import new_code_cell, new_notebook

from hrvit_edu.notebook import report, setup_notebook


def _nb(path, *sources):
    nb = new_notebook(cells=[new_code_cell(s) for s in sources])
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, path)


@pytest.mark.slow
def test_book_runs_chapters_writes_build_and_summarises(tmp_path):
    chapters = tmp_path / "chapters"
    chapters.mkdir()
    _nb(chapters / "00_ok.ipynb", "from hrvit_edu.notebook import setup_notebook, report\nctx = setup_notebook()",
        "report('00_ok', test_miou=0.71234, steps=3)")
    _nb(chapters / "01_broken.ipynb", "raise RuntimeError('boom')")
    out = tmp_path / "build"
    r = subprocess.run([sys.executable, "-m", "hrvit_edu.book", "--chapters", str(chapters),
                        "--out", str(out), "--profile", "ci"], capture_output=True, text=True, timeout=600)
    assert r.returncode == 1, r.stdout + r.stderr
    assert "00_ok" in r.stdout and "test_miou=0.7123" in r.stdout and "steps=3" in r.stdout
    assert "FAILED (RuntimeError: boom)" in r.stdout
    for name in ("00_ok", "01_broken"):
        assert (out / f"{name}.ipynb").exists() and (out / f"{name}.html").exists()
    html = (out / "00_ok.html").read_text()
    assert "<html" in html


def test_book_refuses_unknown_profile(tmp_path):
    r = subprocess.run([sys.executable, "-m", "hrvit_edu.book", "--chapters", str(tmp_path),
                        "--profile", "turbo"], capture_output=True, text=True, timeout=120)
    assert r.returncode != 0 and "unknown profile 'turbo'" in r.stderr


def test_setup_notebook_and_report(tmp_path, monkeypatch, capsys):
    import torch
    monkeypatch.setenv("HRVIT_EDU_REPORT_DIR", str(tmp_path))
    threads = torch.get_num_threads()
    try:
        ctx = setup_notebook(seed=3, threads=1, profile="ci")
        assert ctx.profile == "ci" and torch.get_num_threads() == 1
        assert "profile ci" in capsys.readouterr().out
        a = torch.rand(3)
        setup_notebook(seed=3, threads=1, profile="ci")
        assert torch.equal(a, torch.rand(3))
    finally:
        torch.set_num_threads(threads)
        torch.use_deterministic_algorithms(False)
    out = report("99_test", miou=0.123456, steps=5)
    assert out == {"miou": 0.1235, "steps": 5}
    assert (tmp_path / "99_test.json").read_text().count("0.1235") == 1
