"""``--protocol paper``: generic defaults (fp32), the degradation's file step, the authors' loss weighting against
their trainer's formulas, and the protocol recorded in every report. Per-method facts are tested in each plugin."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from click.testing import CliRunner

from loqi_core.cli import cli
from loqi_core.config import resolve_run_config
from loqi_core.losses.expression import build_loss
from loqi_core.losses.paper import paper_weighting
from loqi_core.losses.terms import DistillBatch
from loqi_core.testing import isolated_plugins
from loqi_core.testing.tiny import tiny_plugin, write_vpr_folder


def test_default_protocol_is_upstream_and_changes_nothing():
    c = resolve_run_config(None, {"model.method": "netvlad", "degrade": "res360p"})
    assert c.protocol == "upstream" and c.degrade == "res360p" and c.eval.precision == "auto"


def test_paper_protocol_defaults_fp32_and_the_file_step_and_flags_still_win():
    c = resolve_run_config(None, {"model.method": "netvlad", "protocol": "paper", "degrade": "res360p"})
    assert (c.eval.precision, c.distill.precision, c.degrade) == ("fp32", "fp32", "res360p-q95")
    assert (c.distill.freeze_bn, c.distill.dropout) == (False, True)  # their student runs in train() mode
    c = resolve_run_config(None, {"model.method": "netvlad", "protocol": "paper", "eval.precision": "bf16"})
    assert c.eval.precision == "bf16" and c.distill.precision == "fp32"


def test_paper_weighting_of_expressions():
    assert paper_weighting("ickd", {}) == ("1*ickd", {"ickd": {"step_images": 168}})
    assert paper_weighting("ickd+mse+triplet", {})[0] == "1*ickd+5*mse+0.2*triplet"
    expr, params = paper_weighting("0.5*mse+2*triplet", {"triplet": {"margin": 0.3}})
    assert expr == "2.5*mse+0.4*triplet" and params == {"triplet": {"margin": 0.3}}
    assert paper_weighting("ickd", {"ickd": {"step_images": 24}})[1] == {"ickd": {"step_images": 24}}


def _ickd_by_hand(s: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    def gram(f):
        x = F.normalize(f.flatten(2), dim=2)
        return F.normalize(x @ x.transpose(1, 2), dim=2)

    return (gram(s) - gram(t)).pow(2).sum().sqrt() / 1000  # loss_distill.py: Frobenius over the step, /1000


def test_paper_weighting_equals_the_authors_trainer_on_their_step():
    """trainer_gsv-cities.py with 5 models: ICKD/1000 over the 168-image step, MSELoss·5·100, and the triplet sum
    (TripletMarginLoss(√0.2, reduction='sum')) / (5 models · 1 positive · 5 negatives · 10)."""
    g = torch.Generator().manual_seed(0)
    # anchors 0 and 1 share a place; places 2..6 are singletons: each anchor has one positive and 5 negatives
    desc_s, desc_t = F.normalize(torch.randn(7, 16, generator=g), dim=1), F.normalize(torch.randn(7, 16, generator=g), dim=1)
    ids = torch.tensor([0, 0, 1, 2, 3, 4, 5])
    lat_s, lat_t = torch.randn(7, 4, 3, 3, generator=g), torch.randn(7, 4, 3, 3, generator=g)
    expr, params = paper_weighting("ickd+mse+triplet", {})
    total, terms = build_loss(expr, params)(DistillBatch(lat_s, lat_t, desc_s, desc_t, ids))
    ickd_168 = _ickd_by_hand(lat_s, lat_t) * (168 / 7) ** 0.5  # a 168-image step in expectation
    mse = F.mse_loss(desc_s, desc_t) * 5 * 100
    reference = torch.nn.TripletMarginLoss(margin=0.2**0.5, p=2, reduction="sum")
    negatives = torch.arange(2, 7)
    trip = sum(reference(desc_s[a].expand(5, -1), desc_s[1 - a].expand(5, -1), desc_s[negatives]) for a in (0, 1))
    trip = trip / (5 * 1 * 5 * 10)
    assert terms["ickd"].item() == pytest.approx(ickd_168.item(), rel=1e-5)
    assert total.item() == pytest.approx((ickd_168 + mse + trip).item(), rel=1e-4)


def test_ickd_step_images_is_exact_on_a_full_step():
    g = torch.Generator().manual_seed(1)
    s, t = torch.randn(168, 3, 2, 2, generator=g), torch.randn(168, 3, 2, 2, generator=g)
    value, _ = build_loss("ickd", {"ickd": {"step_images": 168}})(DistillBatch(s, t, torch.zeros(168, 2), torch.zeros(168, 2)))
    assert value.item() == pytest.approx(_ickd_by_hand(s, t).item(), rel=1e-5)


def test_protocol_is_recorded_in_metrics_and_results(tmp_path):
    root = write_vpr_folder(tmp_path / "data", places=6)
    with isolated_plugins(("tiny", tiny_plugin)):
        res = CliRunner().invoke(cli, [
            "eval", "--method", "tiny", "--weights", "random", "--dataset", f"folder:{root}", "--degrade", "blur3",
            "--protocol", "paper", "--out", str(tmp_path / "ev"), "--cache-dir", str(tmp_path / "cache"),
            "-s", "eval.num_workers=0", "-s", "eval.grid_queries=0"], catch_exceptions=False)  # fmt: skip
    assert res.exit_code == 0, res.output
    m = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    assert m["run"]["protocol"] == "paper" and "protocol: `paper`" in (tmp_path / "ev" / "results.md").read_text()
    assert json.loads((tmp_path / "ev" / "config.json").read_text())["eval"]["precision"] == "fp32"
    assert m["datasets"]["data"]["protocol"]["precision"] == "fp32"
