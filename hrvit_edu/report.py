"""The book's report, ``build/report.md``: the capstone leaderboard, the claim table, the chapters'
runtimes and the device, written at the end of ``make book`` and shown on the site's landing page.

Every number in the report is read from a stored result file through a :class:`Ledger`, which
records where it came from (file, the records selected, the field, the reduction) next to the
formatted text; ``build/report_sources.json`` keeps that list, and :func:`resolve` recomputes any
entry from its file alone.  The report computes nothing a file does not hold except means, sample
standard deviations and the claim differences the chapters' verdict rule defines
(:mod:`hrvit_edu.claims`).  Labels that contain digits (chapter ids, test scales, claim texts) are recorded too, in the
order they appear, so a test can cut every recorded string out of the text and find no digit left.

Sources:

* ``chapters/results/06_capstone_<profile>.json`` -- the capstone study (``tools/run_capstone.py``);
* ``chapters/results/0N_*_<profile>.json`` -- the chapters' stored sweeps (the claim table);
* ``build/reports/06_capstone_costs.json`` -- parameters, FLOPs and latency the capstone chapter
  measured in this book run, device-stamped (absent: the columns say "not measured");
* ``build/summary.json`` -- per-chapter status and runtime and the device of the book run.
"""
from __future__ import annotations

import json
import math
import statistics
from pathlib import Path

from . import capstone
from .claims import CLAIMS, claim_table, results_file


def _load(path: Path) -> dict:
    return json.loads(Path(path).read_text())


def _select(records: list[dict], where: dict) -> list[dict]:
    return [r for r in records if all(r.get(k) == v for k, v in where.items())]


def _field(record: dict, field: str):
    for part in field.split("/"):
        record = record[part]
    return record


def resolve(entry: dict, root: Path) -> float | str:
    """The value a ledger ``entry`` stands for, recomputed from its source file alone.

    ``records``: a ``/``-separated path to a list in the file (``"runs"``), or ``""`` for the file itself;
    ``where``: the records to keep; ``field``: a ``/``-separated key path in each; ``reduce``: ``value`` (exactly
    one record), ``mean``, ``sd`` (sample), or for claims ``claim_d`` / ``claim_2s``, which apply
    the chapter's verdict rule to the two arms named in ``where``."""
    data = _load(root / entry["source"])
    reduce = entry["reduce"]
    if reduce in ("claim_d", "claim_2s"):
        w = entry["where"]
        arms = [{r["seed"]: r[entry["field"]] for r in data["runs"] if r["arm"] == a and entry["field"] in r}
                for a in (w["ref"], w["arm"])]
        if w["paired"]:
            seeds = sorted(set(arms[0]) & set(arms[1]))
            ds = [arms[0][s] - arms[1][s] for s in seeds]
            d, s = statistics.fmean(ds), statistics.stdev(ds)
        else:
            d = statistics.fmean(arms[0].values()) - statistics.fmean(arms[1].values())
            s = math.sqrt((statistics.variance(arms[0].values()) + statistics.variance(arms[1].values())) / 2)
        return d if reduce == "claim_d" else 2 * s
    records = _field(data, entry["records"]) if entry["records"] else [data]
    values = [_field(r, entry["field"]) for r in _select(records, entry["where"])]
    if reduce == "value":
        if len(values) != 1:
            raise ValueError(f"{entry}: {len(values)} records match, expected one")
        return values[0]
    if reduce == "mean":
        return statistics.fmean(values)
    if reduce == "sd":
        return statistics.stdev(values)
    raise ValueError(f"unknown reduction {reduce!r}")


class Ledger:
    """Formats numbers read from files and remembers where each one came from."""

    def __init__(self, root: Path):
        self.root = Path(root)
        self.entries: list[dict] = []

    def num(self, source: Path, fmt: str, field: str, *, records: str = "runs", where: dict | None = None,
            reduce: str = "value", scale: float = 1.0) -> str:
        source = Path(source).resolve()
        if source.is_relative_to(self.root.resolve()):
            source = source.relative_to(self.root.resolve())
        entry = {"source": str(source), "records": records,
                 "where": where or {}, "field": field, "reduce": reduce, "scale": scale, "format": fmt}
        value = resolve(entry, self.root)
        entry["text"] = format(value if isinstance(value, str) or scale == 1.0 else value * scale, fmt)
        self.entries.append(entry)
        return entry["text"]

    def label(self, text: str, why: str) -> str:
        """Text with digits that is a name, not a measurement (a chapter id, a test scale)."""
        self.entries.append({"text": text, "label": why})
        return text


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header),
            *["| " + " | ".join(r) + " |" for r in rows], ""]


def build_report(root: str | Path, build: str | Path, profile: str = "book") -> tuple[str, list[dict]]:
    """The report's markdown and its ledger (see the module docstring)."""
    root, build = Path(root), Path(build)
    L = Ledger(root)
    lines = ["# The book's report", ""]
    summary_path = build / "summary.json"
    summary = _load(summary_path) if summary_path.exists() else None
    if summary:
        dev = summary["device"]
        lines += [f"Book run on **{L.num(summary_path, 's', 'device/device', records='')}** "
                  f"({L.num(summary_path, 'd', 'device/threads', records='')} threads, torch "
                  f"{L.label(str(dev.get('torch')), 'version')}, Triton {L.label(str(dev.get('triton')), 'version')}), "
                  f"profile `{L.num(summary_path, 's', 'profile', records='')}`.", ""]

    # ------------------------------------------------------------------ leaderboard
    study = capstone.results_path(root, profile)
    costs_path = build / "reports" / capstone.COSTS_FILE
    costs = _load(costs_path) if costs_path.exists() else None
    if study.exists():
        res = _load(study)
        board = capstone.leaderboard(res)
        steps = L.num(study, "d", "budget/steps", records="")
        batch = L.num(study, "d", "budget/batch_size", records="")
        lines += ["## Leaderboard: one task, one budget", "",
                  f"DigitScenes, {steps} steps x batch {batch} for every model, seeds "
                  + L.label(", ".join(str(s) for s in sorted({r['seed'] for r in res['runs']})), "seeds")
                  + f"; test mIoU as mean ± sd over seeds (`{L.label(str(study.relative_to(root)), 'file name')}`)."
                  + ("" if costs else " No cost measurements in this build folder (the capstone chapter hands "
                     "them over during `make book`)."), ""]
        sizes = [str(s) for s in capstone.COST_SIZES]
        header = ["model", "test mIoU", "boundary acc.", "train s"]
        if costs:
            header += ["params (M)", *[f"GFLOPs @{L.label(s, 'input size')}" for s in sizes],
                       *[f"CPU ms @{L.label(s, 'input size')}" for s in sizes]]
        rows = []
        for row in board:
            w = {"row": row.name}
            cells = [row.name, f"{L.num(study, '.3f', 'test_miou', where=w, reduce='mean')} ± "
                               f"{L.num(study, '.3f', 'test_miou', where=w, reduce='sd')}",
                     L.num(study, ".3f", "boundary_acc", where=w, reduce="mean") if row.boundary_acc else "--",
                     "-- (no training)" if row.name == capstone.EXPEDITED else
                     L.num(study, ".0f", "train_seconds", where=w, reduce="mean")]
            if costs:
                cells += [L.num(costs_path, ".3f", "params", records="rows", where=w, scale=1e-6),
                          *[L.num(costs_path, ".3f", f"flops/{s}", records="rows", where=w, scale=1e-9)
                            for s in sizes],
                          *[L.num(costs_path, ".1f", f"latency_ms/{s}/median", records="rows", where=w)
                            for s in sizes]]
            rows.append(cells)
        lines += _table(header, rows)
        lines += [f"Training times (train s) as the study recorded them, on "
                  f"{L.num(study, 's', 'env/device', records='')} "
                  f"({L.num(study, 'd', 'env/threads', records='')} threads).", ""]
        if costs:
            lines += [f"Latency: eager, batch {L.num(costs_path, 'd', 'batch', records='')}, median, on "
                      f"{L.num(costs_path, 's', 'env/device', records='')} "
                      f"({L.num(costs_path, 'd', 'env/threads', records='')} threads).", ""]
        # robustness
        scales = [f for f in capstone.TEST_SCALES]
        lines += ["## Robustness: test resolution != training resolution", "",
                  "Test mIoU (mean over seeds) on DigitScenes re-rendered at a factor of the training size.", ""]
        header = ["model", *[f"{L.label(format(f, 'g'), 'test scale')}x" for f in scales]]   # (ledger in text order)
        rows = []
        for row in board:
            if not row.scales:
                continue
            rows.append([row.name, *[L.num(study, ".3f", capstone.scale_metric(f), where={"row": row.name},
                                           reduce="mean") for f in scales]])
        lines += _table(header, rows)

    # ------------------------------------------------------------------ claims
    verdicts = claim_table(root / "chapters" / "results", profile)
    if verdicts:
        lines += ["## The book's claim table", "",
                  "Every claim the paper chapters re-tested, recomputed from their stored results. d = the paper's "
                  "(or the book's) design minus the alternative, in mIoU as a fraction (boundary accuracy where noted; "
                  f"{L.label('0.01', 'unit')} is one point), "
                  f"mean over seeds; resolved when |d| > {L.label('2 s', 'the verdict rule')} (s: the pooled sd "
                  "over seeds, or the sd of the per-seed differences where every arm ran on one trained model).", ""]
        header = ["chapter", "claim", "paper", "d", L.label("2 s", "the verdict rule"), "verdict"]
        rows = []
        for v in verdicts:
            c = v.claim
            src = results_file(root / "chapters" / "results", c.chapter, profile)
            w = {"ref": c.ref, "arm": c.arm, "paired": c.chapter == "05_expedite"}
            chapter, claim = L.label(c.chapter, "chapter"), L.label(c.text, "claim")
            metric = "" if c.metric == "test_miou" else f" ({L.label(c.metric, 'metric name')})"
            rows.append([chapter, claim + metric,
                         L.label(c.paper, "the paper's statement"),
                         L.num(src, "+.3f", c.metric, reduce="claim_d", where=w),
                         L.num(src, ".3f", c.metric, reduce="claim_2s", where=w), v.verdict])
        lines += _table(header, rows)
        assert len(rows) == len([c for c in CLAIMS if results_file(root / "chapters" / "results", c.chapter,
                                                                    profile).exists()])
    if study.exists() and "counted" in _load(study):
        rows = []
        for r in _load(study)["counted"]:
            w = {"model": r["model"]}
            rows.append([L.label(r["chapter"], "chapter"), L.label(r["model"], "model name"), r["what"],
                         L.label(r["reference"], "where the reference count comes from"),
                         L.num(study, ".3f", "published", records="counted", where=w, scale=1e-6),
                         L.num(study, ".3f", "ours", records="counted", where=w, scale=1e-6),
                         L.num(study, "+.2%", "rel_error", records="counted", where=w)])
        lines += ["## Counted claims: the published parameter counts", "",
                  *_table(["chapter", "variant", "counted as", "reference", "reference (M)", "ours (M)", "error"],
                          rows)]

    # ------------------------------------------------------------------ runtimes
    if summary:
        rows = []
        for ch in summary["chapters"]:
            w = {"name": ch["name"]}
            rows.append([L.label(ch["name"], "chapter"),
                         L.num(summary_path, "s", "status", records="chapters", where=w),
                         L.num(summary_path, ".0f", "seconds", records="chapters", where=w)])
        lines += ["## Chapter runtimes (this book run)", "", *_table(["chapter", "status", "seconds"], rows)]
    else:
        lines += ["*No book run in this build: runtimes and device appear after `make book`.*", ""]
    sources = sorted({e["source"] for e in L.entries if "source" in e})
    lines += ["## Sources", "", *[f"* `{L.label(s, 'file name')}`" for s in sources], ""]
    return "\n".join(lines), L.entries


def write_report(root: str | Path, build: str | Path, profile: str = "book") -> Path:
    """Write ``<build>/report.md`` and ``<build>/report_sources.json``; returns the report's path."""
    build = Path(build)
    text, entries = build_report(root, build, profile)
    build.mkdir(parents=True, exist_ok=True)
    (build / "report_sources.json").write_text(json.dumps(entries, indent=1))
    (build / "report.md").write_text(text)
    return build / "report.md"
