"""Small Pillow drawings for reports (matplotlib is not a dependency): recall@N and line charts, image tiles."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Sequence

import numpy as np

if TYPE_CHECKING:  # pragma: no cover
    from PIL import Image as PILImage

PALETTE = [(31, 119, 180), (214, 39, 40), (44, 160, 44), (255, 127, 14), (148, 103, 189), (140, 86, 75),
           (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207)]  # fmt: skip
GOOD, BAD, WARN = (30, 160, 60), (210, 40, 40), (200, 0, 0)


def font(size: int = 13):
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow without FreeType sizing
        return ImageFont.load_default()


def _text_w(draw, text: str, f) -> int:
    box = draw.textbbox((0, 0), text, font=f)
    return box[2] - box[0]


def recall_chart(
    panels: dict[str, dict[str, dict[str, float]]], title: str = "", banner: str | None = None, width: int = 460
) -> "PILImage.Image":
    """One panel per dataset, one line per row: recall (%) against N (log-spaced x axis like the papers' plots).

    ``panels``: ``{dataset: {row label: {"R@1": 57.8, ...}}}``.
    """
    from PIL import Image, ImageDraw

    f, fs, ft = font(13), font(11), font(15)
    labels = list(dict.fromkeys(lbl for rows in panels.values() for lbl in rows))
    colors = {lbl: PALETTE[i % len(PALETTE)] for i, lbl in enumerate(labels)}
    ph, top = 340, 40 + (24 if banner else 0)
    legend_h = 18 * len(labels) + 10
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    text_w = max([_text_w(probe, t, ft) for t in (title, banner or "")] + [_text_w(probe, lbl, f) + 60 for lbl in labels])
    img = Image.new("RGB", (max(max(1, len(panels)) * width, text_w + 20), top + ph + legend_h), "white")
    d = ImageDraw.Draw(img)
    if title:
        d.text((10, 8), title, fill="black", font=ft)
    if banner:
        d.text((10, 30), banner, fill=WARN, font=f)
    for p, (dataset, rows) in enumerate(panels.items()):
        x0, y0, x1, y1 = p * width + 60, top + 25, p * width + width - 20, top + ph - 40
        ns = sorted({int(k[2:]) for r in rows.values() for k in r})
        if not ns:
            continue
        lo, hi = np.log(ns[0]), np.log(ns[-1]) if ns[-1] > ns[0] else np.log(ns[0]) + 1

        def px(n: int, x0: float = x0, x1: float = x1, lo: float = lo, hi: float = hi) -> float:
            return x0 + (np.log(n) - lo) / (hi - lo) * (x1 - x0)

        def py(v: float, y0: float = y0, y1: float = y1) -> float:
            return y1 - v / 100.0 * (y1 - y0)

        d.text(((x0 + x1) / 2 - _text_w(d, dataset, f) / 2, top + 5), dataset, fill="black", font=f)
        d.text((p * width + 8, top + 5), "R@N (%)", fill="black", font=fs)
        for v in range(0, 101, 20):
            d.line([(x0, py(v)), (x1, py(v))], fill=(225, 225, 225))
            d.text((x0 - 30, py(v) - 7), f"{v:3d}", fill="black", font=fs)
        for n in ns:
            d.line([(px(n), y1), (px(n), y1 + 4)], fill="black")
            d.text((px(n) - 4, y1 + 6), str(n), fill="black", font=fs)
        d.rectangle([x0, y0, x1, y1], outline="black")
        d.text(((x0 + x1) / 2 - 10, y1 + 22), "N", fill="black", font=f)
        for lbl, rec in rows.items():
            _series(d, [(px(int(k[2:])), py(v)) for k, v in sorted(rec.items(), key=lambda kv: int(kv[0][2:]))], colors[lbl])
    _legend(d, labels, colors, top + ph + 4, f)
    return img


def line_chart(
    panels: dict[str, dict[str, dict[float, float]]], title: str = "", xlabel: str = "", ylabel: str = "R@1 (%)",
    banner: str | None = None, width: int = 460,
) -> "PILImage.Image":
    """One panel per key, one line per label: y (0-100) against a linear x axis (the paper's Fig. 5: R@1 against QP).

    ``panels``: ``{panel: {line label: {x: y}}}``.
    """
    from PIL import Image, ImageDraw

    f, fs, ft = font(13), font(11), font(15)
    labels = list(dict.fromkeys(lbl for lines in panels.values() for lbl in lines))
    colors = {lbl: PALETTE[i % len(PALETTE)] for i, lbl in enumerate(labels)}
    ph, top = 340, 40 + (24 if banner else 0)
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    text_w = max([_text_w(probe, t, ft) for t in (title, banner or "")] + [_text_w(probe, lbl, f) + 60 for lbl in labels])
    img = Image.new("RGB", (max(max(1, len(panels)) * width, text_w + 20), top + ph + 18 * len(labels) + 10), "white")
    d = ImageDraw.Draw(img)
    if title:
        d.text((10, 8), title, fill="black", font=ft)
    if banner:
        d.text((10, 30), banner, fill=WARN, font=f)
    for p, (name, lines) in enumerate(panels.items()):
        x0, y0, x1, y1 = p * width + 60, top + 25, p * width + width - 20, top + ph - 40
        xs = sorted({x for pts in lines.values() for x in pts})
        if not xs:
            continue
        lo, hi = xs[0], xs[-1] if xs[-1] > xs[0] else xs[0] + 1

        def px(x: float, x0: float = x0, x1: float = x1, lo: float = lo, hi: float = hi) -> float:
            return x0 + (x - lo) / (hi - lo) * (x1 - x0)

        def py(v: float, y0: float = y0, y1: float = y1) -> float:
            return y1 - v / 100.0 * (y1 - y0)

        d.text(((x0 + x1) / 2 - _text_w(d, name, f) / 2, top + 5), name, fill="black", font=f)
        d.text((p * width + 8, top + 5), ylabel, fill="black", font=fs)
        for v in range(0, 101, 20):
            d.line([(x0, py(v)), (x1, py(v))], fill=(225, 225, 225))
            d.text((x0 - 30, py(v) - 7), f"{v:3d}", fill="black", font=fs)
        for x in xs:
            d.line([(px(x), y1), (px(x), y1 + 4)], fill="black")
            d.text((px(x) - 6, y1 + 6), f"{x:g}", fill="black", font=fs)
        d.rectangle([x0, y0, x1, y1], outline="black")
        d.text(((x0 + x1) / 2 - _text_w(d, xlabel, f) / 2, y1 + 22), xlabel, fill="black", font=f)
        for lbl, pts in lines.items():
            _series(d, [(px(x), py(v)) for x, v in sorted(pts.items())], colors[lbl])
    _legend(d, labels, colors, top + ph + 4, f)
    return img


def bordered(img: "PILImage.Image", color: tuple[int, int, int] | None, width: int = 4) -> "PILImage.Image":
    """The image inside a coloured frame (green right, red wrong, grey for a query)."""
    from PIL import ImageOps

    return ImageOps.expand(img, border=width, fill=color or (160, 160, 160))


def tile(rows: Sequence[Sequence["PILImage.Image"]], captions: Sequence[str] = (), banner: str | None = None,
         pad: int = 6, header: str = "") -> "PILImage.Image":
    """Lay out rows of images (each row with an optional caption above it) on a white sheet, under a header
    (one line per ``\\n``) and a red banner; the sheet is wide enough for every line of text."""
    from PIL import Image, ImageDraw

    f = font(12)
    head = [line for line in header.split("\n") if line]
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    text_w = max((_text_w(probe, t, f) + 2 * pad for t in [*head, banner or "", *captions]), default=0)
    cw = max((sum(im.width for im in r) + pad * (len(r) + 1) for r in rows), default=200)
    cap_h = 16 if captions else 0
    extra = (18 if banner else 0) + 18 * len(head)
    heights = [max((im.height for im in r), default=0) + cap_h + pad for r in rows]
    sheet = Image.new("RGB", (max(cw, text_w, 320), sum(heights) + extra + pad), "white")
    d = ImageDraw.Draw(sheet)
    y = pad
    for line in head:
        d.text((pad, y), line, fill="black", font=f)
        y += 18
    if banner:
        d.text((pad, y), banner, fill=WARN, font=f)
        y += 18
    for r, h, cap in zip(rows, heights, list(captions) + [""] * len(rows)):
        if cap:
            d.text((pad, y), cap, fill="black", font=f)
        x = pad
        for im in r:
            sheet.paste(im, (x, y + cap_h))
            x += im.width + pad
        y += h
    return sheet


def ramp(v: np.ndarray) -> np.ndarray:
    """Values in 0..1 → uint8 RGB on a blue→cyan→yellow→red (jet-like) ramp."""
    v = np.clip(v, 0.0, 1.0)
    r = np.clip(1.5 - np.abs(4 * v - 3), 0, 1)
    g = np.clip(1.5 - np.abs(4 * v - 2), 0, 1)
    b = np.clip(1.5 - np.abs(4 * v - 1), 0, 1)
    return (np.stack([r, g, b], -1) * 255).round().astype(np.uint8)


def heatmap(
    values: np.ndarray, size: tuple[int, int], under: "PILImage.Image | None" = None,
    vmin: float | None = None, vmax: float | None = None, alpha: float = 0.55,
) -> "PILImage.Image":  # fmt: skip
    """A 2-D map coloured on ``ramp`` between ``vmin`` and ``vmax`` (default: its own min and max; give the same
    pair to several maps to put them on one scale), resized to ``size`` (w, h), blended over ``under``."""
    from PIL import Image

    v = values.astype(np.float64)
    lo = float(v.min()) if vmin is None else vmin
    hi = float(v.max()) if vmax is None else vmax
    heat = Image.fromarray(ramp((v - lo) / (hi - lo) if hi > lo else np.zeros_like(v))).resize(size, Image.BILINEAR)
    return Image.blend(under.convert("RGB").resize(size), heat, alpha) if under is not None else heat


def colorbar(height: int, vmin: float, vmax: float, label: str = "", width: int = 18) -> "PILImage.Image":
    """A vertical colour bar of ``ramp`` (vmax at the top) with its end and middle values written beside it."""
    from PIL import Image, ImageDraw

    f = font(11)
    ticks = [(vmax, 0), ((vmin + vmax) / 2, 0.5), (vmin, 1)]
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    text_w = max([_text_w(probe, f"{v:.3g}", f) for v, _ in ticks] + [_text_w(probe, label, f) - width])
    bar_h = max(20, height - (18 if label else 0) - 12)
    img = Image.new("RGB", (width + 10 + text_w + 4, height), "white")
    top = 6 + (18 if label else 0)
    column = ramp(np.linspace(1.0, 0.0, bar_h))[:, None, :].repeat(width, axis=1)
    img.paste(Image.fromarray(column), (0, top))
    d = ImageDraw.Draw(img)
    d.rectangle([0, top, width - 1, top + bar_h - 1], outline="black")
    if label:
        d.text((0, 4), label, fill="black", font=f)
    for v, at in ticks:
        y = top + at * (bar_h - 1)
        d.line([(width, y), (width + 4, y)], fill="black")
        d.text((width + 7, y - 7), f"{v:.3g}", fill="black", font=f)
    return img


def captioned(img: "PILImage.Image", lines: Sequence[str], size: int = 11) -> "PILImage.Image":
    """The image with lines of text under it, centred; the cell is as wide as the wider of the two."""
    from PIL import Image, ImageDraw

    lines = [line for line in lines if line]
    if not lines:
        return img
    f = font(size)
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    width = max([img.width] + [_text_w(probe, line, f) + 4 for line in lines])
    cell = Image.new("RGB", (width, img.height + (size + 3) * len(lines) + 2), "white")
    cell.paste(img, ((width - img.width) // 2, 0))
    d = ImageDraw.Draw(cell)
    for i, line in enumerate(lines):
        d.text(((width - _text_w(d, line, f)) // 2, img.height + 2 + (size + 3) * i), line, fill="black", font=f)
    return cell


def beside(left: "PILImage.Image", right: "PILImage.Image", gap: int = 8) -> "PILImage.Image":
    """Two images side by side on white, tops aligned."""
    from PIL import Image

    sheet = Image.new("RGB", (left.width + gap + right.width, max(left.height, right.height)), "white")
    sheet.paste(left, (0, 0))
    sheet.paste(right, (left.width + gap, 0))
    return sheet


def curve_chart(curves: dict[str, dict], title: str = "", width: int = 560, height: int = 340) -> "PILImage.Image":
    """Validation curves: value against training step, one line per training run, its best value ringed.

    ``curves``: ``{label: {"metric": ..., "points": [[step, value], ...], "best_step": ..., "best": ...}}``.
    """
    from PIL import Image, ImageDraw

    f, fs, ft = font(13), font(11), font(15)
    labels = list(curves)
    colors = {lbl: PALETTE[i % len(PALETTE)] for i, lbl in enumerate(labels)}
    points = [(s, v) for c in curves.values() for s, v in c["points"]]
    legend_h = 18 * len(labels) + 10
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    text_w = max([_text_w(probe, title, ft)] + [_text_w(probe, lbl, f) + 60 for lbl in labels])
    img = Image.new("RGB", (max(width, text_w + 20), 40 + height + legend_h), "white")
    d = ImageDraw.Draw(img)
    d.text((10, 8), title, fill="black", font=ft)
    x0, y0, x1, y1 = 70, 50, width - 20, 40 + height - 40
    d.rectangle([x0, y0, x1, y1], outline="black")
    if points:
        steps, values = [s for s, _ in points], [v for _, v in points]
        s_lo, s_hi = 0, max(steps)
        v_lo, v_hi = min(values), max(values)
        pad = (v_hi - v_lo) * 0.1 or abs(v_hi) * 0.1 or 1.0
        v_lo, v_hi = v_lo - pad, v_hi + pad

        def px(s: float) -> float:
            return x0 + (s - s_lo) / max(1e-9, s_hi - s_lo) * (x1 - x0)

        def py(v: float) -> float:
            return y1 - (v - v_lo) / (v_hi - v_lo) * (y1 - y0)

        for k in range(5):
            v = v_lo + (v_hi - v_lo) * k / 4
            d.line([(x0, py(v)), (x1, py(v))], fill=(225, 225, 225))
            d.text((8, py(v) - 7), f"{v:.4g}", fill="black", font=fs)
        for k in range(5):
            s = s_lo + (s_hi - s_lo) * k / 4
            d.text((px(s) - 8, y1 + 6), f"{s:.0f}", fill="black", font=fs)
        d.text(((x0 + x1) / 2 - 14, y1 + 22), "step", fill="black", font=f)
        metric = next(iter(curves.values()))["metric"]
        d.text((x0, y0 - 16), metric, fill="black", font=fs)
        for lbl, c in curves.items():
            pts = [(px(s), py(v)) for s, v in c["points"]]
            if len(pts) > 1:
                d.line(pts, fill=colors[lbl], width=2)
            for x, y in pts:
                d.ellipse([x - 3, y - 3, x + 3, y + 3], fill=colors[lbl])
            if c.get("best_step") is not None:
                x, y = px(c["best_step"]), py(c["best"])
                d.ellipse([x - 7, y - 7, x + 7, y + 7], outline=colors[lbl], width=2)
    for i, lbl in enumerate(labels):
        y = 40 + height + 4 + 18 * i
        d.line([(20, y + 8), (45, y + 8)], fill=colors[lbl], width=3)
        d.text((52, y), lbl, fill="black", font=f)
    return img


def _series(d: Any, xy: list[tuple[float, float]], color: Any) -> None:
    """One line of a chart: its points joined, each marked with a dot."""
    if len(xy) > 1:
        d.line(xy, fill=color, width=2)
    for x, y in xy:
        d.ellipse([x - 3, y - 3, x + 3, y + 3], fill=color)


def _legend(d: Any, labels: list[str], colors: dict[str, Any], top: float, font: Any) -> None:
    """The legend under the panels: a colour swatch and the label, a line each."""
    for i, lbl in enumerate(labels):
        y = top + 18 * i
        d.line([(20, y + 8), (45, y + 8)], fill=colors[lbl], width=3)
        d.text((52, y), lbl, fill="black", font=font)
