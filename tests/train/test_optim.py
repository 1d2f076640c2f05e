"""Lookahead maths, its exact state round trip, parameter groups and the step-based LR schedule."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from ossnet_train.optim import (
    Lookahead,
    LRSchedule,
    OptimConfig,
    apply_learning_rate,
    build_optimizer,
    param_groups,
)


def _quadratic_step(opt: Lookahead, x: torch.Tensor) -> None:
    opt.zero_grad()
    (0.5 * (x**2).sum()).backward()
    opt.step()


def test_lookahead_slow_weights_update_every_k_steps() -> None:
    x0, lr, k, alpha = 2.0, 0.1, 3, 0.8
    x = torch.tensor([x0], dtype=torch.float64, requires_grad=True)
    opt = Lookahead(torch.optim.SGD([x], lr=lr), k=k, alpha=alpha)
    slow = x0
    fast = x0
    for step in range(1, 2 * k + 1):
        _quadratic_step(opt, x)
        fast = fast * (1 - lr)  # SGD on 0.5 x^2: x <- x - lr x
        if step % k == 0:
            slow = slow + alpha * (fast - slow)
            fast = slow
        assert x.item() == pytest.approx(fast, rel=1e-12, abs=1e-12)
        assert opt.slow[0][0].item() == pytest.approx(slow, rel=1e-12, abs=1e-12)
    # After the first sync the fast weight is not simply (1 - lr)^k x0: Lookahead pulled it back.
    assert x.item() != pytest.approx(x0 * (1 - lr) ** (2 * k), rel=1e-6)


def test_lookahead_rejects_bad_hyper_parameters() -> None:
    x = torch.zeros(1, requires_grad=True)
    with pytest.raises(ValueError, match="k must be >= 1"):
        Lookahead(torch.optim.SGD([x], lr=0.1), k=0)
    with pytest.raises(ValueError, match="alpha must be in"):
        Lookahead(torch.optim.SGD([x], lr=0.1), alpha=1.5)


def _toy_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 1))


def _train(model: nn.Module, opt: Lookahead, steps: range) -> None:
    for s in steps:
        g = torch.Generator().manual_seed(100 + s)
        x = torch.randn(16, 4, generator=g)
        opt.zero_grad()
        model(x).pow(2).mean().backward()
        opt.step()


def test_lookahead_state_dict_resumes_exactly() -> None:
    config = OptimConfig(lookahead_k=3)
    straight = _toy_model()
    opt = build_optimizer(straight, config)
    _train(straight, opt, range(8))

    first = _toy_model()
    opt1 = build_optimizer(first, config)
    _train(first, opt1, range(4))  # stops between two slow-weight syncs
    model_state = {k: v.clone() for k, v in first.state_dict().items()}
    opt_state = opt1.state_dict()

    resumed = _toy_model()
    with torch.no_grad():
        for p in resumed.parameters():
            p.add_(1.0)  # make sure the state really comes from the checkpoint
    resumed.load_state_dict(model_state)
    opt2 = build_optimizer(resumed, config)
    opt2.load_state_dict(opt_state)
    assert opt2.step_count == 4
    _train(resumed, opt2, range(4, 8))
    for a, b in zip(straight.parameters(), resumed.parameters(), strict=True):
        assert torch.equal(a, b)


def test_lookahead_load_refuses_other_model() -> None:
    opt = build_optimizer(_toy_model(), OptimConfig())
    other = build_optimizer(nn.Linear(3, 3), OptimConfig())
    with pytest.raises(ValueError):
        opt.load_state_dict(other.state_dict())


@pytest.mark.parametrize(
    ("total", "expected"),
    [(50, {0: 1.0, 19: 1.0, 20: 0.1, 29: 0.1, 30: 0.01, 49: 0.01}),
     (100, {0: 1.0, 39: 1.0, 40: 0.1, 59: 0.1, 60: 0.01, 99: 0.01})],
)
def test_lr_schedule_milestones(total: int, expected: dict[int, float]) -> None:
    schedule = LRSchedule(total_steps=total)
    for step, factor in expected.items():
        assert schedule.factor(step) == pytest.approx(factor, rel=1e-12)


def test_apply_learning_rate_scales_each_group_from_its_base() -> None:
    groups = [{"initial_lr": 3e-4, "lr": 0.0}, {"initial_lr": 1e-2, "lr": 0.0}]
    schedule = LRSchedule(total_steps=10)
    apply_learning_rate(groups, schedule, 5)  # 40 % reached at step 4, 60 % at step 6
    assert groups[0]["lr"] == pytest.approx(3e-5, rel=1e-12)
    assert groups[1]["lr"] == pytest.approx(1e-3, rel=1e-12)
    apply_learning_rate(groups, schedule, 0)
    assert groups[0]["lr"] == pytest.approx(3e-4, rel=1e-12)


def test_param_groups_give_pau_coefficients_their_own_rate() -> None:
    from ossnet_train.pau import PAU

    model = nn.Sequential(nn.Linear(3, 5), PAU(), nn.Linear(5, 1), PAU())
    groups = {g["name"]: g for g in param_groups(model, OptimConfig(lr=3e-4, pau_lr=1e-2))}
    pau_params = {id(p) for m in model if isinstance(m, PAU) for p in m.parameters()}
    assert pau_params, "the PAU module has learnable coefficients"
    assert {id(p) for p in groups["pau"]["params"]} == pau_params
    assert groups["pau"]["lr"] == pytest.approx(1e-2)
    assert groups["weights"]["lr"] == pytest.approx(3e-4)
    n_all = sum(1 for _ in model.parameters())
    assert len(groups["pau"]["params"]) + len(groups["weights"]["params"]) == n_all
