"""The book's website, built from the stored notebooks and opened in a real (headless) browser."""
import functools
import http.server
import shutil
import subprocess
import threading
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CHAPTERS = sorted((ROOT / "chapters").glob("*.ipynb"))
EXERCISES = sorted((ROOT / "exercises").glob("*.ipynb"))


def _chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome", "chrome"):
        path = shutil.which(name)
        if path:
            return path
    return None


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    pytest.importorskip("sphinx", reason="the site needs the [book] extra (pip install -e '.[book]')")
    from hrvit_edu.report import build_report
    from hrvit_edu.site import build_site
    out = tmp_path_factory.mktemp("book") / "site"
    report, _ = build_report(ROOT, tmp_path_factory.mktemp("build"))       # the stored results, no book run
    facts = build_site(CHAPTERS, EXERCISES, out, report=report)
    return out, facts


@pytest.fixture(scope="module")
def server(site):
    out, _ = site
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(out))
    handler.log_message = lambda *a, **k: None
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()


def _browser(url: str, tmp: Path, *extra: str) -> subprocess.CompletedProcess:
    chromium = _chromium()
    if chromium is None:
        pytest.skip("no Chromium here: .ci/run installs Debian's `chromium`; install it to run this test")
    args = [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
            "--disable-component-update", "--no-first-run", "--disable-sync", "--disable-quic",
            f"--user-data-dir={tmp / 'profile'}", "--virtual-time-budget=20000", *extra, url]
    return subprocess.run(args, capture_output=True, text=True, timeout=180)


@pytest.mark.slow
def test_site_builds_offline_with_every_page(site):
    from hrvit_edu.site import broken_links, external_resources
    out, facts = site
    assert (out / "index.html").exists() and (out / "search.html").exists()
    for nb in CHAPTERS:
        assert (out / "chapters" / f"{nb.stem}.html").exists()
    for nb in EXERCISES:
        assert (out / "exercises" / f"{nb.stem}.html").exists()
    for page in ("models", "kernels", "data", "train", "bench", "grading"):
        assert (out / "api" / f"{page}.html").exists()
    assert external_resources(out) == []                         # nothing fetched from a CDN
    assert broken_links(out) == []
    assert list((out / "_static").rglob("tex-chtml*.js")) or list((out / "_static").rglob("*mathjax*"))


@pytest.mark.slow
def test_chapter_links_to_the_api_pages(site):
    out, _ = site
    html = (out / "chapters" / "01_hrvit.html").read_text()
    assert "../api/models.html#module-hrvit_edu.models.hrvit" in html
    api = (out / "api" / "kernels.html").read_text()
    assert "module-hrvit_edu.kernels.des" in api and "des_reference" in api


@pytest.mark.slow
def test_pages_render_in_a_real_browser(site, server, tmp_path):
    out, _ = site
    landing = _browser(f"{server}/index.html", tmp_path, "--dump-dom")
    assert landing.returncode == 0, landing.stderr[-2000:]
    for nb in CHAPTERS:
        assert f"chapters/{nb.stem}.html" in landing.stdout, nb.stem
    # the book's report on the landing page: the leaderboard and the claim table, rendered as tables
    assert "Leaderboard: one task, one budget" in landing.stdout and "claim table" in landing.stdout
    assert landing.stdout.count("<table") >= 3

    chapter = _browser(f"{server}/chapters/01_hrvit.html", tmp_path, "--dump-dom")
    dom = chapter.stdout
    assert "<mjx-container" in dom, "MathJax did not typeset the chapter's math"
    body = dom.split("<main", 1)[-1]
    assert "$$" not in body and "\\[" not in body.replace("\\\\[", ""), "raw TeX left on the page"
    assert "<img" in body and "_images/" in body                    # at least one figure

    shot = tmp_path / "landing.png"
    r = _browser(f"{server}/chapters/01_hrvit.html", tmp_path, f"--screenshot={shot}", "--window-size=1280,1600")
    assert r.returncode == 0 and shot.exists(), r.stderr[-2000:]
    import numpy as np
    from PIL import Image
    pixels = np.asarray(Image.open(shot).convert("L"), dtype=float)
    assert pixels.std() > 5, "the screenshot is blank"
    build = ROOT / "build"
    build.mkdir(exist_ok=True)
    shutil.copy(shot, build / "site-screenshot.png")
