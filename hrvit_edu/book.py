"""The book's main job: execute every chapter headless, render it, summarise the results.

    python -m hrvit_edu.book                    # all chapters, default profile, into build/
    python -m hrvit_edu.book --only 01 --profile ci
    make book ARGS="--only 01 --profile ci"     # the same through make

Writes ``build/<chapter>.ipynb`` (executed; partial if a cell failed), ``build/<chapter>.html``,
``build/summary.json``, ``build/report.md`` (the capstone leaderboard, the book's claim table,
per-chapter runtimes and the device: :mod:`hrvit_edu.report`) and, with the ``[book]`` extra
installed, the static site ``build/site/`` (:mod:`hrvit_edu.site`: chapters, exercises, API pages,
search, the report on the landing page; works offline).  Open it with
``python -m hrvit_edu.book --serve`` (http://localhost:8000/).

On a terminal each chapter shows a progress bar over its cells with the section being run and,
once a previous run left per-cell times in ``build/timings/``, the time left; in a log (no
terminal) it prints one line per finished chapter.  A failing chapter reports the cell, its
section, the exception and the end of the traceback; the other chapters still run, the summary
marks it FAILED and the exit status is 1.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from .notebook import REPORT_DIR_ENV, RUN_CACHE_ENV
from .runner import Run, execute_notebook


class Progress:
    """A tqdm bar over one chapter's code cells (interactive), or nothing (logs)."""

    def __init__(self, name: str, nb_path: Path, previous: dict[int, float], enabled: bool):
        import nbformat

        nb = nbformat.read(nb_path, as_version=4)
        self.code = [i for i, c in enumerate(nb.cells) if c.cell_type == "code"]
        self.previous = previous
        self.bar = None
        if enabled:
            from tqdm import tqdm

            self.bar = tqdm(total=len(self.code), desc=name, unit="cell", file=sys.stderr, disable=False,
                            bar_format="{desc} {n_fmt}/{total_fmt} cells |{bar:20}| {elapsed}{postfix}",
                            dynamic_ncols=True, leave=True)

    def on_cell(self, index: int, heading: str) -> None:
        if self.bar is None:
            return
        done = sum(1 for i in self.code if i < index)
        self.bar.n = done
        left = [self.previous.get(i) for i in self.code if i >= index]
        eta = f", ~{_clock(sum(left))} left" if left and all(t is not None for t in left) else ""
        section = f" · {heading[:48]}" if heading else ""
        self.bar.set_postfix_str(f"{eta}{section}".lstrip(", "), refresh=True)

    def close(self, ok: bool) -> None:
        if self.bar is not None:
            if ok:
                self.bar.n = self.bar.total
                self.bar.set_postfix_str("done")
            self.bar.close()


def _clock(seconds: float) -> str:
    m, s = divmod(int(round(seconds)), 60)
    return f"{m}:{s:02d}"


def run_chapter(path: Path, out: Path, profile: str, timeout: int, progress: bool) -> tuple[Run, float]:
    timings = out / "timings" / profile / f"{path.stem}.json"
    previous = {}
    if timings.exists():
        try:
            previous = {int(k): float(v) for k, v in json.loads(timings.read_text()).items()}
        except (ValueError, AttributeError):
            previous = {}
    bar = Progress(path.stem, path, previous, progress)
    reports = out / "reports"
    (reports / f"{path.stem}.json").unlink(missing_ok=True)
    t0 = time.perf_counter()
    run = execute_notebook(path.resolve(), timeout, on_cell=bar.on_cell, HRVIT_EDU_PROFILE=profile,
                           **{REPORT_DIR_ENV: str(reports.resolve()),
                              RUN_CACHE_ENV: str((out / "run-cache" / profile).resolve())})
    seconds = time.perf_counter() - t0
    bar.close(run.failure is None)
    if run.failure is None:
        timings.parent.mkdir(parents=True, exist_ok=True)
        timings.write_text(json.dumps({str(k): round(v, 3) for k, v in run.seconds.items()}))
    return run, seconds


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--chapters", default="chapters", help="folder of chapter notebooks")
    ap.add_argument("--out", default="build", help="output folder")
    ap.add_argument("--only", default="", help="run only chapters whose file name starts with this")
    ap.add_argument("--profile", default=None, help="ci | book | full (default: $HRVIT_EDU_PROFILE or book)")
    ap.add_argument("--timeout", type=int, default=1800, help="per-cell timeout in seconds")
    ap.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                    help="progress bar per chapter (default: only when stderr is a terminal)")
    ap.add_argument("--site", action=argparse.BooleanOptionalAction, default=True,
                    help="build the static site build/site/ after the chapters (default: on)")
    ap.add_argument("--serve", action="store_true", help="only serve build/site/ on localhost, then exit")
    ap.add_argument("--port", type=int, default=8000, help="port for --serve")
    args = ap.parse_args(argv)
    if args.serve:
        from .site import serve
        site = Path(args.out) / "site"
        if not (site / "index.html").exists():
            print(f"no site in {site}: run `make book` first", file=sys.stderr)
            return 1
        serve(site, args.port)
        return 0

    from .profiles import get_profile
    profile = get_profile(args.profile).name
    progress = sys.stderr.isatty() if args.progress is None else args.progress
    out = Path(args.out)
    (out / "reports").mkdir(parents=True, exist_ok=True)
    from .capstone import COSTS_FILE
    (out / "reports" / COSTS_FILE).unlink(missing_ok=True)     # costs are this run's or none (never stale)
    paths = sorted(p for p in Path(args.chapters).glob("*.ipynb") if p.name.startswith(args.only))
    if not paths:
        known = sorted(p.stem for p in Path(args.chapters).glob("*.ipynb"))
        if not known:
            print(f"no chapter notebooks in {args.chapters!r}", file=sys.stderr)
        else:
            print(f"no chapter in {args.chapters!r} starts with {args.only!r}; chapters: {', '.join(known)}",
                  file=sys.stderr)
        return 1
    import nbformat
    from nbconvert import HTMLExporter

    rows, failed = [], 0
    for path in paths:
        run, seconds = run_chapter(path, out, profile, args.timeout, progress)
        partial = out / path.name
        nbformat.write(run.nb, partial)
        html, _ = HTMLExporter().from_notebook_node(run.nb)
        (out / f"{path.stem}.html").write_text(html, encoding="utf-8")
        rep = out / "reports" / f"{path.stem}.json"
        metrics = json.loads(rep.read_text()) if rep.exists() else {}
        if run.failure is None:
            print(f"{path.stem}: ok in {seconds:.0f} s (profile {profile})", flush=True)
        else:
            failed += 1
            print(f"{path.stem}: FAILED in {seconds:.0f} s (profile {profile})\n"
                  f"{run.failure.describe()}\n  partially executed notebook: {partial}", flush=True)
        rows.append((path.stem, "ok" if run.failure is None else "FAILED", seconds, metrics, run.failure))
    print("\nchapter                  status   runtime  metrics")
    for name, status, dt, metrics, failure in rows:
        m = ", ".join(f"{k}={v}" for k, v in metrics.items())
        if failure is not None:
            m = f"cell {failure.cell}: {failure.error}"
        print(f"{name:24s} {status:8s} {dt:6.0f} s  {m}")
    print(f"\nexecuted notebooks and HTML in {out}/")
    summary = {"profile": profile, "device": _device(),
               "chapters": [{"name": name, "status": status, "seconds": round(dt, 1), "metrics": metrics}
                            for name, status, dt, metrics, _ in rows]}
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    report = _report(out, profile, Path(args.chapters))
    if args.site:
        failed += not _site(out, summary, [out / p.name for p in paths], report)
    return 1 if failed else 0


def _device() -> dict:
    import torch

    from .bench import env_info

    info = env_info("cuda" if torch.cuda.is_available() else "cpu")
    return {k: info.get(k) for k in ("device", "threads", "torch", "triton")}


def _report(out: Path, profile: str, chapters: Path) -> str:
    """Write build/report.md (leaderboard, claim table, runtimes, device: :mod:`hrvit_edu.report`)
    from the stored results of the book the chapters belong to."""
    from .grading.assign import find_root
    from .report import write_report

    path = write_report(find_root(chapters.resolve()), out, profile)
    print(f"report: {path} (every number's source in {path.with_name('report_sources.json')})")
    return path.read_text()


def _site(out: Path, summary: dict, chapters: list[Path], report: str | None = None) -> bool:
    """Build build/site/ from the notebooks just executed; one line of report.  False on failure."""
    from .grading.assign import find_root
    from .site import build_site

    exercises = sorted((find_root() / "exercises").glob("*.ipynb"))
    try:
        facts = build_site(chapters, exercises, out / "site", summary, log=out / "logs" / "site.log", report=report)
    except RuntimeError as e:
        print(f"site: not built: {e}", file=sys.stderr)
        return False
    print(f"site: {facts['index']} ({facts['pages']} pages, {facts['bytes'] / 1e6:.1f} MB, "
          f"{facts['seconds']:.0f} s, {facts['warnings']} Sphinx warnings; log {facts['log']}); "
          f"serve it with `python -m hrvit_edu.book --serve`")
    return True


if __name__ == "__main__":
    sys.exit(main())
