"""The figures a researcher reads after a run: top-k retrieval grids and encoder activation maps, for one selection
of queries (evenly spread, the first ones, the wrong ones, or those that training fixed or broke)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, Sequence

import numpy as np

if TYPE_CHECKING:  # pragma: no cover
    from PIL import Image as PILImage

    from loqi_core.evaluation.results import EvalResult

SELECTIONS = ("spread", "first", "wrong", "changed")
"""``eval.grid_select``: which queries the grids and activation maps show."""

THUMB_H = 96
"""Height (pixels) of every image in a grid."""


@dataclass
class Selection:
    """The queries a figure shows, a tag per query (``fixed``/``broken``) and how they were chosen (for the header)."""

    queries: list[int]
    note: str
    tags: dict[int, str] = field(default_factory=dict)


def spread(indices: Sequence[int], n: int) -> list[int]:
    """``n`` of ``indices`` spread evenly from the first to the last (all of them when there are fewer)."""
    if not len(indices) or n <= 0:
        return []
    picks = np.linspace(0, len(indices) - 1, min(n, len(indices))).round().astype(int)
    return sorted({int(indices[i]) for i in picks})


def right_at_1(result: "EvalResult", q: int) -> bool | None:
    """Whether query ``q``'s first retrieval is a positive; None for a label-free result (no ground truth)."""
    if result.ground_truth is None:
        return None
    top = int(result.predictions[q, 0])
    return bool(top >= 0 and np.isin(top, result.ground_truth[q]))


def correct_at_1(result: "EvalResult") -> np.ndarray | None:
    """``right_at_1`` of every query, or None for a label-free result."""
    if result.ground_truth is None:
        return None
    return np.array([right_at_1(result, q) for q in range(len(result.query_paths))], dtype=bool)


def select_queries(how: str, n: int, result: "EvalResult", before: "EvalResult | None" = None) -> Selection:
    """Up to ``n`` queries of ``result``: ``spread``, ``first``, ``wrong`` (at R@1; with ``before``, wrong for
    either model) or ``changed`` (right at R@1 for exactly one of ``before`` and ``result``: fixed ones first).
    Without ground truth, or ``changed`` without ``before``, the queries are spread evenly and the note says why."""
    total = len(result.query_paths)
    if how not in SELECTIONS:
        raise ValueError(f"unknown grid selection {how!r} ({', '.join(SELECTIONS)})")
    if how == "first":
        return Selection(list(range(min(n, total))), f"the first {min(n, total)} queries")
    ok = correct_at_1(result)
    ok_before = correct_at_1(before) if before is not None else None
    if how == "spread" or ok is None or (how == "changed" and ok_before is None):
        why = "" if how == "spread" else (
            " (no ground truth: no right or wrong to select by)" if ok is None else " (no pretrained row to compare with)"
        )  # fmt: skip
        return Selection(spread(range(total), n), f"queries spread evenly over all {total}{why}")
    if how == "wrong":
        bad = ~ok if ok_before is None else ~ok | ~ok_before
        who = "" if ok_before is None else " by either model"
        return Selection(spread(np.flatnonzero(bad), n), f"queries wrong at R@1{who}: {int(bad.sum())} of {total}")
    assert ok_before is not None
    fixed, broken = np.flatnonzero(ok & ~ok_before), np.flatnonzero(~ok & ok_before)
    n_broken = min(len(broken), n // 2)
    n_fixed = min(len(fixed), n - n_broken)
    n_broken = min(len(broken), n - n_fixed)
    picks_fixed, picks_broken = spread(fixed, n_fixed), spread(broken, n_broken)
    tags = {**{q: "FIXED" for q in picks_fixed}, **{q: "BROKEN" for q in picks_broken}}
    note = f"queries changed at R@1: {len(fixed)} fixed, {len(broken)} broken (of {total})"
    return Selection(picks_fixed + picks_broken, note, tags)


# ---- which rows are compared ----------------------------------------------------------------------


def model_pairs(rows: Mapping[str, "EvalResult"]) -> list[tuple[str, str]]:
    """(pretrained, trained) row pairs under one degradation: each distilled or finetuned row with its
    ``pretrained_degraded`` row (``distilled@jpeg5`` with ``pretrained_degraded@jpeg5``)."""
    out = []
    for row in rows:
        base, at, level = row.partition("@")
        before = f"pretrained_degraded{at}{level}"
        if base.split(":", 1)[0] in ("distilled", "finetuned") and before in rows:
            out.append((before, row))
    return out


def pair_of(rows: Mapping[str, "EvalResult"], row: str) -> tuple[str, str] | None:
    """The pair a row's ``changed`` queries come from: its own, one it is the baseline of, else the first."""
    pairs = model_pairs(rows)
    for pair in pairs:
        if pair[1] == row:
            return pair
    return next((p for p in pairs if p[0] == row), pairs[0] if pairs else None)


def row_selection(rows: Mapping[str, "EvalResult"], row: str, how: str, n: int) -> Selection:
    """The queries of the grid of one row; ``changed`` takes them from the row's pretrained/trained pair."""
    pair = pair_of(rows, row) if how == "changed" else None
    if pair is None:
        return select_queries(how, n, rows[row])
    return select_queries(how, n, rows[pair[1]], rows[pair[0]])


def figure_selection(rows: Mapping[str, "EvalResult"], row: str, how: str, n: int) -> Selection:
    """The queries of the comparison grid and activation maps of trained row ``row`` (or its first ``row@level``)."""
    found = row if row in rows else next((r for r in rows if r.startswith(row + "@")), None)
    if found is None:
        return select_queries("first" if how == "first" else "spread", n, next(iter(rows.values())))
    pair = pair_of(rows, found)
    if pair is None or pair[1] != found:
        return select_queries(how, n, rows[found])
    return select_queries(how, n, rows[found], rows[pair[0]])


# ---- grids ----------------------------------------------------------------------------------------


def thumb(image: "PILImage.Image", height: int = THUMB_H, pixelated: bool = False) -> "PILImage.Image":
    """The image at ``height`` pixels; ``pixelated`` enlarges with nearest neighbours, so lost resolution shows."""
    from PIL import Image

    image = image.convert("RGB")
    size = (max(1, round(image.width * height / image.height)), height)
    return image.resize(size, Image.NEAREST if pixelated else Image.BILINEAR)


def open_image(path: Path) -> "PILImage.Image":
    """The image as the model saw it before degradation (``read_image``: upright, 16-bit scaled), for drawing."""
    from PIL import Image

    from loqi_core.data.images import read_image

    return Image.fromarray(read_image(path).permute(1, 2, 0).numpy())


def degraded_query(result: "EvalResult", q: int) -> "PILImage.Image | None":
    """Query ``q`` as the model saw it: degraded again with the evaluation's seed (bit-identical for per-image
    degradations; a temporal codec sees a one-frame stream here). None when the result holds no degradation."""
    from PIL import Image

    from loqi_core.data.images import read_image
    from loqi_core.degrade.base import Identity, sample_seed

    deg = result.degradation
    if deg is None or isinstance(deg, Identity):
        return None
    path = Path(result.query_paths[q])
    out = deg([read_image(path)], seed=sample_seed(int(result.protocol.get("seed", 0)), path.name)).images[0]
    return Image.fromarray(out.permute(1, 2, 0).numpy())


def distance_m(result: "EvalResult", q: int, db: int) -> float | None:
    """Metres between query ``q`` and database image ``db`` (UTM), or None without positions."""
    if result.query_positions is None or result.database_positions is None:
        return None
    return float(np.hypot(*(result.query_positions[q] - result.database_positions[db])))


def grid_line(result: "EvalResult", q: int, k: int) -> list["PILImage.Image"]:
    """One model's line for query ``q``: the query it saw (degraded), the clean query, then its top-k with rank,
    distance and score, framed green (a positive) or red (not); grey frames when there is no ground truth."""
    from loqi_core.report.plot import BAD, GOOD, bordered, captioned

    clean = open_image(result.query_paths[q])
    seen = degraded_query(result, q)
    spec = str(result.protocol.get("degradation", "degraded"))
    cells = []
    if seen is not None:
        cells.append(captioned(bordered(thumb(seen, pixelated=True), None), [f"seen ({spec})", f"{seen.width}x{seen.height}"]))
    name = "clean query" if seen is not None else "query (seen clean)"
    cells.append(captioned(bordered(thumb(clean, pixelated=True), None), [name, f"{clean.width}x{clean.height}"]))
    gt = result.ground_truth[q] if result.ground_truth is not None else None
    for i, db in enumerate(result.predictions[q, :k]):
        if db < 0:
            continue
        frame = None if gt is None else GOOD if np.isin(db, gt) else BAD
        image = bordered(thumb(open_image(result.database_paths[db])), frame)
        cells.append(captioned(image, retrieval_caption(result, q, i)))
    return cells


def retrieval_caption(result: "EvalResult", q: int, i: int) -> list[str]:
    """The lines under the ``i``-th retrieval (0-based) of query ``q``: rank and score, then the distance in metres."""
    db = int(result.predictions[q, i])
    metres = distance_m(result, q, db)
    return [f"#{i + 1}  score {float(result.scores[q, i]):.3f}"] + ([f"{metres:.0f} m"] if metres is not None else [])


def verdict(result: "EvalResult", q: int) -> str:
    """How a line's caption judges the model on query ``q``."""
    ok = right_at_1(result, q)
    return "no ground truth" if ok is None else "right at R@1" if ok else "wrong at R@1"


def grid_figure(
    models: Sequence[tuple[str, "EvalResult"]], selection: Selection, k: int, header: str, banner: str | None = None
) -> "PILImage.Image":
    """For each selected query, one line per model (``(label, result)``: one model, or pretrained and trained
    side by side); each line is ``grid_line``, captioned with the query, its positives and the model's verdict."""
    from loqi_core.report.plot import tile

    first = models[0][1]
    lines, captions = [], []
    for q in selection.queries:
        for i, (label, result) in enumerate(models):
            lines.append(grid_line(result, q, k))
            what = ""
            if i == 0:
                gt = first.ground_truth[q] if first.ground_truth is not None else None
                positives = f", {len(gt)} positives" if gt is not None else ""
                tag = f" - {selection.tags[q]}" if q in selection.tags else ""
                what = f"query {q} ({Path(first.query_paths[q]).name}{positives}){tag} | "
            captions.append(f"{what}{label}: {verdict(result, q)}")
    labelled = first.ground_truth is not None
    legend = "frames: green = a positive, red = not" if labelled else "label-free: no positives, no distances"
    degraded_db = first.degradation is not None and not first.protocol.get("clean_database")
    where = "; database images shown clean" if degraded_db else ""
    shown = f"top-{k} with score (cosine){' and distance' if first.query_positions is not None else ''}; {legend}{where}"
    return tile(lines, captions, banner, header=f"{header}\n{selection.note}\n{shown}")


def write_grids(
    folder: Path, results: Mapping[str, Mapping[str, "EvalResult"]], labels: Mapping[str, str], n: int, k: int,
    how: str = "spread", banner: str | None = None,
) -> list[Path]:  # fmt: skip
    """``<dataset>__<row>.png`` per row, and ``<dataset>__<pretrained>_vs_<trained>.png`` per pair: both models'
    lines for the same queries. Returns the files written."""
    from loqi_core.report.names import slug

    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for dataset, rows in results.items():
        for row, result in rows.items():
            path = folder / f"{slug(dataset)}__{slug(row)}.png"
            sel = row_selection(rows, row, how, n)
            grid_figure([(labels.get(row, row), result)], sel, k, f"{dataset}: {labels.get(row, row)}", banner).save(path)
            written.append(path)
        for before, after in model_pairs(rows):
            path = folder / f"{slug(dataset)}__{slug(before)}_vs_{slug(after)}.png"
            sel = figure_selection(rows, after, how, n)
            models = [(labels.get(before, before), rows[before]), (labels.get(after, after), rows[after])]
            grid_figure(models, sel, k, f"{dataset}: {models[0][0]} vs {models[1][0]}", banner).save(path)
            written.append(path)
    return written


# ---- activation maps (the paper's Fig. 4) -----------------------------------------------------------


def activation_map(model: Any, image: Any, device: Any) -> np.ndarray:
    """Mean absolute activation over channels of the encoder's latent map for one uint8 image (h×w)."""
    import torch

    with torch.inference_mode():
        latent, _ = model(model.prepare([image], device))
    return latent[0].float().abs().mean(0).cpu().numpy()


def activation_figure(
    rows: Sequence[Sequence[tuple["PILImage.Image", np.ndarray | None]]], captions: Sequence[str], header: str,
    banner: str | None = None, height: int = 128,
) -> "PILImage.Image":  # fmt: skip
    """Rows of panels ``(image, map)``: an image alone when map is None, else the map over it. Every map of the
    figure is coloured on one scale (the smallest to the largest value of all of them), shown by a colour bar."""
    from loqi_core.report.plot import beside, colorbar, heatmap, tile

    maps = [m for r in rows for _, m in r if m is not None]
    vmin = min((float(m.min()) for m in maps), default=0.0)
    vmax = max((float(m.max()) for m in maps), default=1.0)
    panels = []
    for r in rows:
        line = []
        for image, values in r:
            im = thumb(image, height, pixelated=True)
            line.append(im if values is None else heatmap(values, im.size, im, vmin=vmin, vmax=vmax))
        panels.append(line)
    sheet = tile(panels, captions, banner, header=header)
    return beside(sheet, colorbar(min(sheet.height, 360), vmin, vmax, "mean |act.|"))


def write_activation_maps(
    path: Path, teacher: Any, student: Any, query_paths: Sequence[Path], degradation: Any, selection: Selection, *,
    seed: int = 0, device: Any = "cpu", banner: str | None = None, student_label: str = "student",
) -> None:  # fmt: skip
    """Rows of the selected queries; columns: clean image, teacher on it, degraded image, teacher on it, student
    on it, all maps on one colour scale."""
    from PIL import Image

    from loqi_core.data.images import read_image
    from loqi_core.degrade.base import sample_seed

    rows, captions = [], []
    for q in selection.queries:
        clean = read_image(query_paths[q])
        # one image per call: temporal codecs see a one-frame stream here (the figure, not the evaluation)
        degraded = degradation([clean], seed=sample_seed(seed, Path(query_paths[q]).name)).images[0]
        c_img, d_img = (Image.fromarray(t.permute(1, 2, 0).numpy()) for t in (clean, degraded))
        rows.append([
            (c_img, None), (c_img, activation_map(teacher, clean, device)),
            (d_img, None), (d_img, activation_map(teacher, degraded, device)), (d_img, activation_map(student, degraded, device)),
        ])  # fmt: skip
        tag = f" - {selection.tags[q]}" if q in selection.tags else ""
        spec = degradation.spec or "degraded"
        captions.append(f"query {q}{tag}: clean | teacher(clean) | {spec} | teacher(degraded) | {student_label}(degraded)")
    header = f"encoder activation maps (mean |activation| over channels, one colour scale)\n{selection.note}"
    path.parent.mkdir(parents=True, exist_ok=True)
    activation_figure(rows, captions, header, banner).save(path)
