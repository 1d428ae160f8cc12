"""One self-contained HTML page per run: the result table, the AUROC-vs-epsilon plot, the
training curves and a gallery of test images with clean and attacked heatmaps side by side and
the perturbation.

Self-contained: every image is inlined as a base64 ``data:`` URI, the CSS is inline, and a
content security policy forbids any network request, so the file opens anywhere offline. A
six-line inline script (no script from elsewhere) records in ``#pg-image-check`` how many
images decoded, which is what the browser test reads.

The gallery is computed once (:func:`make_gallery`, by ``test`` and ``benchmark``) and kept as
PNG tiles with a ``gallery.json`` index (:func:`save_gallery`), so that ``patchguard report``
can rebuild the page from the run folder alone.
"""

from __future__ import annotations

import base64
import copy
import html
import io
import json
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ...utils.files import atomic_write_text, record_outputs, remove_own_outputs
from .tables import COLUMNS, NO_PIXEL_MASKS_NOTE, cell

GALLERY_INDEX = "gallery.json"
TILES = (("image", "test image (ground truth in green)"), ("clean_map", "clean heatmap"),
         ("attacked", "attacked image"), ("perturbation", "perturbation"),
         ("attacked_map", "attacked heatmap"))
TABLE_COLUMNS = [c for c in COLUMNS if c not in ("targets", "class_name")]
PERTURBATION_GAIN = 10.0
_TEXT_COLUMNS = ("class_name", "method", "attack", "objective")
_COUNTS = {"epsilon", "steps", "restarts", "n_images", "n_anomalous"}


@dataclass
class GalleryItem:
    """One test image's tiles (uint8 RGB arrays) and scores."""

    name: str
    label: int
    clean_score: float
    attacked_score: float | None
    tiles: dict[str, np.ndarray | bytes] = field(default_factory=dict)  # arrays or PNG bytes


@dataclass
class Gallery:
    """Gallery items and the attack they show."""

    items: list[GalleryItem]
    attack: str | None = None
    epsilon: float = 0.0
    steps: int = 0
    objective: str | None = None
    class_name: str | None = None

    def caption(self) -> str:
        """What the attacked columns show."""
        if self.attack is None or not self.epsilon:
            return "clean predictions only (no attacked epsilon was evaluated)"
        steps = f"{self.steps} step" + ("s" if self.steps != 1 else "")
        return (f"attacked with {self.attack} at {self.epsilon:g}/255, {steps}, "
                f"objective {self.objective}; perturbation amplified x{PERTURBATION_GAIN:g} "
                "around grey; clean and attacked heatmaps share one colour scale")


def _pick(labels: np.ndarray, n: int) -> list[int]:
    """Up to n indices, anomalous and normal images alternating, each spread over the set."""
    anomalous = [i for i, label in enumerate(labels) if label]
    normal = [i for i, label in enumerate(labels) if not label]

    def spread(indices: list[int], k: int) -> list[int]:
        if k >= len(indices):
            return indices
        return [indices[int(round(j * (len(indices) - 1) / max(k - 1, 1)))] for j in range(k)]

    n_bad = min(len(anomalous), (n + 1) // 2)
    n_good = min(len(normal), n - n_bad)
    n_bad = min(len(anomalous), n - n_good)
    return sorted(spread(anomalous, n_bad) + spread(normal, n_good))


def make_gallery(model, test_set, n: int = 6, epsilon: float = 0.0, settings: Any = None, *,
                 device: Any = "cpu", class_name: str | None = None, **options: Any) -> Gallery:
    """Clean and attacked heatmaps of up to ``n`` test images (anomalous and normal mixed),
    attacked by the first attack of ``settings`` (an ``AttackSettings``; its fields may also be
    given as keywords, e.g. ``attack="pgd", steps=10``)."""
    from ...adversarial.settings import AttackSettings
    from ...models.postprocess import PostProcessor, draw_outline, value_range
    from ..evaluator import predict_dataset

    used = AttackSettings.build(settings, **options)

    labels = np.asarray([record.label for record in test_set.records])
    chosen = _pick(labels, n)
    subset = copy.copy(test_set)
    subset.records = [test_set.records[i] for i in chosen]
    if not subset.records:
        return Gallery([], class_name=class_name)
    clean = predict_dataset(model, subset, 0.0, settings=used, device=device,
                            keep_images=True, progress=False)
    adv = None
    if epsilon > 0:
        adv = predict_dataset(model, subset, epsilon, settings=used, device=device,
                              keep_images=True, progress=False)
    shared, post = value_range(clean.maps), PostProcessor()
    items = []
    for i, path in enumerate(clean.paths):
        image = clean.images[i]
        mask = clean.masks[i] if clean.masks[i].any() else None
        tiles = {"image": draw_outline(image, mask) if mask is not None else image,
                 "clean_map": post.heatmap(image, clean.maps[i], mask, shared)}
        if adv is not None:
            delta = adv.images[i].astype(np.float32) - image.astype(np.float32)
            tiles["attacked"] = adv.images[i]
            tiles["perturbation"] = np.clip(127.5 + delta * PERTURBATION_GAIN, 0,
                                            255).astype(np.uint8)
            tiles["attacked_map"] = post.heatmap(adv.images[i], adv.maps[i], mask, shared)
        name = f"{Path(path).parent.name}/{Path(path).name}"
        items.append(GalleryItem(name, int(clean.labels[i]), float(clean.scores[i]),
                                 None if adv is None else float(adv.scores[i]), tiles))
    return Gallery(items, used.attacks[0] if adv is not None else None, float(epsilon),
                   used.steps if adv is not None else 0,
                   used.objective if adv is not None else None, class_name)


def _png(array: np.ndarray) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def save_gallery(gallery: Gallery, folder: str | Path) -> Path:
    """Write the tiles as PNGs and ``gallery.json``; a rerun replaces the previous tiles."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise NotADirectoryError(f"{folder} is a file; the gallery needs a folder")
    folder.mkdir(parents=True, exist_ok=True)
    entries = []
    written: list[Path] = []
    for i, item in enumerate(gallery.items):
        files = {}
        for key, tile in item.tiles.items():
            files[key] = f"{i:04d}_{key}.png"
            (folder / files[key]).write_bytes(_png(tile))
            written.append(folder / files[key])
        entries.append({"name": item.name, "label": item.label,
                        "clean_score": item.clean_score, "attacked_score": item.attacked_score,
                        "tiles": files})
    index = {"attack": gallery.attack, "epsilon": gallery.epsilon, "steps": gallery.steps,
             "objective": gallery.objective, "class_name": gallery.class_name,
             "items": entries}
    atomic_write_text(folder / GALLERY_INDEX, json.dumps(index, indent=2) + "\n")
    record_outputs(written)
    # A rerun with fewer images leaves no stale tiles (only tiles patchguard wrote go).
    remove_own_outputs(folder, r"\d{4}_[a-z_]+\.png", keep=written)
    return folder


def load_gallery(folder: str | Path) -> Gallery | None:
    """A gallery written by :func:`save_gallery` (tiles as PNG bytes), or None if absent."""
    folder = Path(folder)
    try:
        index = json.loads((folder / GALLERY_INDEX).read_text())
        items = []
        for entry in index["items"]:
            tiles = {key: (folder / name).read_bytes() for key, name in entry["tiles"].items()}
            items.append(GalleryItem(entry["name"], int(entry["label"]), entry["clean_score"],
                                     entry["attacked_score"], tiles))
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return Gallery(items, index.get("attack"), float(index.get("epsilon") or 0),
                   int(index.get("steps") or 0), index.get("objective"), index.get("class_name"))


# ------------------------------------------------------------------------------ the page

_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:24px auto;
max-width:1180px;color:#1d2330;padding:0 16px}
h1{font-size:1.5em;margin-bottom:4px}h2{font-size:1.15em;margin-top:28px;border-bottom:1px solid
#dde;padding-bottom:4px}.meta{color:#556;font-size:.92em}table{border-collapse:collapse;
font-size:.86em;margin:8px 0}th,td{border:1px solid #d6d9e0;padding:3px 8px;text-align:right}
th{background:#eef1f6}td.text,th.text{text-align:left}tr:nth-child(even) td{background:#f8f9fb}
img{max-width:100%}.plot{margin:6px 0}
.gallery td,.gallery th{padding:4px;text-align:center;vertical-align:top}
.gallery img{width:150px;height:150px;image-rendering:pixelated;display:block;margin:0 auto}
.bad{color:#a11}.good{color:#175}pre{background:#f4f5f8;padding:8px;font-size:.82em;
overflow-x:auto}.note{background:#fff6dd;border-left:4px solid #e0b400;padding:6px 10px}
#pg-image-check{color:#778;font-size:.8em}
"""

_CHECK_SCRIPT = """
window.addEventListener("load", function () {
  var images = document.images, loaded = 0;
  for (var i = 0; i < images.length; i++) {
    if (images[i].complete && images[i].naturalWidth > 0) { loaded++; }
  }
  var mark = document.getElementById("pg-image-check");
  mark.setAttribute("data-total", images.length);
  mark.setAttribute("data-loaded", loaded);
  mark.textContent = loaded + " of " + images.length + " images loaded";
});
"""


def _data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def _img(png: bytes, alt: str, cls: str = "") -> str:
    return (f'<img src="{_data_uri(png)}" alt="{html.escape(alt)}"'
            + (f' class="{cls}"' if cls else "") + ">")


def _results_table(rows: Sequence[dict[str, Any]]) -> str:
    fields = [c for c in TABLE_COLUMNS if any(row.get(c) is not None for row in rows)]
    several = len({row.get("class_name") for row in rows}) > 1
    if several:
        fields = ["class_name", *fields]
    head = "".join(f'<th class="{"text" if c in _TEXT_COLUMNS else ""}">'
                   f"{html.escape(c.replace('_', ' '))}</th>" for c in fields)
    body = []
    for row in rows:
        cells = []
        for c in fields:
            value = row.get(c)
            if c == "objective" and row.get("attack") == "clean":
                text = "-"
            elif c in _COUNTS and isinstance(value, (int, float)):
                text = f"{value:g}"
            else:
                text = cell(value)
            raw = "" if value is None else html.escape(repr(value) if isinstance(value, float)
                                                       else str(value))
            kind = "text" if isinstance(value, str) or value is None else "num"
            cells.append(f'<td class="{kind}" data-field="{c}" data-value="{raw}">'
                         f"{html.escape(text)}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    return (f'<table id="results"><thead><tr>{head}</tr></thead><tbody>{"".join(body)}'
            "</tbody></table>")


def _gallery_html(gallery: Gallery) -> str:
    if not gallery.items:
        return "<p>No test images.</p>"
    keys = [key for key, _ in TILES if any(key in item.tiles for item in gallery.items)]
    head = "<th class='text'>image</th>" + "".join(
        f"<th>{html.escape(title)}</th>" for key, title in TILES if key in keys)
    rows = []
    for item in gallery.items:
        scores = f"score {item.clean_score:.3f}"
        if item.attacked_score is not None:
            scores += f" &rarr; {item.attacked_score:.3f}"
        label = ('<span class="bad">anomalous</span>' if item.label
                 else '<span class="good">normal</span>')
        first = (f"<td class='text'><b>{html.escape(item.name)}</b><br>{label}<br>{scores}"
                 "</td>")
        tiles = []
        for key in keys:
            tile = item.tiles.get(key)
            png = tile if isinstance(tile, bytes) else _png(tile) if tile is not None else None
            tiles.append(f"<td>{_img(png, f'{item.name} {key}') if png else ''}</td>")
        rows.append("<tr>" + first + "".join(tiles) + "</tr>")
    return (f"<p class='meta'>{html.escape(gallery.caption())}</p><table class='gallery'>"
            f"<thead><tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table>")


def _plot_png(rows: Sequence[dict[str, Any]]) -> bytes | None:
    """The AUROC-vs-epsilon plot of some rows, rendered in memory (None without attacks)."""
    from .plots import plot_auroc_vs_epsilon

    if not any(row.get("attack") != "clean" for row in rows):
        return None
    with tempfile.TemporaryDirectory() as tmp:
        return plot_auroc_vs_epsilon(rows, Path(tmp) / "plot.png").read_bytes()


def training_curves_png(run_dir: str | Path | None) -> bytes | None:
    """``train_curves.png`` of a training folder, drawn from ``train_log.jsonl`` if missing."""
    if run_dir is None:
        return None
    run_dir = Path(run_dir)
    curves, log = run_dir / "train_curves.png", run_dir / "train_log.jsonl"
    if curves.is_file():
        return curves.read_bytes()
    if log.is_file() and log.stat().st_size:
        from .plots import plot_training_log

        try:
            with tempfile.TemporaryDirectory() as tmp:
                return plot_training_log(log, Path(tmp) / "curves.png").read_bytes()
        except (ValueError, KeyError):
            return None
    return None


@dataclass
class ClassSection:
    """What the page shows of one class: rows, training curves, gallery, model card."""

    name: str
    rows: list[dict[str, Any]]
    curves: bytes | None = None
    gallery: Gallery | None = None
    card: str | None = None
    plot: bool = True  # the AUROC-vs-epsilon plot (and the training curves' heading)


def render_html(title: str, sections: Sequence[ClassSection], notes: str = "",
                summary: str = "", meta: dict[str, Any] | None = None) -> str:
    """The page's HTML text (see the module docstring)."""
    all_rows = [row for section in sections for row in section.rows]
    parts = [f"<h1>{html.escape(title)}</h1>"]
    if meta:
        parts.append("<p class='meta'>" + " &middot; ".join(
            f"{html.escape(str(k))}: {html.escape(str(v))}" for k, v in meta.items()
            if v not in (None, "")) + "</p>")
    if summary:
        parts.append(f"<h2>Summary</h2><pre>{html.escape(summary)}</pre>")
    parts.append("<h2>Results</h2>" + (_results_table(all_rows) if all_rows
                                       else "<p>No results.</p>"))
    if any(row.get("pixel_auroc") is None for row in all_rows):
        parts.append(f"<p class='note'>{html.escape(NO_PIXEL_MASKS_NOTE)}</p>")
    if notes:
        parts.append(f"<div class='note'><pre>{html.escape(notes)}</pre></div>")
    several = len(sections) > 1
    for section in sections:
        label = f" &mdash; {html.escape(section.name)}" if several else ""
        if section.plot:
            plot = _plot_png(section.rows)
            parts.append(f"<h2>AUROC against epsilon{label}</h2>" + (
                f"<div class='plot'>{_img(plot, f'AUROC vs epsilon {section.name}')}</div>"
                if plot else "<p>Only clean rows: nothing to plot against epsilon.</p>"))
            parts.append(f"<h2>Training curves{label}</h2>" + (
                f"<div class='plot'>{_img(section.curves, f'training curves {section.name}')}"
                "</div>" if section.curves else
                "<p>No training log beside the checkpoint (an imported checkpoint has none).</p>"))
        if section.gallery is not None:
            parts.append(f"<h2>Gallery{label}</h2>{_gallery_html(section.gallery)}")
        if section.card:
            parts.append(f"<h2>Model card{label}</h2><pre>{html.escape(section.card)}</pre>")
    from ...version import __version__

    parts.append(f"<p id='pg-image-check' data-total='' data-loaded=''>patchguard "
                 f"{__version__}</p>")
    policy = ("default-src 'none'; img-src data:; style-src 'unsafe-inline'; "
              "script-src 'unsafe-inline'")
    return ("<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'>"
            f"<meta http-equiv='Content-Security-Policy' content=\"{policy}\">"
            "<meta name='viewport' content='width=device-width, initial-scale=1'>"
            f"<title>{html.escape(title)}</title><style>{_CSS}</style></head><body>"
            + "\n".join(parts) + f"<script>{_CHECK_SCRIPT}</script></body></html>\n")


def write_html_report(path: str | Path, title: str, sections: Sequence[ClassSection],
                      notes: str = "", summary: str = "", meta: dict[str, Any] | None = None
                      ) -> Path:
    """Write the page atomically; return its path."""
    return atomic_write_text(path, render_html(title, sections, notes, summary, meta))
