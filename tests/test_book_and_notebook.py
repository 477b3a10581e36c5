import json
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest
from nbformat.v4 import new_code_cell, new_notebook

from hrvit_edu.notebook import report, setup_notebook


def _nb(path, *sources):
    nb = new_notebook(cells=[new_code_cell(s) for s in sources])
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, path)


def _cells(path, *cells):
    """cells: ("md", text) or plain code strings."""
    from nbformat.v4 import new_markdown_cell
    nb = new_notebook(cells=[new_markdown_cell(c[1]) if isinstance(c, tuple) else new_code_cell(c) for c in cells])
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, path)


def _book(chapters, out, *extra):
    return subprocess.run([sys.executable, "-m", "hrvit_edu.book", "--chapters", str(chapters),
                           "--out", str(out), "--profile", "ci", "--no-site", *extra],
                          capture_output=True, text=True, timeout=600)


@pytest.mark.slow
def test_book_reports_a_failure_where_it_happened_and_runs_the_other_chapters(tmp_path):
    chapters = tmp_path / "chapters"
    chapters.mkdir()
    _cells(chapters / "00_broken.ipynb", ("md", "# Broken"), "x = 1",
           ("md", "## 2. The section that breaks"), "def deep():\n    raise ValueError('boom at depth')\n\ndeep()",
           "print('never runs')")
    _cells(chapters / "01_ok.ipynb", "from hrvit_edu.notebook import setup_notebook, report\nctx = setup_notebook()",
           "report('01_ok', test_miou=0.71234, steps=3)")
    out = tmp_path / "build"
    r = _book(chapters, out)
    assert r.returncode == 1, r.stdout + r.stderr
    lines = r.stdout.splitlines()
    assert lines[0] == "00_broken: FAILED in " + lines[0].split(" in ")[1]
    assert "failed at cell 3 (2. The section that breaks): ValueError: boom at depth" in r.stdout
    assert "raise ValueError('boom at depth')" in r.stdout                      # the traceback's end
    assert f"partially executed notebook: {out / '00_broken.ipynb'}" in r.stdout
    partial = nbformat.read(out / "00_broken.ipynb", as_version=4)
    assert partial.cells[1].outputs == [] and partial.cells[3].outputs[-1]["ename"] == "ValueError"
    assert not partial.cells[4].outputs                                          # stopped there
    # the other chapter still ran; the summary marks the failed one
    assert any(l.startswith("01_ok: ok in ") for l in lines)
    assert "test_miou=0.7123" in r.stdout and "steps=3" in r.stdout
    summary = [l for l in lines if l.startswith("00_broken ")]
    assert summary and "FAILED" in summary[0] and "cell 3: ValueError: boom at depth" in summary[0]
    for name in ("00_broken", "01_ok"):
        assert (out / f"{name}.ipynb").exists() and "<html" in (out / f"{name}.html").read_text()
    # the main job ends with the report: runtimes and statuses of this run, read from summary.json
    report = (out / "report.md").read_text()
    assert "| 00_broken | FAILED |" in report and "| 01_ok | ok |" in report
    assert f"report: {out / 'report.md'}" in r.stdout


@pytest.mark.slow
def test_book_is_quiet_in_logs_and_shows_progress_on_request(tmp_path):
    chapters = tmp_path / "chapters"
    chapters.mkdir()
    _cells(chapters / "00_a.ipynb", ("md", "## First section"), "import time\ntime.sleep(0.2)",
           ("md", "## Second section"), "print('hello')")
    out = tmp_path / "build"
    r = _book(chapters, out)                                 # not a terminal: one line per chapter
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.splitlines()[0].startswith("00_a: ok in ")
    assert "cells" not in r.stderr and "WARNING" not in r.stdout + r.stderr, r.stderr
    assert "without encryption" not in r.stdout + r.stderr
    timings = out / "timings" / "ci" / "00_a.json"
    assert set(json.loads(timings.read_text())) == {"1", "3"}
    r = _book(chapters, out, "--progress")                   # forced bar, ETA from the last run
    assert r.returncode == 0, r.stderr
    assert "00_a 2/2 cells" in r.stderr and "Second section" in r.stderr and "left" in r.stderr, r.stderr
    assert "WARNING" not in r.stderr


def test_serve_serves_the_site(tmp_path):
    import urllib.request
    r = subprocess.run([sys.executable, "-m", "hrvit_edu.book", "--out", str(tmp_path), "--serve"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 1 and "no site in" in r.stderr and "run `make book` first" in r.stderr
    (tmp_path / "site").mkdir()
    (tmp_path / "site" / "index.html").write_text("<html><body>the book</body></html>")
    proc = subprocess.Popen([sys.executable, "-m", "hrvit_edu.book", "--out", str(tmp_path), "--serve", "--port", "0"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()
        url = line.split(" at ")[1].split()[0]
        with urllib.request.urlopen(url + "index.html", timeout=30) as page:
            assert b"the book" in page.read()
    finally:
        proc.kill()
        proc.communicate(timeout=30)


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


@pytest.mark.slow
def test_setup_prints_one_line_per_step():
    root = Path(__file__).resolve().parents[1]
    r = subprocess.run(["bash", "scripts/setup.sh"], cwd=root, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stdout + r.stderr
    lines = r.stdout.splitlines()
    assert lines and all(line.startswith("[setup] ") for line in lines), r.stdout
    assert lines[-1].startswith("[setup] ok: hrvit-edu")
    assert r.stderr == "", r.stderr
