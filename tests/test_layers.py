"""``loqi_core.models.layers.GeM``: the one GeM every method uses, checked against the formula each copy computed before,
bit for bit, with the state-dict key and shape each one's checkpoints hold."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from loqi_core.models.layers import GeM


def _formula(x: torch.Tensor, p: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Radenović et al.'s GeM as effnet's and CricaVPR's copies wrote it."""
    return x.clamp(min=eps).pow(p).mean(dim=(-2, -1)).pow(1.0 / p)


@pytest.mark.parametrize("shape", [(2, 16, 8, 8), (3, 192, 7, 10), (1, 768, 5, 11)])
def test_pooling_is_bit_exact_with_the_formula_and_its_gradient(shape):
    x = torch.randn(*shape, generator=torch.Generator().manual_seed(0)).relu()
    for p_shape, normalize in (((), True), ((1,), False)):
        gem = GeM(2.5, normalize=normalize, p_shape=p_shape)
        p = torch.full(p_shape, 2.5, requires_grad=True)
        expected = _formula(x, p)
        expected = F.normalize(expected, p=2, dim=1) if normalize else expected
        got = gem(x)
        assert torch.equal(got, expected)
        got.sum().backward()
        expected.sum().backward()
        assert torch.equal(gem.p.grad, p.grad)


def test_state_dict_keys_and_shapes_stay_those_of_the_checkpoints():
    assert list(GeM().state_dict()) == ["p"] and GeM().state_dict()["p"].shape == ()
    assert GeM(p_shape=(1,)).state_dict()["p"].shape == (1,)  # CricaVPR's aggregation.1.p
    assert GeM(4.0).p.requires_grad and float(GeM(4.0).p.detach()) == 4.0


def test_a_feature_tuple_is_pooled_on_its_map_and_eps_clamps():
    x = torch.rand(2, 4, 3, 3)
    assert torch.equal(GeM()((x, torch.zeros(2, 4))), GeM()(x))
    assert torch.allclose(GeM(eps=0.5)(torch.zeros(1, 2, 3, 3)), torch.full((1, 2), 0.5))
