"""Building blocks of the self-contained HTML model report: inline CSS, escaped tables, and
images embedded as base64 PNG `data:` URIs (downscaled so the file stays small), and the
image | truth | champion | challenger strips of the comparison.

Every piece of text goes through `html.escape`; nothing refers to a network resource.
"""

from __future__ import annotations

import base64
import html
import io
import math
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from segops.evaluate.plots import overlay

MAX_SIDE = 1400  # embedded images are downscaled to at most this many pixels per side
MIN_PANEL = 128  # comparison panels smaller than this are enlarged (nearest neighbour)

CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",sans-serif;margin:2rem auto;max-width:1200px;
color:#1d2430;padding:0 1rem}
h1{margin-bottom:.2rem}h2{border-bottom:2px solid #dde3ea;padding-bottom:.3rem;margin-top:2.2rem}
table{border-collapse:collapse;margin:.6rem 0}
th,td{border:1px solid #d4dae1;padding:.25rem .6rem;text-align:right;overflow-wrap:anywhere}
table.kv td,table.kv th{text-align:left}.grid table{width:100%}
th{background:#f1f4f7}td.key,th.key{text-align:left}
td.up{color:#137333;font-weight:600}td.down{color:#b3261e;font-weight:600}
td.absent{color:#8a94a0;font-style:italic}
figure{margin:1rem 0}figcaption{color:#56606b;font-size:.9rem}
img{max-width:100%;height:auto;border:1px solid #e3e7ec}
img.mask{image-rendering:pixelated}
.grid{display:grid;grid-template-columns:repeat(auto-fit,minmax(420px,1fr));gap:1rem}
.meta{color:#56606b}code{font-size:.9em}
""".strip()


def esc(value: object) -> str:
    """`value` as text, HTML-escaped (quotes included)."""
    return html.escape(str(value), quote=True)


def fmt(value: object, digits: int = 4) -> str:
    """A number with `digits` decimals ('absent' for None/NaN); other values as text."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "absent"
    if isinstance(value, (float, np.floating)):
        return f"{float(value):.{digits}f}"
    return str(value)


def signed(value: float | None, digits: int = 4) -> tuple[str, str]:
    """(text with an explicit sign, CSS class 'up'/'down'/'' or 'absent') of a delta."""
    if value is None or math.isnan(value):
        return "absent", "absent"
    css = "up" if value > 0 else "down" if value < 0 else ""
    return f"{value:+.{digits}f}", css


def _fit(img: Image.Image, max_side: int) -> Image.Image:
    scale = max_side / max(img.size)
    if scale >= 1:
        return img
    size = (max(1, round(img.width * scale)), max(1, round(img.height * scale)))
    return img.resize(size, Image.Resampling.LANCZOS)


def png_bytes(array: np.ndarray, max_side: int = MAX_SIDE) -> bytes:
    """PNG encoding of an HxWx3 (or HxW) uint8 array, downscaled to at most `max_side`."""
    buf = io.BytesIO()
    _fit(Image.fromarray(array), max_side).save(buf, format="PNG", optimize=True)
    return buf.getvalue()


def file_png_bytes(path: Path, max_side: int = MAX_SIDE) -> bytes:
    """A picture file's bytes as PNG: as stored when already a small PNG, else re-encoded."""
    with Image.open(path) as img:
        if img.format == "PNG" and max(img.size) <= max_side:
            return path.read_bytes()
        return png_bytes(np.asarray(img.convert("RGB")), max_side)


def _enlarge(panel: np.ndarray) -> np.ndarray:
    factor = math.ceil(MIN_PANEL / min(panel.shape[:2]))
    return np.repeat(np.repeat(panel, factor, 0), factor, 1) if factor > 1 else panel


def comparison_strip(
    image: np.ndarray, truth: np.ndarray, champion: np.ndarray, challenger: np.ndarray
) -> bytes:
    """PNG of image | truth | champion prediction | challenger prediction, white-separated."""
    panels = [
        _enlarge(p) for p in (image, *(overlay(image, m) for m in (truth, champion, challenger)))
    ]
    gap = np.full((panels[0].shape[0], 6, 3), 255, np.uint8)
    row = [x for p in panels for x in (p, gap)][:-1]
    return png_bytes(np.concatenate(row, axis=1), max_side=1200)


def img_tag(png: bytes, alt: str, css: str = "") -> str:
    """An <img> whose source is the PNG itself, as a base64 `data:` URI."""
    data = base64.b64encode(png).decode("ascii")
    cls = f' class="{esc(css)}"' if css else ""
    return f'<img{cls} alt="{esc(alt)}" src="data:image/png;base64,{data}">'


def figure(png: bytes, caption: str, css: str = "") -> str:
    """An image with an escaped caption underneath."""
    return f"<figure>{img_tag(png, caption, css)}<figcaption>{esc(caption)}</figcaption></figure>"


Cell = str | tuple[str, str]  # text, or (text, CSS class)


def _cell(value: Cell, tag: str, first: bool) -> str:
    text, css = (value, "") if isinstance(value, str) else value
    classes = " ".join(c for c in ("key" if first else "", css) if c)
    attr = f' class="{classes}"' if classes else ""
    return f"<{tag}{attr}>{esc(text)}</{tag}>"


def table(header: Sequence[str], rows: Iterable[Sequence[Cell]], css: str = "") -> str:
    """An escaped <table>; the first column is left-aligned as a key, cells may carry a class."""
    head = "".join(_cell(h, "th", i == 0) for i, h in enumerate(header))
    body = "".join(
        "<tr>" + "".join(_cell(c, "td", i == 0) for i, c in enumerate(row)) + "</tr>"
        for row in rows
    )
    cls = f' class="{esc(css)}"' if css else ""
    return f"<table{cls}><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def section(title: str, body: str, anchor: str) -> str:
    """A <section> with an id (for tests and links) and an escaped heading."""
    return f'<section id="{esc(anchor)}"><h2>{esc(title)}</h2>{body}</section>'


def page(title: str, subtitle: str, sections: Iterable[str]) -> str:
    """The whole document: inline CSS, no scripts, no external resources."""
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width,initial-scale=1">'
        f"<title>{esc(title)}</title><style>{CSS}</style></head><body>"
        f'<h1>{esc(title)}</h1><p class="meta">{esc(subtitle)}</p>'
        + "\n".join(sections)
        + "</body></html>\n"
    )
