"""Optimiser, parameter groups and the learning-rate schedule of OSS-Net training.

The paper trains with RAdam wrapped in Lookahead (k=5, alpha=0.8), lr 3e-4 for the weights and
1e-2 for the Padé activation coefficients, no weight decay, and the learning rate multiplied by
0.1 at epochs 20 and 30 of 50. We count the schedule in optimiser steps (milestones at 40 % and
60 % of the run), so that it does not depend on how many volumes make an epoch.

Lookahead is our own implementation (a thin wrapper around any ``torch.optim.Optimizer``) whose
``state_dict`` carries the slow weights and the step counter, so ``--resume`` is exact.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ossnet_train.pau import PAU

__all__ = [
    "LRSchedule",
    "Lookahead",
    "OptimConfig",
    "apply_learning_rate",
    "build_optimizer",
    "param_groups",
]


@dataclass(frozen=True)
class OptimConfig:
    """Optimiser hyper-parameters (the paper's defaults).

    ``lr`` applies to every weight, ``pau_lr`` to the rational coefficients of the Padé
    activation units; ``lookahead_k`` fast steps are taken between two slow-weight updates of
    size ``lookahead_alpha``. ``weight_decay`` is 0 in the paper.
    """

    lr: float = 3e-4
    pau_lr: float = 1e-2
    lookahead_k: int = 5
    lookahead_alpha: float = 0.8
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8


@dataclass(frozen=True)
class LRSchedule:
    """Step-based multi-step schedule.

    ``factor(step)`` is ``gamma ** m`` where ``m`` counts the milestones already reached; a
    milestone at fraction ``f`` of ``total_steps`` is reached at step ``round(f * total_steps)``
    (``step`` is the 0-based index of the optimiser step about to be taken).
    """

    total_steps: int
    milestones: tuple[float, ...] = (0.4, 0.6)
    gamma: float = 0.1

    def milestone_steps(self) -> tuple[int, ...]:
        """The 0-based steps at which the learning rate drops (sorted)."""
        return tuple(sorted(round(f * self.total_steps) for f in self.milestones))

    def factor(self, step: int) -> float:
        """Multiplier of the base learning rate for optimiser step ``step`` (0-based)."""
        reached = sum(1 for s in self.milestone_steps() if step >= s)
        return float(self.gamma**reached)


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
    for name, params, lr in (("weights", weights, config.lr), ("pau", paus, config.pau_lr)):
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


def apply_learning_rate(groups: Iterable[dict[str, Any]], schedule: LRSchedule, step: int) -> float:
    """Set every group's ``lr`` to ``initial_lr * schedule.factor(step)``; returns the factor.

    The learning rate is a pure function of the step, so a resumed run needs no scheduler state.
    """
    factor = schedule.factor(step)
    for group in groups:
        group["lr"] = group["initial_lr"] * factor
    return factor
