"""The built-in losses against values computed by hand, ICKD across spatial sizes, gradients to the student only."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from loqi_core.errors import ConfigError, UnknownNameError
from loqi_core.losses.expression import build_loss, parse_loss_expression
from loqi_core.losses.terms import DistillBatch
from loqi_core.testing import LossTests


def _gram_by_hand(f: np.ndarray) -> np.ndarray:
    """Loop-by-loop: per-channel L2 over HW, channel inner products, row L2."""
    b, c = f.shape[:2]
    x = f.reshape(b, c, -1)
    out = np.zeros((b, c, c))
    for i in range(b):
        rows = [x[i, k] / math.sqrt((x[i, k] ** 2).sum()) for k in range(c)]
        for p in range(c):
            for q in range(c):
                out[i, p, q] = float((rows[p] * rows[q]).sum())
            out[i, p] /= math.sqrt((out[i, p] ** 2).sum())
    return out


def _batch(s_lat, t_lat, s_desc=None, t_desc=None, ids=None, pos=None):
    s_desc = torch.zeros(s_lat.shape[0], 2) if s_desc is None else s_desc
    t_desc = torch.zeros(s_lat.shape[0], 2) if t_desc is None else t_desc
    return DistillBatch(s_lat, t_lat, s_desc, t_desc, ids, pos)


def test_ickd_matches_hand_computation_with_different_spatial_sizes():
    rng = np.random.default_rng(0)
    s = rng.normal(size=(2, 3, 4, 5))
    t = rng.normal(size=(2, 3, 2, 3))  # same channels, other spatial size
    expected = math.sqrt(((_gram_by_hand(s) - _gram_by_hand(t)) ** 2).sum()) / 1000
    loss = build_loss("ickd")
    value, terms = loss(_batch(torch.tensor(s, dtype=torch.float32), torch.tensor(t, dtype=torch.float32)))
    assert value.item() == pytest.approx(expected, rel=1e-5)
    assert terms["ickd"].item() == pytest.approx(expected, rel=1e-5)


def test_ickd_original_reduction_is_squared_sum_over_c_times_b():
    rng = np.random.default_rng(1)
    s, t = rng.normal(size=(3, 4, 3, 3)), rng.normal(size=(3, 4, 3, 3))
    expected = ((_gram_by_hand(s) - _gram_by_hand(t)) ** 2).sum() / (4 * 3)
    loss = build_loss("ickd", {"ickd": {"reduction": "squared_mean", "scale": 1.0}})
    value, _ = loss(_batch(torch.tensor(s, dtype=torch.float32), torch.tensor(t, dtype=torch.float32)))
    assert value.item() == pytest.approx(expected, rel=1e-5)


def test_ickd_rejects_channel_mismatch():
    with pytest.raises(ValueError, match="channel"):
        build_loss("ickd")(_batch(torch.randn(2, 3, 4, 4), torch.randn(2, 5, 4, 4)))


def test_mse_on_l2_normalised_descriptors_times_scale():
    s = torch.tensor([[3.0, 4.0], [1.0, 0.0]])
    t = torch.tensor([[0.0, 2.0], [0.0, 1.0]])
    # normalised: s -> (0.6, 0.8), (1, 0); t -> (0, 1), (0, 1); squared errors 0.36+0.04, 1+1 → mean 2.4/4 = 0.6
    value, _ = build_loss("mse")(_batch(torch.zeros(2, 1, 1, 1), torch.zeros(2, 1, 1, 1), s, t))
    assert value.item() == pytest.approx(100 * 0.6, rel=1e-6)


def test_triplet_hand_case_hardest_positive_and_negatives():
    # anchor 0 (place 0) has positives 1 (similar) and 2 (less similar); negative 3 (place 1)
    d = F.normalize(torch.tensor([[1.0, 0.0], [0.8, 0.6], [0.0, 1.0], [-1.0, 0.0]]), dim=1)
    ids = torch.tensor([0, 0, 0, 1])
    loss = build_loss("triplet", {"triplet": {"negatives": 1, "scale": 1.0, "margin": 0.5}})
    value, _ = loss(_batch(torch.zeros(4, 1, 1, 1), torch.zeros(4, 1, 1, 1), d, d.clone(), ids))
    dist = torch.cdist(d, d)
    expected = 0.0
    for a in range(3):  # place-0 anchors; anchor 3 has no positive and is skipped
        pos = [j for j in range(3) if j != a]
        hardest = max(pos, key=lambda j: float(d[a] @ d[j]))  # the student's most similar positive
        expected += max(0.0, float(dist[a, hardest] - dist[a, 3]) + 0.5)
    assert value.item() == pytest.approx(expected, rel=1e-5)


def test_triplet_respects_negative_distance_in_metres():
    d = F.normalize(torch.randn(4, 8, generator=torch.Generator().manual_seed(0)), dim=1)
    ids = torch.tensor([0, 0, 1, 1])
    near = torch.tensor([[0.0, 0.0], [0.0, 1.0], [0.0, 5.0], [0.0, 6.0]])  # all within 30 m: no valid negative
    value, _ = build_loss("triplet")(_batch(torch.zeros(4, 1, 1, 1), torch.zeros(4, 1, 1, 1), d, d, ids, near))
    assert value.item() == 0.0


def test_triplet_without_places_is_a_clear_error():
    with pytest.raises(ValueError, match="place ids"):
        build_loss("triplet")(_batch(torch.zeros(2, 1, 1, 1), torch.zeros(2, 1, 1, 1), torch.randn(2, 4), torch.randn(2, 4)))


def test_composite_weights_and_gradients_reach_student_only():
    g = torch.Generator().manual_seed(0)
    s_lat = torch.randn(4, 3, 4, 4, generator=g, requires_grad=True)
    s_desc = torch.randn(4, 6, generator=g, requires_grad=True)
    teacher_lat = torch.randn(4, 3, 4, 4, generator=g)
    teacher_desc = torch.randn(4, 6, generator=g)
    batch = DistillBatch(s_lat, teacher_lat, s_desc, teacher_desc, torch.tensor([0, 0, 1, 1]))
    loss = build_loss("ickd+0.5*mse+2e-1*triplet")
    total, terms = loss(batch)
    assert total.item() == pytest.approx((terms["ickd"] + 0.5 * terms["mse"] + 0.2 * terms["triplet"]).item(), rel=1e-6)
    assert loss.needs_places
    total.backward()
    assert s_lat.grad is not None and s_lat.grad.abs().sum() > 0
    assert s_desc.grad is not None and s_desc.grad.abs().sum() > 0
    assert teacher_lat.grad is None and teacher_desc.grad is None


def test_expression_parsing_and_errors():
    assert parse_loss_expression("ickd+0.5*mse+triplet") == [(1.0, "ickd"), (0.5, "mse"), (1.0, "triplet")]
    with pytest.raises(ConfigError, match="cannot parse"):
        parse_loss_expression("ickd+*mse")
    with pytest.raises(ConfigError, match="twice"):
        parse_loss_expression("mse+mse")
    with pytest.raises(UnknownNameError, match='Did you mean "ickd"'):
        build_loss("ickdd")
    with pytest.raises(ConfigError, match="not a term"):
        build_loss("mse", {"ickd": {"scale": 1}})


class TestICKDConformance(LossTests):
    loss = "ickd"


class TestMSEConformance(LossTests):
    loss = "mse"


class TestTripletConformance(LossTests):
    loss = "triplet"
    zero_when_equal = False
    uses_teacher = False


class TestMultiSimilarityConformance(LossTests):
    loss = "multisimilarity"
    zero_when_equal = False
    uses_teacher = False
