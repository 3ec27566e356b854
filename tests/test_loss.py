"""Tests of the auxiliary-weight schedule and the DCN loss."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from dcn_ray.core.loss import aux_weight, dcn_loss, loss_parts
from dcn_ray.models.dcn import DCN, DCNOutput


def test_aux_weight_endpoints_and_geometric_decay() -> None:
    assert aux_weight(0, 100) == pytest.approx(1.0)
    assert aux_weight(99, 100) == pytest.approx(0.01)
    assert aux_weight(0, 11, start=0.5, end=0.05) == pytest.approx(0.5)
    assert aux_weight(10, 11, start=0.5, end=0.05) == pytest.approx(0.05)
    weights = [aux_weight(step, 50) for step in range(50)]
    assert all(a > b for a, b in zip(weights, weights[1:]))
    ratios = [b / a for a, b in zip(weights, weights[1:])]
    assert ratios == pytest.approx([ratios[0]] * len(ratios))  # geometric: constant ratio
    assert aux_weight(49, 99) == pytest.approx(math.sqrt(0.01))  # halfway: geometric mean


def test_aux_weight_edge_cases() -> None:
    assert aux_weight(0, 1) == 1.0
    assert aux_weight(500, 100) == pytest.approx(0.01)  # past the end keeps the final weight
    for bad in ({"step": -1, "total_steps": 10}, {"step": 0, "total_steps": 0}):
        with pytest.raises(ValueError):
            aux_weight(**bad)
    with pytest.raises(ValueError, match="positive"):
        aux_weight(0, 10, end=0.0)


def _random_output(generator: torch.Generator) -> DCNOutput:
    branches = tuple(torch.randn(2, 2, 8, 8, generator=generator) for _ in range(3))
    return DCNOutput(fused=sum(branches), branches=branches)


def test_dcn_loss_equals_manual_cross_entropies() -> None:
    generator = torch.Generator().manual_seed(0)
    output = _random_output(generator)
    target = torch.randint(0, 2, (2, 8, 8), generator=generator)
    total, raw_parts = dcn_loss(output, target, aux=0.3)
    assert not raw_parts.requires_grad
    parts = loss_parts(raw_parts)

    fused = F.cross_entropy(output.fused, target)
    branch_ce = [F.cross_entropy(b, target) for b in output.branches]
    torch.testing.assert_close(total, fused + 0.3 * sum(branch_ce))
    assert set(parts) == {"fused", "F1", "F2", "F3"}
    assert all(isinstance(v, float) for v in parts.values())
    assert parts["fused"] == pytest.approx(fused.item(), rel=1e-6)
    for name, ce in zip(("F1", "F2", "F3"), branch_ce):
        assert parts[name] == pytest.approx(ce.item(), rel=1e-6)
    # With aux = 0 only the fused term is left.
    torch.testing.assert_close(dcn_loss(output, target, aux=0.0)[0], fused)


def test_dcn_loss_backpropagates_into_the_model() -> None:
    torch.manual_seed(0)
    model = DCN(width=4)
    target = torch.randint(0, 2, (2, 16, 16))
    total, _ = dcn_loss(model(torch.randn(2, 1, 16, 16)), target, aux=aux_weight(0, 10))
    total.backward()
    assert total.ndim == 0 and total.requires_grad
    assert all(b.classify.weight.grad.abs().sum() > 0 for b in model.branches)
