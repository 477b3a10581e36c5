"""The book's report: produced from stored result files, every number traced to its source."""
import json
import re
import shutil

import pytest

from hrvit_edu import capstone as CP
from hrvit_edu.grading.assign import find_root
from hrvit_edu.report import build_report, resolve, write_report

ROOT = find_root()


def _fake_book_run(build, rows):
    """What `make book` leaves behind: the runner's summary and the capstone chapter's costs."""
    (build / "reports").mkdir(parents=True)
    summary = {"profile": "book", "device": {"device": "Test CPU", "threads": 2, "torch": "2.13.0", "triton": "3.9.0"},
               "chapters": [{"name": f"0{i}_chapter", "status": "ok", "seconds": 100.0 + i, "metrics": {}}
                            for i in range(7)]}
    (build / "summary.json").write_text(json.dumps(summary))
    costs = [{"row": r, "params": 123456 + i, "flops": {"64": 1.5e9 + i, "128": 6.1e9 + i},
              "latency_ms": {"64": {"median": 10.0 + i, "p20": 9.0, "p80": 11.0, "calls": 5},
                             "128": {"median": 40.0 + i, "p20": 39.0, "p80": 41.0, "calls": 5}}}
             for i, r in enumerate(rows)]
    (build / "reports" / CP.COSTS_FILE).write_text(json.dumps({"env": {"device": "Test CPU", "threads": 2},
                                                               "batch": 1, "rows": costs}))


@pytest.fixture(scope="module")
def book(tmp_path_factory):
    build = tmp_path_factory.mktemp("build")
    _fake_book_run(build, [*CP.CONTENDERS, CP.EXPEDITED])
    path = write_report(ROOT, build, "book")
    return path, json.loads((build / "report_sources.json").read_text())


def test_report_has_every_section(book):
    path, _ = book
    text = path.read_text()
    for heading in ("## Leaderboard", "## Robustness", "## The book's claim table", "## Counted claims",
                    "## Chapter runtimes", "## Sources"):
        assert heading in text
    assert "Test CPU" in text and all(name in text for name in CP.CONTENDERS)
    assert text.count("\n| 0") >= 7                    # one runtime row per chapter of the (fake) book run


def test_every_number_in_the_report_traces_to_a_stored_file(book):
    path, entries = book
    numbers = [e for e in entries if "source" in e]
    assert len(numbers) > 100
    for e in numbers:                                   # each recomputed from its file alone
        value = resolve(e, ROOT)
        value = value if isinstance(value, str) or e["scale"] == 1.0 else value * e["scale"]
        assert format(value, e["format"]) == e["text"], e
        assert (ROOT / e["source"]).exists()
    # cut every recorded string (numbers and labels) out of the report, in the order the ledger
    # recorded them: no digit may be left
    text, pos, rest = path.read_text(), 0, []
    for e in entries:
        i = text.find(e["text"], pos)
        assert i >= 0, f"ledger entry not found in order: {e}"
        rest.append(text[pos:i])
        pos = i + len(e["text"])
    rest = "".join(rest) + text[pos:]
    assert not re.findall(r"\d", rest), [line for line in rest.splitlines() if re.search(r"\d", line)]


def test_labels_are_names_not_measurements(book):
    """A label (text with digits that is not read from a result) must be one of the names the book
    defines: a claim of the registry, a chapter, a model, a test scale, a file, a version..."""
    from hrvit_edu.claims import CLAIMS, COUNTED
    from hrvit_edu.train.evaluate import TEST_SCALES
    _, entries = book
    allowed = {
        "claim": {c.text for c in CLAIMS}, "the paper's statement": {c.paper for c in CLAIMS},
        "metric name": {c.metric for c in CLAIMS}, "chapter": None, "model name": None, "seeds": None,
        "test scale": {format(f, "g") for f in TEST_SCALES}, "input size": {str(s) for s in CP.COST_SIZES},
        "the verdict rule": {"2 s"}, "unit": {"0.01"}, "version": None, "file name": None,
        "where the reference count comes from": {row[5] for row in COUNTED},
    }
    for e in (e for e in entries if "label" in e):
        assert e["label"] in allowed, e
        if allowed[e["label"]] is not None:
            assert e["text"] in allowed[e["label"]], e
        elif e["label"] == "chapter":
            assert re.fullmatch(r"\d\d_[a-z_]+", e["text"]), e
        elif e["label"] == "model name":
            assert re.fullmatch(r"[a-z_]+_[a-z0-9]+", e["text"]), e
        elif e["label"] == "seeds":
            assert re.fullmatch(r"\d+(, \d+)*", e["text"]), e
        elif e["label"] == "file name":
            assert e["text"].endswith(".json") and (ROOT / e["text"]).exists() or "build" in e["text"], e


def test_report_numbers_follow_their_source_files(tmp_path):
    """Change a stored result: the report's number changes with it (nothing is typed in)."""
    root = tmp_path / "root"
    shutil.copytree(ROOT / "chapters" / "results", root / "chapters" / "results")
    before, _ = build_report(root, tmp_path / "build")
    path = CP.results_path(root, "book")
    study = json.loads(path.read_text())
    for r in study["runs"]:
        if r["row"] == "HRViT":
            r["test_miou"] = 0.123
    path.write_text(json.dumps(study))
    after, _ = build_report(root, tmp_path / "build")
    assert "0.123 ± 0.000" in after and "0.123 ± 0.000" not in before


def test_report_without_a_book_run_says_so(tmp_path):
    text, entries = build_report(ROOT, tmp_path)
    assert "No book run in this build" in text and "No cost measurements" in text
    assert "## The book's claim table" in text


def test_site_landing_page_shows_the_report(tmp_path, book):
    from hrvit_edu.site import write_sources
    path, _ = book
    src = write_sources([], [], tmp_path / "src", None, report=path.read_text())
    index = (src / "index.md").read_text()
    assert "### Leaderboard: one task, one budget" in index and "### The book's claim table" in index
