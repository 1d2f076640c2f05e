"""Optimiser, parameter groups and the learning-rate schedule of OSS-Net training.

The paper trains with RAdam wrapped in Lookahead (k=5, alpha=0.8), lr 3e-4 for the weights and
1e-2 for the Padé activation coefficients, no weight decay, and the learning rate multiplied by
0.1 at epochs 20 and 30 of 50. We keep RAdam + Lookahead and no weight decay, and differ in two
places (docs/training.md#the-recipe):

* The PAU coefficients learn at the weights' rate (:data:`PAU_LR_FACTOR` x ``lr``; this module is
  the one place that defines it). At 1e-2 their curves drifted far from the activations they
  start as in the bundled model's run (500 steps): on [-4, 4] one (encoder block 3) moved by up to
  4.5 and reached slope 3.1 where the initial curve's steepest is 1.07, another's dip deepened
  to slope -0.18 (initially -0.06). RAdam moves every parameter by about its learning rate per
  step whatever the gradient's size, so 1e-2 let ten scalars that shape every activation of a
  layer move 33 times faster than any weight.
* The schedule is counted in optimiser steps and always ends inside the run: ``cosine`` (the
  default) anneals from 1 to ``final_factor`` (0.01) so that the last step takes exactly the
  annealed rate; ``step`` is the paper's x0.1 drops at fractions of the run (default 40 % and
  60 %; a drop at fraction 1.0 is taken at the last step). There is no extra warmup: RAdam's
  variance rectification already is one (its step is scaled by 0.03 at step 6, 0.15 at step 50,
  0.31 at step 200 and 0.65 at step 1000 with beta2 = 0.999).

Lookahead is our own implementation (a thin wrapper around any ``torch.optim.Optimizer``) whose
``state_dict`` carries the slow weights and the step counter, so ``--resume`` is exact.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ossnet_train.pau import PAU

__all__ = [
    "LR",
    "LR_SCHEDULES",
    "PAU_LR_FACTOR",
    "GradientClipper",
    "LRSchedule",
    "Lookahead",
    "OptimConfig",
    "apply_learning_rate",
    "build_optimizer",
    "clip_gradients",
    "param_groups",
]

#: the weights' learning rate (the paper's).
LR = 3e-4
#: PAU coefficients learn at ``PAU_LR_FACTOR x lr`` unless a rate is given (module docstring).
PAU_LR_FACTOR = 1.0
#: ``cosine`` (default) or ``step`` (the paper's drops at fractions of the run).
LR_SCHEDULES = ("cosine", "step")


@dataclass(frozen=True)
class OptimConfig:
    """Optimiser hyper-parameters (the paper's defaults).

    ``lr`` applies to every weight, ``pau_lr`` to the rational coefficients of the Padé
    activation units (0: ``PAU_LR_FACTOR x lr``, see :attr:`pau_rate`); ``lookahead_k`` fast
    steps are taken between two slow-weight updates of size ``lookahead_alpha``.
    ``weight_decay`` is 0 in the paper.
    """

    lr: float = LR
    pau_lr: float = 0.0
    lookahead_k: int = 5
    lookahead_alpha: float = 0.8
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8

    @property
    def pau_rate(self) -> float:
        """The PAU coefficients' learning rate: ``pau_lr``, or ``PAU_LR_FACTOR * lr`` when it is 0."""
        return self.pau_lr if self.pau_lr > 0 else PAU_LR_FACTOR * self.lr


@dataclass(frozen=True)
class LRSchedule:
    """The learning-rate factor as a pure function of the optimiser step (so resuming needs no state).

    ``step`` is the 0-based index of the optimiser step about to be taken; the run's last step
    is ``total_steps - 1`` and always takes the fully annealed factor.

    * ``kind="cosine"``: ``final + (1 - final) * (1 + cos(pi * step / (total_steps - 1))) / 2``,
      from 1 at step 0 to ``final_factor`` at the last step.
    * ``kind="step"``: ``gamma ** m``, ``m`` the milestones reached; a milestone at fraction
      ``f`` is reached at step ``min(round(f * total_steps), total_steps - 1)``, so every
      milestone is taken inside the run.
    """

    total_steps: int
    milestones: tuple[float, ...] = (0.4, 0.6)
    gamma: float = 0.1
    kind: str = "step"
    final_factor: float = 0.01

    def __post_init__(self) -> None:
        if self.kind not in LR_SCHEDULES:
            raise ValueError(f"unknown LR schedule {self.kind!r}; expected one of {LR_SCHEDULES}")

    def milestone_steps(self) -> tuple[int, ...]:
        """The 0-based steps at which the ``step`` schedule drops (sorted; each inside the run)."""
        last = max(self.total_steps - 1, 0)
        return tuple(sorted(min(round(f * self.total_steps), last) for f in self.milestones))

    def factor(self, step: int) -> float:
        """Multiplier of the base learning rate for optimiser step ``step`` (0-based)."""
        if self.kind == "cosine":
            # A one-step run's only step is its last one.
            progress = min(max(step, 0) / (self.total_steps - 1), 1.0) if self.total_steps > 1 else 1.0
            return float(self.final_factor + (1.0 - self.final_factor) * 0.5 * (1.0 + math.cos(math.pi * progress)))
        reached = sum(1 for s in self.milestone_steps() if step >= s)
        return float(self.gamma**reached)

    def first_drop_step(self) -> int:
        """The first step with a lowered rate: the first milestone (``step``), or the middle of the
        run, where the cosine has fallen about half way (``cosine``). ``total_steps`` if none."""
        if self.kind == "cosine":
            return self.total_steps // 2
        steps = self.milestone_steps()
        return steps[0] if steps else self.total_steps


def param_groups(model: nn.Module, config: OptimConfig) -> list[dict[str, Any]]:
    """Split the model's trainable parameters into the weight group and the PAU group.

    The group is decided by module type: every parameter owned by a :class:`~ossnet_train.pau.PAU`
    (its rational coefficients) is in ``"pau"``; models without PAUs (the U-Nets) have one group.

    Returns a list of torch param-group dicts, each with ``params``, ``lr``, ``initial_lr``
    (the base rate the schedule scales) and ``name`` (``"weights"`` or ``"pau"``); empty groups
    are left out.
    """
    pau_ids: set[int] = set()
    for module in model.modules():
        if isinstance(module, PAU):
            pau_ids.update(id(p) for p in module.parameters(recurse=False))
    weights, paus = [], []
    for p in model.parameters():
        if not p.requires_grad:
            continue
        (paus if id(p) in pau_ids else weights).append(p)
    groups = []
    for name, params, lr in (("weights", weights, config.lr), ("pau", paus, config.pau_rate)):
        if params:
            groups.append({"params": params, "lr": lr, "initial_lr": lr, "name": name})
    return groups


class Lookahead:
    """Lookahead (Zhang et al. 2019) around an inner optimiser.

    The inner ("fast") optimiser steps every call; every ``k``-th call the slow weights move
    ``alpha`` of the way towards the fast weights, and the fast weights are reset to them:
    ``slow += alpha * (fast - slow); fast = slow``. The slow weights start as a copy of the
    parameters at construction.

    ``param_groups`` is the inner optimiser's list, so learning rates set on it apply.
    """

    def __init__(self, optimizer: torch.optim.Optimizer, k: int = 5, alpha: float = 0.8) -> None:
        if k < 1:
            raise ValueError(f"Lookahead k must be >= 1, got {k}")
        if not 0.0 < alpha <= 1.0:
            raise ValueError(f"Lookahead alpha must be in (0, 1], got {alpha}")
        self.optimizer = optimizer
        self.k = k
        self.alpha = alpha
        self.step_count = 0
        self.slow: list[list[torch.Tensor]] = [
            [p.detach().clone() for p in group["params"]] for group in optimizer.param_groups
        ]

    @property
    def param_groups(self) -> list[dict[str, Any]]:
        return self.optimizer.param_groups

    def _params(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for group, slow_group in zip(self.optimizer.param_groups, self.slow, strict=True):
            yield from zip(group["params"], slow_group, strict=True)

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.optimizer.zero_grad(set_to_none=set_to_none)

    def reset_moments(self) -> None:
        """Forget the inner optimiser's state (RAdam's step count and both moments).

        For a switch that changes the gradients' scale (freezing BatchNorm multiplied the demo
        model's gradient norm by 5.4): second moments that still reflect the old, small
        gradients would turn the new ones into steps far larger than the learning rate. Started
        afresh, RAdam re-estimates them and its rectification ramps the step up again from
        almost 0. The slow weights and the Lookahead counter are kept.
        """
        self.optimizer.state.clear()

    @torch.no_grad()
    def step(self) -> None:
        """One fast step; every ``k``-th step also the slow-weight update."""
        self.optimizer.step()
        self.step_count += 1
        if self.step_count % self.k == 0:
            for fast, slow in self._params():
                slow.add_(fast.detach() - slow, alpha=self.alpha)
                fast.copy_(slow)

    def state_dict(self) -> dict[str, Any]:
        """Inner optimiser state plus slow weights, k, alpha and the step counter."""
        return {
            "inner": self.optimizer.state_dict(),
            "slow": [[s.detach().clone() for s in group] for group in self.slow],
            "k": self.k,
            "alpha": self.alpha,
            "step_count": self.step_count,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned (same model, same parameter order)."""
        self.optimizer.load_state_dict(state["inner"])
        shapes = [[tuple(s.shape) for s in g] for g in self.slow]
        loaded = [[tuple(s.shape) for s in g] for g in state["slow"]]
        if shapes != loaded:
            raise ValueError("Lookahead state does not match the model's parameters (slow-weight shapes differ)")
        with torch.no_grad():
            for group, saved in zip(self.slow, state["slow"], strict=True):
                for slow, value in zip(group, saved, strict=True):
                    slow.copy_(value)
        self.k = int(state["k"])
        self.alpha = float(state["alpha"])
        self.step_count = int(state["step_count"])


def build_optimizer(model: nn.Module, config: OptimConfig) -> Lookahead:
    """RAdam over :func:`param_groups`, wrapped in :class:`Lookahead`."""
    inner = torch.optim.RAdam(
        param_groups(model, config), lr=config.lr, betas=config.betas, eps=config.eps,
        weight_decay=config.weight_decay,
    )
    return Lookahead(inner, k=config.lookahead_k, alpha=config.lookahead_alpha)


def clip_gradients(parameters: Iterable[torch.Tensor], max_norm: float) -> float:
    """Scale the gradients so that their global L2 norm is at most ``max_norm`` (0: leave them).

    Returns the norm *before* clipping (``inf``/``nan`` when a gradient is not finite; nothing
    is scaled then). Parameters without a gradient are skipped.
    """
    grads = [p for p in parameters if p.grad is not None]
    if not grads:
        return 0.0
    limit = max_norm if max_norm > 0 else math.inf
    return float(torch.nn.utils.clip_grad_norm_(grads, limit, error_if_nonfinite=False))


class GradientClipper:
    """Clip the global gradient norm to ``factor`` x the running mean of the earlier steps' norms.

    Why relative: on the demo model the norm falls from 30-115 in the first steps to about 2
    after 500, so no fixed limit both leaves early training alone and catches a late jump (the
    BatchNorm freeze multiplied it by 5.4 at step 500). The running mean is an exponential
    average (``momentum``) of the norms after clipping, so a lasting change of scale is followed
    within tens of steps while a sudden jump is cut to ``factor`` x the recent level. The first
    step has no history and is not clipped; a non-finite norm (an fp16 overflow the loss scaler
    skips) leaves the mean unchanged. ``factor`` 0 switches clipping off (norms are still
    measured). The mean is part of the training state, so resuming is exact.
    """

    def __init__(self, factor: float, momentum: float = 0.9) -> None:
        if not (math.isfinite(factor) and factor >= 0):
            raise ValueError(f"gradient clip factor must be a number >= 0, got {factor}")
        self.factor = float(factor)
        self.momentum = float(momentum)
        self.mean: float | None = None

    def limit(self) -> float:
        """The largest norm the next step may have (0: no limit)."""
        return self.factor * self.mean if self.factor > 0 and self.mean is not None else 0.0

    def __call__(self, parameters: Iterable[torch.Tensor]) -> float:
        """Clip the gradients of ``parameters``; returns their norm before clipping."""
        limit = self.limit()
        norm = clip_gradients(parameters, limit)
        if math.isfinite(norm):
            used = min(norm, limit) if limit > 0 else norm
            self.mean = used if self.mean is None else self.momentum * self.mean + (1.0 - self.momentum) * used
        return norm

    def state_dict(self) -> dict[str, Any]:
        return {"mean": self.mean}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        mean = state.get("mean")
        self.mean = None if mean is None else float(mean)


def apply_learning_rate(groups: Iterable[dict[str, Any]], schedule: LRSchedule, step: int) -> float:
    """Set every group's ``lr`` to ``initial_lr * schedule.factor(step)``; returns the factor.

    The learning rate is a pure function of the step, so a resumed run needs no scheduler state.
    """
    factor = schedule.factor(step)
    for group in groups:
        group["lr"] = group["initial_lr"] * factor
    return factor
