"""Lookahead maths, its exact state round trip, parameter groups and the step-based LR schedule."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from torch import nn

from ossnet_train.optim import (
    PAU_LR_FACTOR,
    GradientClipper,
    Lookahead,
    LRSchedule,
    OptimConfig,
    apply_learning_rate,
    build_optimizer,
    clip_gradients,
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


@pytest.mark.parametrize("total", [1, 2, 7, 100, 1502])
@pytest.mark.parametrize(("kind", "milestones", "annealed"), [
    ("cosine", (0.4, 0.6), 0.01), ("step", (0.4, 0.6), 0.01), ("step", (0.6, 0.85), 0.01), ("step", (0.8, 1.0), 0.01),
])
def test_the_last_step_takes_the_annealed_rate(total: int, kind: str, milestones: tuple[float, ...],
                                               annealed: float) -> None:
    """Whatever the run's length, its last step (total - 1) runs at the fully annealed rate."""
    schedule = LRSchedule(total_steps=total, milestones=milestones, kind=kind)
    assert schedule.factor(total - 1) == pytest.approx(annealed, rel=1e-12)
    factors = [schedule.factor(s) for s in range(total)]
    assert all(b <= a + 1e-15 for a, b in itertools.pairwise(factors)), "never increases"
    if total > 2:
        assert factors[0] == 1.0


def test_cosine_schedule_values_and_first_drop() -> None:
    schedule = LRSchedule(total_steps=101, kind="cosine")
    assert schedule.factor(0) == 1.0
    assert schedule.factor(50) == pytest.approx(0.01 + 0.99 * 0.5, rel=1e-12)
    assert schedule.factor(25) == pytest.approx(0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi / 4)), rel=1e-12)
    assert schedule.first_drop_step() == 50
    assert LRSchedule(total_steps=100).first_drop_step() == 40  # the paper's first milestone
    with pytest.raises(ValueError, match="unknown LR schedule"):
        LRSchedule(total_steps=10, kind="linear")


def test_pau_rate_defaults_to_the_weights_rate_and_can_be_given() -> None:
    assert OptimConfig().pau_rate == pytest.approx(PAU_LR_FACTOR * OptimConfig().lr)
    assert OptimConfig(lr=1e-3).pau_rate == pytest.approx(PAU_LR_FACTOR * 1e-3)
    assert OptimConfig(lr=1e-3, pau_lr=2e-3).pau_rate == 2e-3
    from ossnet_train.pau import PAU

    groups = {g["name"]: g for g in param_groups(nn.Sequential(nn.Linear(2, 2), PAU()), OptimConfig(lr=1e-3))}
    assert groups["pau"]["initial_lr"] == pytest.approx(PAU_LR_FACTOR * 1e-3)


def test_clip_gradients_bounds_the_norm_and_returns_the_norm_before() -> None:
    a = torch.zeros(3, requires_grad=True)
    b = torch.zeros(4, requires_grad=True)
    a.grad = torch.tensor([3.0, 0.0, 0.0])
    b.grad = torch.tensor([0.0, 4.0, 0.0, 0.0])
    assert clip_gradients([a, b], 0.0) == pytest.approx(5.0)  # 0: measured, left alone
    assert float(torch.cat([a.grad, b.grad]).norm()) == pytest.approx(5.0)
    assert clip_gradients([a, b], 1.0) == pytest.approx(5.0)
    assert float(torch.cat([a.grad, b.grad]).norm()) == pytest.approx(1.0, rel=1e-5)
    torch.testing.assert_close(a.grad, torch.tensor([0.6, 0.0, 0.0]), rtol=1e-5, atol=0)
    assert clip_gradients([a, b], 10.0) == pytest.approx(1.0, rel=1e-5)  # below the limit: unchanged
    assert float(torch.cat([a.grad, b.grad]).norm()) == pytest.approx(1.0, rel=1e-5)
    assert clip_gradients([torch.zeros(2, requires_grad=True)], 1.0) == 0.0  # no gradients at all


def test_reset_moments_restarts_radam_and_keeps_the_slow_weights() -> None:
    model = _toy_model()
    opt = build_optimizer(model, OptimConfig(lookahead_k=3))
    _train(model, opt, range(4))
    slow = [[s.clone() for s in g] for g in opt.slow]
    assert opt.optimizer.state
    opt.reset_moments()
    assert not opt.optimizer.state
    assert opt.step_count == 4
    for group, saved in zip(opt.slow, slow, strict=True):
        for a, b in zip(group, saved, strict=True):
            assert torch.equal(a, b)
    _train(model, opt, range(4, 5))  # RAdam starts afresh: its step count is 1 again
    assert all(float(state["step"]) == 1.0 for state in opt.optimizer.state.values())


@pytest.mark.parametrize("factor", [0.0, 3.0])
def test_clipping_bounds_the_update_after_a_gradient_jump(factor: float) -> None:
    """Three steps of ordinary gradients, then one 100 times larger: RAdam's first steps move the weights by
    lr x its (bias-corrected) momentum, so the jump's update is lr x (0.9 m + g) / 1.9 in norm at most; with
    clipping g is at most factor x the running mean norm, without it the update is ~50 times larger."""
    lr = 1e-2
    x = torch.zeros(1000, requires_grad=True)
    opt = Lookahead(torch.optim.RAdam([x], lr=lr), k=1000)
    clipper = GradientClipper(factor)
    direction = torch.randn(1000, generator=torch.Generator().manual_seed(0))
    direction /= direction.norm()
    for scale in (1.0, 1.0, 1.0):
        opt.zero_grad()
        x.grad = scale * direction.clone()
        assert clipper([x]) == pytest.approx(1.0)
        opt.step()
    assert clipper.mean == pytest.approx(1.0)
    before = x.detach().clone()
    opt.zero_grad()
    x.grad = 100.0 * direction.clone()
    assert clipper([x]) == pytest.approx(100.0)  # the norm before clipping
    opt.step()
    update = float((x.detach() - before).norm())
    # RAdam's 4th step (rho_t = 4 <= 5): lr x bias-corrected first moment = lr x sum_i w_i g_i, sum w_i = 1.
    weights = torch.tensor([0.9**3, 0.9**2, 0.9, 1.0]) * 0.1 / (1 - 0.9**4)
    g_last = min(100.0, factor) if factor else 100.0
    expected = lr * float(weights[:3].sum() + weights[3] * g_last)
    assert update == pytest.approx(expected, rel=1e-4)
    if factor:
        assert update < lr * factor
    else:
        assert update > 10 * lr


def test_gradient_clipper_state_round_trip_and_no_clip_on_first_step() -> None:
    clipper = GradientClipper(2.0)
    assert clipper.limit() == 0.0
    x = torch.zeros(3, requires_grad=True)
    x.grad = torch.tensor([0.0, 30.0, 40.0])
    assert clipper([x]) == pytest.approx(50.0)
    assert float(x.grad.norm()) == pytest.approx(50.0)  # no history: not clipped
    assert clipper.limit() == pytest.approx(100.0)
    other = GradientClipper(2.0)
    other.load_state_dict(clipper.state_dict())
    assert other.limit() == clipper.limit()
    x.grad = torch.tensor([0.0, float("nan"), 0.0])
    assert math.isnan(clipper([x])) and clipper.mean == pytest.approx(50.0)  # a non-finite norm is not averaged
    with pytest.raises(ValueError, match="clip factor"):
        GradientClipper(-1.0)
