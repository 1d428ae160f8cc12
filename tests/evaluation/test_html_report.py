"""The HTML page of a run: written by ``test`` and ``benchmark``, rebuilt by ``report``, read
back with the standard library's HTML parser and PIL, and opened in headless Chromium."""

import base64
import io
import json
import shutil
import subprocess
from html.parser import HTMLParser

import numpy as np
import pytest
from PIL import Image

from patchguard.cli import main
from patchguard.evaluation.report.html import _pick

from helpers.data import make_mvtec_class
from helpers.models import TINY_BACKBONE

TINY_FLAGS = [
    "--backbone", TINY_BACKBONE, "--no-pretrained", "--image-size", "64",
    "--feature-layers", "3", "--reg-layers", "2", "3", "--reg-coefficients", "0.01", "0.05",
    "--epochs", "2", "--batch-size", "4", "--steps-train", "2", "--workers", "0",
    "--device", "cpu", "--quiet",
]
GALLERY = 4


class _Page(HTMLParser):
    """Every <img> src and every results-table cell (data-field, data-value, text)."""

    def __init__(self):
        super().__init__()
        self.images: list[str] = []
        self.cells: list[dict] = []
        self.links: list[str] = []
        self._in_results = False
        self._cell: dict | None = None

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "img":
            self.images.append(attrs.get("src", ""))
        if tag in ("a", "link", "script") and (attrs.get("href") or attrs.get("src")):
            self.links.append(attrs.get("href") or attrs.get("src"))
        if tag == "table" and attrs.get("id") == "results":
            self._in_results = True
        if tag == "tr" and self._in_results:
            self.cells.append({})
        if tag == "td" and self._in_results:
            self._cell = {"field": attrs.get("data-field"), "value": attrs.get("data-value"),
                          "text": ""}

    def handle_endtag(self, tag):
        if tag == "table":
            self._in_results = False
        if tag == "td" and self._cell is not None:
            self.cells[-1][self._cell["field"]] = self._cell
            self._cell = None

    def handle_data(self, data):
        if self._cell is not None:
            self._cell["text"] += data


def _parse(path) -> _Page:
    page = _Page()
    page.feed(path.read_text(encoding="utf-8"))
    return page


def _decode(src: str) -> Image.Image:
    prefix = "data:image/png;base64,"
    assert src.startswith(prefix), src[:40]
    image = Image.open(io.BytesIO(base64.b64decode(src[len(prefix):])))
    image.load()
    return image


def _check_table(page: _Page, rows: list[dict]) -> None:
    """The table's rows are the JSON rows, in order; every number as stored and as shown."""
    table = [r for r in page.cells if r]
    assert len(table) == len(rows)
    for shown, row in zip(table, rows):
        assert shown["attack"]["text"] == row["attack"]
        for key in ("image_auroc", "pixel_auroc", "aupro", "image_ap"):
            assert float(shown[key]["value"]) == row[key]  # repr round-trips exactly
            assert shown[key]["text"] == f"{row[key]:.4f}"
        assert float(shown["epsilon"]["text"]) == row["epsilon"]
        assert int(shown["n_images"]["text"]) == row["n_images"]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("html")
    make_mvtec_class(root / "data")
    assert main(["train", "--dataset", "mvtec", "--dataset-dir", str(root / "data"),
                 "--class_name", "widget", "--output-dir", str(root / "run"), *TINY_FLAGS]) == 0
    assert main(["test", "--checkpoint", str(root / "run" / "last.pt"), "--epsilon-test", "2",
                 "8", "--steps-test", "2", "--gallery", str(GALLERY), "--json",
                 str(root / "out" / "results.json"), "--quiet", "--no-record"]) == 0
    return root


def test_pick_alternates_anomalous_and_normal_spread_over_the_set():
    labels = np.array([0] * 6 + [1] * 3)
    assert _pick(labels, 4) == [0, 5, 6, 8]  # 2 normal (first, last), 2 anomalous
    assert _pick(labels, 20) == list(range(9))
    assert _pick(np.zeros(5, int), 2) == [0, 4]


@pytest.mark.slow
def test_test_writes_a_self_contained_page_with_the_run(run):
    rows = json.loads((run / "out" / "results.json").read_text())
    html_path = run / "out" / "results.html"
    page = _parse(html_path)
    _check_table(page, rows)
    text = html_path.read_text()
    assert "http://" not in text and "https://" not in text and not page.links
    # AUROC-vs-epsilon plot, training curves, and 5 tiles per gallery image, all PNG data URIs.
    assert len(page.images) == 2 + 5 * GALLERY
    sizes = [_decode(src).size for src in page.images]
    assert all(w > 0 and h > 0 for w, h in sizes)
    assert sizes[2:] == [(64, 64)] * (5 * GALLERY)
    # The clean tile is the test image as the model saw it: the 64 px resize of the file.
    index = json.loads((run / "out" / "results_gallery" / "gallery.json").read_text())
    assert [e["label"] for e in index["items"]] == [0, 0, 1, 1]
    first = index["items"][0]
    source = Image.open(run / "data" / "widget" / "test" / first["name"]).convert("RGB")
    expected = np.asarray(source.resize((64, 64), Image.LANCZOS)).astype(int)
    tile = np.asarray(_decode(page.images[2]).convert("RGB")).astype(int)
    assert np.abs(tile - expected).max() <= 1
    assert "attacked with pgd at 8/255, 2 steps" in text


@pytest.mark.slow
def test_report_verb_rebuilds_the_page_from_the_run_folder(run, capsys):
    html_path = run / "out" / "results.html"
    before = _parse(html_path)
    html_path.unlink()
    assert main(["report", str(run / "out")]) == 0
    assert f"report: {html_path}" in capsys.readouterr().out
    after = _parse(html_path)
    assert after.cells == before.cells and len(after.images) == len(before.images)
    assert [_decode(s).tobytes() for s in after.images[1:]] == [
        _decode(s).tobytes() for s in before.images[1:]]  # curves and tiles read back as saved
    # Not a run folder, not a results file: a clear error, no page.
    (run / "junk.json").write_text('{"a": 1}')
    assert main(["report", str(run / "junk.json")]) == 2
    assert "not a list of result rows" in capsys.readouterr().err
    assert main(["report", str(run / "data")]) == 2


def test_clean_only_run_and_a_blocked_gallery_folder(run, tmp_path, capsys):
    checkpoint = str(run / "run" / "last.pt")
    out = tmp_path / "clean" / "results.json"
    assert main(["test", "--checkpoint", checkpoint, "--epsilon-test", "0", "--gallery", "2",
                 "--json", str(out), "--quiet", "--no-record"]) == 0
    page = _parse(out.with_suffix(".html"))
    assert len(page.images) == 1 + 2 * 2  # curves; image and clean heatmap per gallery image
    assert "clean predictions only" in out.with_suffix(".html").read_text()
    # A file where the gallery folder goes is refused before any evaluation.
    blocked = tmp_path / "blocked" / "results.json"
    blocked.parent.mkdir()
    (blocked.parent / "results_gallery").write_text("mine")
    capsys.readouterr()
    assert main(["test", "--checkpoint", checkpoint, "--json", str(blocked), "--quiet",
                 "--no-record"]) == 2
    assert "is a file" in capsys.readouterr().err and not blocked.exists()


@pytest.mark.slow
def test_benchmark_writes_one_page_for_every_class(run, tmp_path):
    (tmp_path / "widget").mkdir()
    for name in ("last.pt", "train_log.jsonl"):
        shutil.copy(run / "run" / name, tmp_path / "widget" / name)
    assert main(["benchmark", "--classes", "all", "--checkpoint-dir", str(tmp_path),
                 "--dataset-dir", str(run / "data"), "--steps-test", "1", "--gallery", "2",
                 "--quiet"]) == 0
    rows = json.loads((tmp_path / "benchmark.json").read_text())
    page = _parse(tmp_path / "benchmark.html")
    _check_table(page, rows)
    assert len(page.images) == 2 + 5 * 2
    assert all(_decode(src).size[0] > 0 for src in page.images)


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("chromium") is None, reason="Debian's chromium is not installed")
def test_page_opens_in_headless_chromium(run, tmp_path):
    html_path = run / "out" / "results.html"
    rows = json.loads((run / "out" / "results.json").read_text())
    url = html_path.resolve().as_uri()
    base = ["chromium", "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
            f"--user-data-dir={tmp_path / 'profile'}"]
    dom = subprocess.run([*base, "--virtual-time-budget=5000", "--dump-dom", url],
                         capture_output=True, text=True, timeout=60, check=True).stdout
    # The page's load handler counted the images whose naturalWidth > 0.
    check = _Page()
    check.feed(dom)
    marker = dom[dom.index('id="pg-image-check"'):].split(">", 1)[0]
    n_images = len(check.images)
    assert n_images == 2 + 5 * GALLERY
    assert f'data-total="{n_images}"' in marker and f'data-loaded="{n_images}"' in marker
    _check_table(check, rows)
    shot = tmp_path / "page.png"
    subprocess.run([*base, "--window-size=1280,2400", f"--screenshot={shot}", url],
                   capture_output=True, timeout=60, check=True)
    pixels = np.asarray(Image.open(shot).convert("RGB"))
    assert pixels.shape[:2] == (2400, 1280) and pixels.std() > 10  # not a blank page
