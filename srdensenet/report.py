"""The results page of ``validate.py --report DIR``: a folder with ``index.html`` and its images (no network, no
CDN) with per-set and per-image PSNR / SSIM, model beside bicubic, sortable by any column, and for every image
the LR / bicubic / SR / HR crops of the region where the model gains most over bicubic, each with its PSNR.

Where the model gains most: the window (CROP HR pixels square, never within ``scale`` pixels of the border, which the
protocol does not score) with the largest drop in squared Y error from bicubic to SR. A drop in error rather than a
ratio of PSNRs, so a flat region where both are nearly perfect does not win.
"""

from __future__ import annotations

import html
import os
from pathlib import Path

import cv2
import numpy as np

from . import imgproc, metrics
from .fileio import write_text_atomic
from .image_files import write_image

CROP = 64  # HR pixels per side of the crops (smaller images: their shorter side)
PANEL = 192  # CSS pixels per side of a crop on the page (nearest-neighbour scaling, so pixels stay visible)
PANELS = ("lr", "bicubic", "sr", "hr")


class ReportError(ValueError):
    """A report folder that cannot be written (reported without a traceback)."""


def check_folder(folder: str | os.PathLike, force: bool) -> Path:
    """The report folder, refused before any work when it already holds a report and ``force`` is not given."""
    folder = Path(folder)
    if (folder / "index.html").exists() and not force:
        raise ReportError(f"--report {folder} already holds a report (index.html); pass --force to replace it or "
                          f"choose another folder")
    return folder


def gain_window(sr_y: np.ndarray, bicubic_y: np.ndarray, hr_y: np.ndarray, size: int, border: int) -> tuple[int, int]:
    """(top, left) of the size x size window, inside ``border``, where SR removes the most squared error."""
    drop = (bicubic_y.astype(np.float64) - hr_y) ** 2 - (sr_y.astype(np.float64) - hr_y) ** 2
    h, w = drop.shape
    size = min(size, h - 2 * border, w - 2 * border)
    if size < 1:
        return 0, 0
    integral = np.pad(drop.cumsum(0).cumsum(1), ((1, 0), (1, 0)))
    sums = integral[size:, size:] - integral[:-size, size:] - integral[size:, :-size] + integral[:-size, :-size]
    inner = sums[border:h - border - size + 1, border:w - border - size + 1]
    top, left = np.unravel_index(int(np.argmax(inner)), inner.shape)
    return int(top) + border, int(left) + border


def _crop_psnr(crop: np.ndarray, hr_crop: np.ndarray) -> float:
    return metrics.psnr_y(imgproc.y_channel(crop), imgproc.y_channel(hr_crop), 0)


def image_entry(folder: Path, set_name: str, image_name: str, scores: dict, sample, lr: np.ndarray,
                scale: int) -> dict:
    """Write the four crops of one image under folder/images/<set>/ and return its row of the page."""
    hr_y = imgproc.y_channel(sample.hr)
    size = min(CROP, *hr_y.shape) // scale * scale
    top, left = gain_window(imgproc.y_channel(sample.sr), imgproc.y_channel(sample.bicubic), hr_y, size, scale)
    top, left = top // scale * scale, left // scale * scale  # on the LR grid, so the LR crop is the same region
    window = (slice(top, top + size), slice(left, left + size))
    lr_crop = lr[top // scale:(top + size) // scale, left // scale:(left + size) // scale]
    crops = {"lr": cv2.resize(lr_crop, (size, size), interpolation=cv2.INTER_NEAREST),
             "bicubic": sample.bicubic[window], "sr": sample.sr[window], "hr": sample.hr[window]}
    stem = Path(image_name).with_suffix("").as_posix().replace("/", "__")
    files = {}
    for panel, crop in crops.items():
        relative = Path("images") / set_name / f"{stem}_{panel}.png"
        (folder / relative).parent.mkdir(parents=True, exist_ok=True)
        write_image(folder / relative, crop)
        files[panel] = relative.as_posix()
    crop_psnr = {panel: _crop_psnr(crops[panel], crops["hr"]) for panel in ("bicubic", "sr")}
    return {"set": set_name, "image": image_name, **scores, "crop": [top, left, size], "files": files,
            "crop_psnr": crop_psnr}


def _table(headers: list[str], rows: list[list[str]], sort_keys: list[list[str]]) -> str:
    head = "".join(f'<th onclick="sortBy(this)">{html.escape(h)}</th>' for h in headers)
    body = "".join("<tr>" + "".join(f'<td data-sort="{html.escape(k)}">{c}</td>' for c, k in zip(row, keys))
                   + "</tr>" for row, keys in zip(rows, sort_keys))
    return f'<table class="sortable"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def _score_cells(s: dict) -> tuple[list[str], list[str]]:
    gain = s["psnr"] - s["bicubic_psnr"]
    values = [s["psnr"], s["ssim"], s["bicubic_psnr"], s["bicubic_ssim"], gain]
    cells = [f"{s['psnr']:.2f}", f"{s['ssim']:.4f}", f"{s['bicubic_psnr']:.2f}", f"{s['bicubic_ssim']:.4f}",
             f'<span class="{"up" if gain >= 0 else "down"}">{gain:+.2f}</span>']
    return cells, [repr(float(v)) for v in values]


def _gallery(entries: list[dict]) -> str:
    figures = []
    for e in entries:
        names = {"lr": "LR (nearest)", "bicubic": f"bicubic {e['crop_psnr']['bicubic']:.2f} dB",
                 "sr": f"SRDenseNet {e['crop_psnr']['sr']:.2f} dB", "hr": "HR"}
        panels = "".join(f'<figure><img src="{html.escape(e["files"][p])}" alt="{p}" width="{PANEL}" '
                         f'height="{PANEL}"><figcaption>{names[p]}</figcaption></figure>' for p in PANELS)
        top, left, size = e["crop"]
        figures.append(f'<section class="crops" id="{html.escape(e["set"] + "/" + e["image"])}">'
                       f'<h3>{html.escape(e["set"])} / {html.escape(e["image"])}: {e["psnr"]:.2f} dB vs bicubic '
                       f'{e["bicubic_psnr"]:.2f} dB <small>(crop {size}x{size} at x={left}, y={top})</small></h3>'
                       f'<div class="row">{panels}</div></section>')
    return "".join(figures)


STYLE = """body{font-family:sans-serif;margin:2em;color:#222}table{border-collapse:collapse;margin:1em 0}
th,td{border:1px solid #ccc;padding:3px 8px;text-align:right}th{background:#eee;cursor:pointer}
td:first-child,td:nth-child(2){text-align:left}.up{color:#070}.down{color:#b00}
.row{display:flex;gap:8px}figure{margin:0}figcaption{text-align:center;font-size:13px}
img{image-rendering:pixelated;border:1px solid #999}.meta{color:#666;font-size:13px}"""
SCRIPT = """function sortBy(th){const t=th.closest('table'),b=t.tBodies[0],i=[...th.parentNode.children].indexOf(th);
const up=th.dataset.dir!=='up';th.dataset.dir=up?'up':'down';const rows=[...b.rows];
rows.sort((x,y)=>{const a=x.cells[i].dataset.sort,c=y.cells[i].dataset.sort,na=parseFloat(a),nc=parseFloat(c);
const r=isNaN(na)||isNaN(nc)?a.localeCompare(c):na-nc;return up?r:-r});rows.forEach(r=>b.appendChild(r))}"""


def write_page(folder: Path, datasets: dict, entries: list[dict], title: str, meta: dict) -> Path:
    """index.html in folder (written to a temporary file, then renamed): the tables and the crops."""
    headers = ["PSNR", "SSIM", "bicubic PSNR", "bicubic SSIM", "gain (dB)"]
    set_rows, set_keys = [], []
    for name, s in datasets.items():
        cells, keys = _score_cells(s)
        set_rows.append([html.escape(name), str(len(s["images"])), *cells])
        set_keys.append([name, str(len(s["images"])), *keys])
    image_rows, image_keys = [], []
    for e in entries:
        cells, keys = _score_cells(e)
        link = f'<a href="#{html.escape(e["set"] + "/" + e["image"])}">{html.escape(e["image"])}</a>'
        image_rows.append([html.escape(e["set"]), link, *cells])
        image_keys.append([e["set"], e["image"], *keys])
    page = (f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
            f"<style>{STYLE}</style><script>{SCRIPT}</script></head><body><h1>{html.escape(title)}</h1>"
            f'<p class="meta">{"; ".join(f"{html.escape(str(k))}: {html.escape(str(v))}" for k, v in meta.items())}</p>'
            f'<h2>Sets</h2>{_table(["set", "images", *headers], set_rows, set_keys)}'
            f'<h2>Images</h2><p class="meta">Click a column to sort; click an image for its crops.</p>'
            f'{_table(["set", "image", *headers], image_rows, image_keys)}'
            f"<h2>Where the model gains most</h2>{_gallery(entries)}</body></html>\n")
    write_text_atomic(folder / "index.html", page, "--report")
    return folder / "index.html"
