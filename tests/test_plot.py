"""Grids and activation maps as written to disk: opened with PIL and checked for their content (frames, panels,
the degraded query, one shared colour scale), on hand-made results and generated images."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from loqi_core.degrade.base import Degradation, Degraded
from loqi_core.evaluation.results import EvalResult
from loqi_core.report import grids
from loqi_core.report.plot import BAD, GOOD, heatmap, ramp
from loqi_core.report.results import Report

K = 3
DB_COLORS = ((40, 90, 200), (200, 40, 90), (90, 200, 40), (150, 60, 20))
Q_COLOR = (200, 120, 40)
SEEN = tuple(255 - c for c in Q_COLOR)
"""Colours, not greys: anti-aliased text is grey and would be counted with them."""


class Invert(Degradation):
    """255 - image: what the model saw is unmistakable in a figure."""

    spec = "invert"

    def __call__(self, images, *, seed: int = 0) -> Degraded:
        return Degraded([255 - img for img in images])


def _flat(path: Path, color: tuple[int, int, int], size: tuple[int, int] = (24, 32)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((*size, 3), color, dtype=np.uint8)).save(path)
    return path


def _result(tmp_path: Path, top1: list[int], *, labels: bool = True, degradation=None, name: str = "r") -> EvalResult:
    """Four flat database images 100 m apart; queries 12 m from the first, their only positive; query i retrieves
    top1[i] first, then the others with the positive last (so a query is right at R@1 or has no positive in its top 3)."""
    db = [_flat(tmp_path / "db" / f"d{i}.png", c) for i, c in enumerate(DB_COLORS)]
    q = [_flat(tmp_path / "q" / f"q{i}.png", Q_COLOR) for i in range(len(top1))]
    preds = np.array([[t] + sorted((d for d in range(4) if d != t), key=lambda d: (d == 0, d)) for t in top1])
    scores = np.tile(np.array([0.9, 0.7, 0.5, 0.3], dtype=np.float32), (len(top1), 1))
    gt = [np.array([0]) for _ in top1] if labels else None
    db_pos = np.array([[500000.0 + 100 * i, 4e6] for i in range(4)]) if labels else None
    q_pos = np.array([[500012.0, 4e6]] * len(top1)) if labels else None
    spec = degradation.spec if degradation else "none"
    protocol = {"database": spec, "queries": spec, "encoder": "both by the model", "positives": "within 25 m",
                "queries_without_positives": "count as misses", "search": "flat", "temporal": "not temporal",
                "precision": "fp32", "degradation": spec, "seed": 0, "clean_database": False}  # fmt: skip
    return EvalResult(name, {"R@1": 0.0}, preds, scores, gt, protocol, db, q, degradation=degradation,  # type: ignore[arg-type]
                      database_positions=db_pos, query_positions=q_pos)  # fmt: skip


def _count(img: Image.Image, color: tuple[int, int, int]) -> int:
    a = np.asarray(img.convert("RGB")).astype(int)
    return int((np.abs(a - np.array(color)).sum(-1) == 0).sum())


def _frame_pixels(h: int = 24, w: int = 32, border: int = 4) -> int:
    """Pixels of one coloured frame around a database thumbnail of a (h, w) image shown at THUMB_H."""
    tw = round(w * grids.THUMB_H / h)
    return (tw + 2 * border) * (grids.THUMB_H + 2 * border) - tw * grids.THUMB_H


# ---- selections -----------------------------------------------------------------------------------


def test_selections_pick_first_spread_wrong_and_changed(tmp_path):
    before = _result(tmp_path, [0, 1, 0, 2, 3, 0])  # right at R@1: queries 0, 2, 5
    after = _result(tmp_path, [0, 0, 1, 0, 0, 0])  # right at R@1: 0, 1, 3, 4, 5
    assert grids.select_queries("first", 2, after).queries == [0, 1]
    assert grids.select_queries("spread", 3, after).queries == [0, 2, 5]  # evenly over 0..5 (2.5 rounds to 2)
    assert grids.select_queries("wrong", 6, before).queries == [1, 3, 4]
    assert grids.select_queries("wrong", 6, after).queries == [2]
    assert grids.select_queries("wrong", 6, after, before).queries == [1, 2, 3, 4]  # wrong for either model
    changed = grids.select_queries("changed", 6, after, before)
    assert changed.queries == [1, 3, 4, 2] and changed.tags == {1: "FIXED", 3: "FIXED", 4: "FIXED", 2: "BROKEN"}
    assert "3 fixed, 1 broken" in changed.note
    two = grids.select_queries("changed", 2, after, before)  # room for one of each: fixed and broken both shown
    assert sorted(two.tags.values()) == ["BROKEN", "FIXED"]


def test_selections_without_ground_truth_or_pair_fall_back_and_say_so(tmp_path):
    free = _result(tmp_path, [1, 2, 3], labels=False)
    sel = grids.select_queries("wrong", 2, free)
    assert sel.queries == [0, 2] and "no ground truth" in sel.note
    sel = grids.select_queries("changed", 5, _result(tmp_path, [1, 0, 1]))
    assert sel.queries == [0, 1, 2] and "no pretrained row" in sel.note
    with pytest.raises(ValueError, match="unknown grid selection"):
        grids.select_queries("best", 2, free)


def test_rows_are_paired_with_the_pretrained_row_of_their_level(tmp_path):
    r = _result(tmp_path, [0])
    rows = {"pretrained_clean": r, "pretrained_degraded@jpeg5": r, "distilled@jpeg5": r, "pretrained_degraded": r,
            "distilled:ickd": r, "finetuned": r, "model": r}  # fmt: skip
    assert grids.model_pairs(rows) == [("pretrained_degraded@jpeg5", "distilled@jpeg5"),
                                       ("pretrained_degraded", "distilled:ickd"), ("pretrained_degraded", "finetuned")]  # fmt: skip
    assert grids.pair_of(rows, "finetuned") == ("pretrained_degraded", "finetuned")
    assert grids.pair_of(rows, "pretrained_degraded") == ("pretrained_degraded", "distilled:ickd")
    assert grids.pair_of(rows, "pretrained_clean") == ("pretrained_degraded@jpeg5", "distilled@jpeg5")


def test_figures_of_a_student_use_its_row_or_its_first_level(tmp_path):
    before, after = _result(tmp_path, [1, 0, 1]), _result(tmp_path, [0, 2, 1])
    levels = {"pretrained_degraded@jpeg5": before, "distilled@jpeg5": after}
    sel = grids.figure_selection(levels, "distilled", "changed", 4)
    assert sel.queries == [0, 1] and sel.tags == {0: "FIXED", 1: "BROKEN"}
    assert grids.figure_selection(levels, "distilled:mse", "changed", 4).queries == [0, 1, 2]  # no such row: spread


# ---- grids ----------------------------------------------------------------------------------------


def test_grid_shows_the_degraded_and_clean_query_and_marks_each_retrieval(tmp_path):
    result = _result(tmp_path, [0, 1], degradation=Invert())
    sel = grids.select_queries("first", 2, result)
    img = grids.grid_figure([("Distilled, invert", result)], sel, K, "data: Distilled, invert")
    # query 0 retrieves its positive first (one green frame, two red); query 1 misses it in its top 3 (three red)
    assert _count(img, GOOD) == _frame_pixels() and _count(img, BAD) == 5 * _frame_pixels()
    # both queries shown as the model saw them (inverted) and clean, each at the grid's height
    seen, clean = _count(img, SEEN), _count(img, Q_COLOR)
    tw = round(32 * grids.THUMB_H / 24)
    assert seen == 2 * tw * grids.THUMB_H and clean == 2 * tw * grids.THUMB_H
    # each query's line holds 2 query panels and K retrievals side by side
    assert img.width >= (2 + K) * (tw + 8) and img.height >= 2 * (grids.THUMB_H + 8)


def test_retrieval_captions_give_rank_score_and_distance(tmp_path):
    result = _result(tmp_path, [1])
    assert grids.retrieval_caption(result, 0, 0) == ["#1  score 0.900", "88 m"]  # d1 at 500100 m, the query at 500012
    assert grids.retrieval_caption(result, 0, 3) == ["#4  score 0.300", "12 m"]  # d0, the positive, last
    free = _result(tmp_path / "free", [1], labels=False)
    assert grids.retrieval_caption(free, 0, 0) == ["#1  score 0.900"]


def test_label_free_grid_has_no_marks_but_every_panel(tmp_path):
    result = _result(tmp_path, [1, 2, 3], labels=False, degradation=Invert())
    img = grids.grid_figure([("model", result)], grids.select_queries("wrong", 3, result), K, "data: model")
    assert _count(img, GOOD) == 0 and _count(img, BAD) == 0
    tw = round(32 * grids.THUMB_H / 24)
    assert _count(img, SEEN) == 3 * tw * grids.THUMB_H  # 3 queries, each shown degraded
    for color in DB_COLORS[1:]:  # every query's top 3 (d1, d2, d3 in some order) is drawn
        assert _count(img, color) == 3 * tw * grids.THUMB_H
    written = grids.write_grids(tmp_path / "grids", {"free": {"model": result}}, {"model": "model"}, 2, K, "changed")
    assert [p.name for p in written] == ["free__model.png"]
    with Image.open(written[0]) as img:
        assert _count(img, SEEN) == 2 * tw * grids.THUMB_H and _count(img, GOOD) == 0


def test_report_writes_per_row_grids_and_pretrained_vs_distilled_for_the_same_queries(tmp_path):
    deg = Invert()
    rep = Report({"kind": "run", "method": "m", "degrade": "invert", "untrained": False}, [1])
    rep.add("pretrained_clean", _result(tmp_path, [0, 0, 0, 0], name="data"))
    rep.add("pretrained_degraded", _result(tmp_path, [1, 0, 2, 0], degradation=deg, name="data"))
    rep.add("distilled", _result(tmp_path, [0, 0, 0, 3], degradation=deg, name="data"))
    rep.write(tmp_path / "run", grid_queries=4, grid_k=K, grid_select="changed")
    folder = tmp_path / "run" / "grids"
    assert sorted(p.name for p in folder.iterdir()) == [
        "data__distilled.png", "data__pretrained_clean.png", "data__pretrained_degraded.png",
        "data__pretrained_degraded_vs_distilled.png"]  # fmt: skip
    with Image.open(folder / "data__pretrained_degraded_vs_distilled.png") as both:
        # changed: queries 0 and 2 fixed, 3 broken; pretrained lines: 0 green for 0, 2; 1 for 3; distilled: 1, 1, 0
        assert _count(both, GOOD) == 3 * _frame_pixels()
        assert _count(both, BAD) == (3 * 3 - 1 + 3 * 3 - 2) * _frame_pixels()
        tw = round(32 * grids.THUMB_H / 24)
        assert _count(both, SEEN) == 6 * tw * grids.THUMB_H  # 3 queries × 2 models, as seen
    with Image.open(folder / "data__distilled.png") as one:
        assert _count(one, GOOD) == 2 * _frame_pixels() and one.height < both.height
    with Image.open(folder / "data__pretrained_clean.png") as clean:  # clean row: no degraded panel
        assert _count(clean, SEEN) == 0 and _count(clean, GOOD) == 3 * _frame_pixels()


# ---- activation maps ------------------------------------------------------------------------------


def test_heatmaps_given_one_range_share_the_colour_scale():
    low, high = np.full((2, 2), 1.0), np.full((2, 2), 2.0)
    shared = [np.asarray(heatmap(m, (4, 4), vmin=0.0, vmax=2.0)) for m in (low, high)]
    assert (shared[0] == ramp(np.array(0.5))).all() and (shared[1] == ramp(np.array(1.0))).all()
    alone = [np.asarray(heatmap(m, (4, 4))) for m in (low, high)]  # each on its own range: the same colour
    assert (alone[0] == alone[1]).all()


def test_activation_figure_puts_every_map_on_one_scale_with_a_colour_bar():
    grey = Image.new("RGB", (48, 32), (100, 100, 100))
    rows = [[(grey, None), (grey, np.full((4, 6), 1.0))], [(grey, None), (grey, np.full((4, 6), 3.0))]]
    img = grids.activation_figure(rows, ["a", "b"], "maps")

    def blend(v: float) -> tuple[int, int, int]:
        heat = Image.new("RGB", (1, 1), tuple(int(c) for c in ramp(np.array(v))))
        return Image.blend(Image.new("RGB", (1, 1), (100, 100, 100)), heat, 0.55).getpixel((0, 0))

    panel = 128 * round(48 * 128 / 32)
    # the weaker map is drawn at the bottom of the scale, the stronger at its top (each map alone would be both blue)
    assert _count(img, blend(0.0)) == panel and _count(img, blend(1.0)) == panel
    # the colour bar: the ramp's middle (yellow) shows though no map holds a middle value
    a = np.asarray(img).astype(int)
    yellow = (a[..., 0] > 200) & (a[..., 1] > 200) & (a[..., 2] < 160)
    assert yellow.sum() >= 18 * 10 and img.width > 2 * round(48 * 128 / 32) + 18


def test_figures_warn_nothing_and_accept_an_empty_selection(tmp_path):
    result = _result(tmp_path, [0, 0])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        img = grids.grid_figure([("m", result)], grids.select_queries("wrong", 4, result), K, "data: m")
    assert img.width >= 320 and _count(img, GOOD) == 0  # no query is wrong: a header, no lines
