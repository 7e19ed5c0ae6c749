"""Sampled degradations (``jpeg[5:50]``, ``any(...)``): the grammar, seeded draws, bounds, errors, and the parts of
loqi that use them (training data, resume, ``loqi plugins``, ``loqi degrade --report``, pickling for workers)."""

from __future__ import annotations

import json
import os
import pickle
import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from loqi_core.cli import cli
from loqi_core.degrade.grammar import parse_degradation
from loqi_core.degrade.sampled import Axis, Sampled, bin_label, bin_labels
from loqi_core.errors import ConfigError, UnknownNameError
from loqi_core.testing import isolated_plugins
from loqi_core.testing.helpers import random_images
from loqi_core.testing.tiny import tiny_plugin

HERE = Path(__file__).parent


def _images(n: int = 3, size: tuple[int, int] = (32, 40)) -> list[torch.Tensor]:
    return random_images(n, *size, seed=5)


def _drawn(spec: str, seeds: range, key: str | None = None) -> list:
    deg = parse_degradation(spec)
    assert isinstance(deg, Sampled)
    return [deg.draw(s)[1][key or spec] for s in seeds]


def test_seeded_draw_is_deterministic_and_output_is_the_drawn_spec():
    deg = parse_degradation("jpeg[5:50]")
    imgs = _images(1)
    for seed in (0, 1, 12345):
        a, b = deg(imgs, seed=seed), deg(imgs, seed=seed)
        assert a.draws == b.draws and all(torch.equal(x, y) for x, y in zip(a.images, b.images))
        drawn = a.draws[0]["spec"]
        assert drawn == f"jpeg{a.draws[0]['jpeg[5:50]']}"
        # exactly what the fixed spec gives: the range only chooses, it does not change the codec
        fixed = parse_degradation(drawn)(imgs, seed=seed)
        assert torch.equal(fixed.images[0], a.images[0]) and fixed.nbytes == a.nbytes
    assert len({deg.draw(s)[0] for s in range(50)}) > 10  # other seeds draw other qualities


def test_integer_range_covers_both_ends_uniformly():
    values = _drawn("jpeg[5:7]", range(3000))
    counts = Counter(values)
    assert set(counts) == {5, 6, 7}
    assert all(900 < c < 1100 for c in counts.values()), counts
    assert all(5 <= v <= 50 for v in _drawn("jpeg[5:50]", range(500)))


def test_every_builtin_family_takes_a_range_within_its_bounds():
    cases = {
        "qp[30:45]": (30, 45), "h264-qp[30:45]": (30, 45), "av1-qp[40:63]": (40, 63), "webp[0:30]": (0, 30),
        "avif[10:20]": (10, 20), "res[270:720]p": (270, 720), "res[16:24]p-bicubic": (16, 24),
        "[16:32]x24": (16, 32),
    }  # fmt: skip
    from PIL import features

    if not features.check("avif"):  # Pillow < 11.3 (the declared floor is 10) has no AVIF codec
        del cases["avif[10:20]"]
    for spec, (lo, hi) in cases.items():
        values = _drawn(spec, range(300))
        assert all(isinstance(v, int) and lo <= v <= hi for v in values), spec
        assert min(values) <= lo + (hi - lo) // 4 and max(values) >= hi - (hi - lo) // 4, spec
    scales = _drawn("scale[0.25:1]", range(500))
    assert all(isinstance(v, float) and 0.25 <= v <= 1 for v in scales)
    assert min(scales) < 0.3 and max(scales) > 0.95


def test_drawn_resolution_is_applied():
    deg = parse_degradation("res[16:24]p")
    out = deg(_images(6), seed=2)
    heights = [img.shape[1] for img in out.images]
    assert heights == [d["res[16:24]p"] for d in out.draws]
    assert len(set(heights)) > 1  # each image of a call draws its own (not temporal)


def test_choice_uniform_and_weighted():
    picks = Counter(_drawn("any(jpeg10,res270p+qp40,scale0.25)", range(3000)))
    assert set(picks) == {"jpeg10", "res270p+qp40", "scale0.25"} and min(picks.values()) > 900
    weighted = Counter(_drawn("any(0.9*jpeg10,0.1*qp40)", range(2000)))
    assert 1700 < weighted["jpeg10"] < 1900 and weighted["jpeg10"] + weighted["qp40"] == 2000
    deg = parse_degradation("any(jpeg10,res270p+qp40,scale0.25)")
    assert {deg.draw(s)[0] for s in range(100)} == {"jpeg10", "res270p+qp40", "scale0.25"}


def test_ranges_and_choices_inside_chains_and_clean_option():
    deg = parse_degradation("scale0.5+any(jpeg[5:10],none)")
    texts = {deg.draw(s)[0] for s in range(300)}
    assert "scale0.5" in texts and texts - {"scale0.5"} == {f"scale0.5+jpeg{q}" for q in range(5, 11)}
    out = deg(_images(4), seed=1)
    assert all(img.shape[1:] == (16, 20) for img in out.images)
    with_none = parse_degradation("any(none,jpeg10)")(_images(8), seed=0)
    assert {d["spec"] for d in with_none.draws} == {"none", "jpeg10"}
    assert with_none.nbytes is not None and None in with_none.nbytes  # clean images cost no coded bytes


def test_temporal_specs_draw_once_per_call():
    for spec in ("qp[30:45]", "res[16:24]p+qp40", "any(jpeg10,h264-qp40)"):
        deg = parse_degradation(spec)
        assert deg.temporal, spec
        for seed in (0, 3):
            out = deg(_images(4, (32, 48)), seed=seed)
            assert len({d["spec"] for d in out.draws}) == 1, spec  # one stream, one setting
            assert len({tuple(img.shape) for img in out.images}) == 1, spec
    assert not parse_degradation("any(jpeg10,scale0.5)").temporal


@pytest.mark.parametrize(
    "spec, message",
    [
        ("jpeg[50:5]", r'"jpeg\[50:5\]": the low end 50 is above the high end 5'),
        ("jpeg[0:200]", r'"jpeg\[0:200\]": quality: JPEG quality must be between 1 and 100'),
        ("jpeg[5:200]", r'"jpeg\[5:200\]": quality: JPEG quality must be between 1 and 100 .*got 200'),
        ("qp[30:60]", r"HEVC QP must be between 0 and 51"),
        ("av1-qp[0:63]", r"AV1 \(SVT-AV1\) QP must be between 1 and 63"),
        ("scale[0:1]", r"must be in \(0, 1\]"),
        ("res[0:720]p", r"must be between 1 and 16384 pixels"),
        ("jpeg[5.5:50]", r"is a whole number"),
        ("jpeg[5:]", r"write \[LOW:HIGH\] with two numbers"),
        ("jpeg[5:50", r"unbalanced"),
        ("qp40-[420:444]", r"chroma .* is not a number"),
        ("any()", r"empty option"),
        ("any(0.5*jpeg10,qp40)", r"weigh every option"),
        ("any(0*jpeg10,0*qp40)", r"must not all be 0"),
        ("jpeg10++qp40", r"empty term"),
        ("any(jpeg10,qp[50:40])", r"low end 50 is above the high end 40"),
        ("jpeg(10)", r"cannot read"),
    ],
)
def test_bad_sampled_specs_are_one_line_errors(spec, message):
    with pytest.raises(ConfigError, match=message) as info:
        parse_degradation(spec)
    assert "\n" not in str(info.value)


def test_unknown_inside_a_choice_lists_the_known_forms():
    with pytest.raises(UnknownNameError, match=r'Unknown degradation "foo3".*Known forms'):
        parse_degradation("any(jpeg10,foo3)")


def test_a_third_party_degradation_gets_ranges_for_free():
    with isolated_plugins(("tiny", tiny_plugin)):
        values = _drawn("blur[1:9]", range(400))
        assert set(values) == set(range(1, 10))
        with pytest.raises(ConfigError, match=r'bad degradation "blur\[0:9\]": k: Input should be greater than or equal to 1'):
            parse_degradation("blur[0:9]")


def test_pickled_sampled_degradation_draws_and_degrades_the_same():
    deg = parse_degradation("any(jpeg[5:50],scale[0.25:0.5])")
    copy = pickle.loads(pickle.dumps(deg))
    imgs = _images(2)
    a, b = deg(imgs, seed=9), copy(imgs, seed=9)
    assert a.draws == b.draws and all(torch.equal(x, y) for x, y in zip(a.images, b.images))


def test_bins_of_the_report():
    jpeg = Axis("jpeg[5:50]", "quality", 5, 50)
    assert bin_labels(jpeg) == ["5-13", "14-22", "23-32", "33-41", "42-50"]
    assert [bin_label(jpeg, v) for v in (5, 13, 14, 50)] == ["5-13", "5-13", "14-22", "42-50"]
    assert bin_labels(Axis("qp[30:33]", "qp", 30, 33)) == ["30", "31", "32", "33"]
    scale = Axis("scale[0.25:1]", "factor", 0.25, 1, integer=False)
    assert bin_labels(scale)[0] == "0.25-0.4" and bin_label(scale, 1.0) == "0.85-1" and bin_label(scale, 0.25) == "0.25-0.4"


def test_training_batches_draw_per_image_and_do_not_depend_on_order(tmp_path):
    """Resume identity at the data level: batch ``s`` is the same whether or not the batches before it were made."""
    from loqi_core.data.datasets import load_dataset
    from loqi_core.training.data import BatchPlan, PlanConfig, StepDataset, ViewConfig

    train_dir = _helpers().write_images(tmp_path / "train", 12)
    with isolated_plugins(("tiny", tiny_plugin)):
        train = load_dataset(f"folder:{train_dir}", "train")
        plan = BatchPlan(train, PlanConfig(by_places=False, places_per_batch=1, images_per_place=1, batch_size=6, seed=3))

        def dataset():
            return StepDataset(train, plan, parse_degradation("blur[1:9]"), ViewConfig((16, 16), augment=True), seed=3)

        first = dataset()
        in_order = [first[s] for s in range(3)][2]
        alone = dataset()[2]
    assert torch.equal(in_order["degraded"], alone["degraded"]) and torch.equal(in_order["clean"], alone["clean"])
    change = [float((d.float() - c.float()).abs().mean()) for c, d in zip(alone["clean"], alone["degraded"])]
    assert len({round(v, 4) for v in change}) > 1  # the images of one batch get different blur sizes


def _helpers():
    import importlib.util

    spec = importlib.util.spec_from_file_location("distill_helpers", HERE / "distill_helpers.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module


def _run(config: Path, out: Path, *flags: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    return subprocess.run([sys.executable, str(HERE / "distill_helpers.py"), str(config), str(out), *flags],
                          env=env, capture_output=True, text=True, timeout=300)  # fmt: skip


@pytest.mark.slow
def test_sampled_training_killed_and_resumed_is_bit_identical(tmp_path):
    from safetensors.torch import load_file

    helpers = _helpers()
    train = helpers.write_images(tmp_path / "train", 16)
    config = {**helpers.tiny_config(train, max_steps=8, checkpoint_every=4, log_every=2, num_workers=1), "degrade": "blur[1:9]"}
    cfg_file = tmp_path / "config.json"
    cfg_file.write_text(json.dumps(config))
    whole = _run(cfg_file, tmp_path / "whole")
    assert whole.returncode == 0, whole.stderr[-3000:]
    killed = _run(cfg_file, tmp_path / "killed", "--kill-at-step", "6")
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    resumed = _run(cfg_file, tmp_path / "killed", "--resume")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    a = load_file(str(tmp_path / "whole" / "checkpoints" / "final" / "model.safetensors"))
    b = load_file(str(tmp_path / "killed" / "checkpoints" / "final" / "model.safetensors"))
    assert a.keys() == b.keys() and all(a[k].equal(b[k]) for k in a)
    assert (tmp_path / "whole" / "train_log.csv").read_text() == (tmp_path / "killed" / "train_log.csv").read_text()


def test_plugins_command_lists_the_range_forms():
    result = CliRunner().invoke(cli, ["plugins"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    for form in ("jpeg[LOW:HIGH]", "res[LOW:HIGH]p", "scale[LOW:HIGH]", "qp[LOW:HIGH]", "av1-qp[LOW:HIGH]", "any(A,B,...)"):
        assert form in result.output, form


def test_degrade_report_gives_the_histogram_of_draws(tmp_path):
    out = tmp_path / "report.json"
    result = CliRunner().invoke(
        cli, ["degrade", "--report", "jpeg[5:50]", "any(jpeg10,scale0.5)", "--dataset", "demo", "--limit", "40", "--json", str(out)],
        catch_exceptions=False,
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "jpeg[5:50]: images per value drawn for jpeg[5:50]" in result.output and "42-50" in result.output
    rows = json.loads(out.read_text())
    ranged = rows[0]["sampled"]["jpeg[5:50]"]
    assert list(ranged) == ["5-13", "14-22", "23-32", "33-41", "42-50"]
    assert sum(b["images"] for b in ranged.values()) == rows[0]["images"] == 80
    assert ranged["5-13"]["psnr_db"] < ranged["42-50"]["psnr_db"]  # lower quality, lower PSNR
    assert ranged["5-13"]["bytes_per_image"] < ranged["42-50"]["bytes_per_image"]
    choice = rows[1]["sampled"]["any(jpeg10,scale0.5)"]
    assert choice["jpeg10"]["images"] + choice["scale0.5"]["images"] == 80 and choice["scale0.5"]["bytes_per_image"] is None


def test_run_with_eval_degrade_reports_each_level_beside_the_pretrained_model(tmp_path):
    """A student trained on a range, evaluated at fixed levels: a row per level, Δ against the same level."""
    from loqi_core.testing.tiny import write_vpr_folder

    root = write_vpr_folder(tmp_path / "data", places=8)
    quick = ["-s", "distill.batch_size=4", "-s", "distill.num_workers=0", "-s", "eval.num_workers=0",
             "-s", "eval.batch_size=4", "-s", "distill.lr=0.001", "-s", "eval.grid_queries=0"]  # fmt: skip
    args = ["run", "--method", "tiny", "--degrade", "blur[1:7]", "--eval-degrade", "none,blur5,blur2",
            "--weights", "random", "--train", f"folder:{root}/images/test", "--test", f"folder:{root}",
            "--max-steps", "2", "--out", str(tmp_path / "run"), "--cache-dir", str(tmp_path / "cache"), *quick]  # fmt: skip
    with isolated_plugins(("tiny", tiny_plugin)):
        result = CliRunner().invoke(cli, args, catch_exceptions=False)
        assert result.exit_code == 0, result.output
        m = json.loads((tmp_path / "run" / "metrics.json").read_text())
        assert m["run"]["degrade"] == "blur[1:7]" and m["run"]["eval_degrade"] == ["none", "blur5", "blur2"]
        rows = m["datasets"]["data"]["rows"]
        assert list(rows) == ["pretrained_clean", "pretrained_degraded@blur2", "distilled@blur2", "distilled_queries@blur2",
                              "pretrained_degraded@blur5", "distilled@blur5", "distilled_queries@blur5",
                              "pretrained_degraded@none", "distilled@none", "distilled_queries@none"]  # fmt: skip
        protocols = m["datasets"]["data"]["protocols"]
        assert protocols["distilled@blur5"]["queries"] == "degraded (blur5)" and protocols["distilled@none"]["queries"] == "clean"
        assert rows["pretrained_degraded@none"] == rows["pretrained_clean"]
        md = (tmp_path / "run" / "results.md").read_text()
        assert "| Distilled on blur[1:7], blur5 Δ |" in md and "| Random init, blur5 |" in md
        assert "| Distilled on blur[1:7], clean images Δ |" in md
        level_table = md.split("## Per degradation level", 1)[1].split("\n\n", 2)[1].splitlines()
        assert level_table[0].startswith("| level | data random init R@1 | data distilled R@1 (Δ) |")
        assert [line.split(" | ")[0] for line in level_table[2:]] == ["| `blur2`", "| `blur5`", "| `none`"]
        for level in ("blur2", "blur5", "none"):
            line = next(x for x in level_table if x.startswith(f"| `{level}`"))
            base, student = rows[f"pretrained_degraded@{level}"]["R@1"], rows[f"distilled@{level}"]["R@1"]
            assert f"| {base:.2f} | {student:.2f} ({student - base:+.2f}) |" in line

        # loqi eval takes the same levels: one row per level for one model
        ev = CliRunner().invoke(cli, ["eval", "--method", "tiny", "--weights", str(tmp_path / "run"), "--dataset", f"folder:{root}",
                                      "--eval-degrade", "blur5,blur2", "--out", str(tmp_path / "ev"),
                                      "--cache-dir", str(tmp_path / "cache"), *quick[2:]], catch_exceptions=False)  # fmt: skip
        assert ev.exit_code == 0, ev.output
        ev_rows = json.loads((tmp_path / "ev" / "metrics.json").read_text())["datasets"]["data"]["rows"]
        assert ev_rows == {"model@blur2": rows["distilled@blur2"], "model@blur5": rows["distilled@blur5"]}
        bad = CliRunner().invoke(cli, args[:5] + ["--eval-degrade", "blur5,blur[9:2]"] + args[7:])
        assert bad.exit_code != 0 and 'bad degradation range "blur[9:2]"' in bad.output
