"""Pieces of the shared training loop: LR shapes, optimizer groups, label smoothing."""

import copy

import pytest
import torch
import torch.nn.functional as F

from common.trainer import TrainConfig, build_optimizer, lr_factor, onecycle_factor, train_step


@pytest.mark.parametrize("total, warmup", [(100, 30), (255, 50), (10, 3), (1000, 250)])
def test_onecycle_matches_torch(total, warmup):
    # torch.optim.lr_scheduler.OneCycleLR with its defaults (cos annealing, div 25, final div 1e4).
    param = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([param], lr=0.1)
    reference = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=0.1, total_steps=total, pct_start=warmup / total)
    for step in range(total):
        expected = optimizer.param_groups[0]["lr"]
        assert 0.1 * onecycle_factor(step, total, warmup) == pytest.approx(expected, rel=1e-9, abs=1e-15), step
        optimizer.step()
        reference.step()


def test_linear_warmup_then_cosine():
    factors = [lr_factor(step, 110, 10, "cosine", 0.0) for step in range(110)]
    assert factors[0] == pytest.approx(0.1)
    assert factors[9] == pytest.approx(1.0)
    assert factors[10] == pytest.approx(1.0)
    assert factors[60] == pytest.approx(0.5)
    assert all(a >= b for a, b in zip(factors[10:], factors[11:]))


def test_min_lr_ratio_is_the_floor():
    assert lr_factor(1000, 100, 0, "linear", 0.1) == pytest.approx(0.1)
    assert lr_factor(100, 100, 0, "cosine", 0.2) == pytest.approx(0.2)


def test_weight_decay_skips_biases_and_norms():
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.Flatten(), torch.nn.Linear(4, 2))
    optimizer = build_optimizer(model, TrainConfig(optimizer="sgd", weight_decay=0.1))
    decayed, plain = optimizer.param_groups
    assert decayed["weight_decay"] == 0.1
    assert plain["weight_decay"] == 0.0
    assert {p.dim() for p in decayed["params"]} == {2, 4}
    assert len(plain["params"]) == 4  # conv bias, BN weight, BN bias, linear bias
    assert optimizer.param_groups[0]["nesterov"] is True


def test_label_smoothing_gradient_matches_builtin():
    torch.manual_seed(0)
    model = torch.nn.Linear(8, 5)
    x, y = torch.randn(12, 8), torch.randint(0, 5, (12,))
    reference = copy.deepcopy(model)
    F.cross_entropy(reference(x), y, label_smoothing=0.2).backward()
    scaler = torch.amp.GradScaler("cuda", enabled=False)
    train_step(model, [(x[:6], y[:6]), (x[6:], y[6:])], 12, 1, "float32", scaler, label_smoothing=0.2)
    torch.testing.assert_close(model.weight.grad, reference.weight.grad, rtol=1e-5, atol=1e-7)
