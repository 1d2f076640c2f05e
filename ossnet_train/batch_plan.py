"""How many volumes a training step holds: the memory-probing batch planner of ``ossnet-train fit``.

The batch (volumes per step) is chosen to fit ``memory_budget_gb``: a probe step on a copy of the
model, at two sizes, measures the bytes a volume and a query add to a training step (on GPU the
CUDA allocator's peak of forward + backward; on CPU the bytes autograd keeps for backward, x1.5),
and :func:`plan_batch` divides the budget left after the fixed costs (process, weights, optimiser
state, cached volumes) by that, at most ``max_batch``. The resulting :class:`BatchPlan` is
stored in the run's ``config.json`` and checkpoints, so a resumed run keeps it.
"""

from __future__ import annotations

import copy
import logging
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import nn

from ossnet_deploy.errors import InputError, describe
from ossnet_deploy.memory import current_rss_bytes
from ossnet_deploy.preprocess import PreprocessConfig
from ossnet_train.batches import SampleConfig, bytes_per_case
from ossnet_train.losses import step_loss
from ossnet_train.model import OSSNet

if TYPE_CHECKING:  # type only: ossnet_train.train imports this module
    from ossnet_train.train import TrainConfig

__all__ = ["BatchPlan", "plan_batch"]

logger = logging.getLogger("ossnet_train")

# The probe's bytes per volume and per query are scaled by this before planning: it covers
# allocator fragmentation and the second batch a DataLoader worker may hold.
_PLAN_SAFETY = 1.25


@dataclass(frozen=True)
class BatchPlan:
    """How many volumes (and points) a step holds, and the memory estimate behind it.

    ``units``: points per volume (OSS-Net) or voxels per volume sample (U-Nets: crop voxels, or
    slice pixels x slices). ``per_volume_bytes`` / ``per_unit_bytes``: the probe's peak
    increments (already scaled by the safety factor); ``fixed_bytes``: weights, optimiser state,
    cached volumes and the process itself; ``estimated_peak_bytes`` = fixed + batch x
    (per_volume + units x per_unit). ``source``: ``"probe"`` or ``"given"`` (``--batch``).
    """

    batch: int
    points: int
    units: int
    per_volume_bytes: float
    per_unit_bytes: float
    fixed_bytes: float
    budget_bytes: float
    estimated_peak_bytes: float
    source: str

    def describe(self) -> str:
        gib = 2.0**30
        return (f"batch {self.batch} x {self.units} {'points' if self.points else 'voxels'} "
                f"({self.source}); estimated peak {self.estimated_peak_bytes / gib:.2f} GiB of a "
                f"{self.budget_bytes / gib:.2f} GiB budget (fixed {self.fixed_bytes / gib:.2f} GiB, "
                f"{self.per_volume_bytes / 2**20:.0f} MiB per volume, {self.per_unit_bytes / 1e3:.1f} kB per "
                f"{'point' if self.points else 'voxel'})")


def _probe_batch(model: nn.Module, sample: SampleConfig, preprocess: PreprocessConfig, size: int,
                 device: torch.device) -> tuple[dict[str, torch.Tensor], int]:
    """A zero-filled batch of one volume of ``size`` units, and its unit count (points or voxels)."""
    channels = len(preprocess.channels)
    if isinstance(model, OSSNet):
        mc = model.config
        batch = {"volume": torch.zeros(1, channels, *mc.global_shape, device=device),
                 "coords": torch.zeros(1, size, 3, device=device),
                 "targets": torch.zeros(1, size, device=device)}
        if mc.uses_patches:
            batch["patches"] = torch.zeros(1, size, mc.patch_channels, 7, 7, 7, device=device)
        if mc.has_coarse:
            batch["coarse"] = torch.zeros(1, 1, *mc.latent_shape, device=device)
        return batch, size
    if sample.architecture == "unet3d":
        batch = {"image": torch.zeros(1, channels, size, size, size, device=device),
                 "target": torch.zeros(1, size, size, size, device=device)}
        return batch, size**3
    batch = {"image": torch.zeros(1, sample.slices, channels, size, size, device=device),
             "target": torch.zeros(1, sample.slices, size, size, device=device)}
    return batch, sample.slices * size * size


def _saved_bytes(model: nn.Module, batch: dict[str, torch.Tensor], device: torch.device,
                 amp_dtype: torch.dtype | None) -> float:
    """Bytes of the batch plus every tensor autograd keeps for backward (parameters excluded).

    On CPU there is no allocator peak to read, so the probe counts what the forward pass saves
    for backward (each storage once): that, not the transient temporaries, is what grows with
    the batch and the points. Forward only; the caller scales by a safety factor for backward.
    """
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    seen: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        if storage.data_ptr() not in params:
            seen[storage.data_ptr()] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = step_loss(model, batch, device, amp_dtype).total
    del loss
    for t in batch.values():
        seen[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
    return float(sum(seen.values()))


def _step_peak_bytes(model: nn.Module, batch: dict[str, torch.Tensor], device: torch.device,
                     amp_dtype: torch.dtype | None) -> float:
    """Peak bytes of one training step over what was allocated before it (batch included).

    CUDA: the allocator's measured peak of forward + backward. CPU: :func:`_saved_bytes` times 1.5
    (the gradients of the activations that are alive at once during backward).
    """
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        before = torch.cuda.memory_allocated(device) - sum(t.untyped_storage().nbytes() for t in batch.values())
        torch.cuda.reset_peak_memory_stats(device)
        step_loss(model, batch, device, amp_dtype).total.backward()
        torch.cuda.synchronize(device)
        return float(torch.cuda.max_memory_allocated(device) - before)
    return 1.5 * _saved_bytes(model, batch, device, amp_dtype)


def _probe_sizes(model: nn.Module, sample: SampleConfig) -> tuple[int, int]:
    if isinstance(model, OSSNet):
        return 128, 512
    divisor = int(model.size_divisor)
    return 2 * divisor, 3 * divisor


def plan_batch(cfg: TrainConfig, model: nn.Module, sample: SampleConfig, preprocess: PreprocessConfig,
               device: torch.device, amp_dtype: torch.dtype | None, n_cases: int, n_val: int = 0) -> BatchPlan:
    """Choose volumes per step (and, if even one volume does not fit, fewer points) for the budget.

    ``n_cases`` / ``n_val``: training and validation cases, which the process keeps prepared.

    A probe step at two sizes on a copy of the model (the real model's weights and BN statistics
    stay untouched) gives the peak bytes per volume (intercept) and per unit (slope).
    """
    budget = cfg.memory_budget_gb * 2.0**30
    if budget == 0:
        budget = 8 * 2.0**30 if device.type == "cpu" else 0.9 * torch.cuda.get_device_properties(device).total_memory
    n_params = sum(p.numel() for p in model.parameters())
    # weights, gradients, RAdam's two moments and Lookahead's slow copy
    state = 5.0 * 4 * n_params
    if device.type == "cpu":
        working = 4 * bytes_per_case(preprocess)  # the augmented copy, noise, global volume, patches
        cached = (n_cases + n_val) * bytes_per_case(preprocess)  # training cache and validation subjects
        fixed = float(current_rss_bytes() or 0) + state + cached + working
    else:
        fixed = state
    probe = copy.deepcopy(model).train()
    small, large = _probe_sizes(model, sample)
    peaks, units = [], []
    for size in (small, large):
        batch, batch_units = _probe_batch(probe, sample, preprocess, size, device)
        peaks.append(_step_peak_bytes(probe, batch, device, amp_dtype))
        units.append(batch_units)
        del batch
        probe.zero_grad(set_to_none=True)
    del probe
    per_unit = max(peaks[1] - peaks[0], 0.0) / (units[1] - units[0]) * _PLAN_SAFETY
    per_volume = max(peaks[0] * _PLAN_SAFETY - per_unit * units[0], 0.0)
    if isinstance(model, OSSNet):
        points = cfg.points
        volume_units = points
    else:
        points = 0
        volume_units = (math.prod(sample.crop) if sample.architecture == "unet3d"
                        else sample.slices * math.prod(s for a, s in enumerate(preprocess.shape) if a != sample.slice_axis))
    per_sample = per_volume + volume_units * per_unit
    if cfg.batch:
        batch, source = cfg.batch, "given"
    else:
        batch = int(min(cfg.max_batch, max(0.0, (budget - fixed)) // per_sample))
        source = "probe"
        if batch < 1 and isinstance(model, OSSNet):
            fitting = (budget - fixed - per_volume) / per_unit if per_unit else 0
            points = 2 ** math.floor(math.log2(fitting)) if fitting >= 1024 else 0
            if points < 1024:
                raise InputError(describe(None, "the memory budget cannot hold one training volume",
                                          expected=f"at least {(fixed + per_volume + 1024 * per_unit) / 2**30:.2f} GiB",
                                          found=f"--memory-budget-gb {budget / 2**30:.2f}",
                                          fix="raise --memory-budget-gb or use a smaller preset"))
            batch, volume_units = 1, points
            per_sample = per_volume + volume_units * per_unit
            logger.warning("one volume of %d points does not fit the budget; using %d points", cfg.points, points)
        elif batch < 1:
            raise InputError(describe(None, "the memory budget cannot hold one training crop",
                                      expected=f"at least {(fixed + per_sample) / 2**30:.2f} GiB",
                                      found=f"--memory-budget-gb {budget / 2**30:.2f}",
                                      fix="raise --memory-budget-gb or pass a smaller --crop / --slices"))
    plan = BatchPlan(batch=batch, points=points, units=volume_units, per_volume_bytes=per_volume,
                     per_unit_bytes=per_unit, fixed_bytes=fixed, budget_bytes=budget,
                     estimated_peak_bytes=fixed + batch * per_sample, source=source)
    if plan.estimated_peak_bytes > budget:
        logger.warning("the given batch exceeds the memory budget: %s", plan.describe())
    if isinstance(model, OSSNet) and batch < 2:
        # With one volume per step the decoder's batch statistics are per-volume, so anything
        # constant over a volume's queries (latent channel 0 through block 0) is normalised away
        # in training but not by the running statistics used in eval mode and in the exported
        # graphs: the eval-mode model can be far worse than the training loss suggests
        # (measured on the demo preset: every query negative in eval mode after 150 steps).
        logger.warning("batch of %d volume(s) per step: the eval-mode (exported) model will not match "
                       "training; use --batch 2 or more (the paper used 4 per BatchNorm)", batch)
    return plan
