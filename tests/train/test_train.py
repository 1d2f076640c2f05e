"""Training: loss values, batches, the memory plan, exact resume, and a tiny task learnt end to end.

The tiny task: 1-channel 32^3 volumes holding one bright ellipsoid whose centre and radii vary
per volume, plus noise. Coordinates alone cannot solve it; a tiny OSS-Net C must reach a
whole-volume Dice >= 0.9 on volumes it never saw.
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from ossnet_deploy.errors import InputError, ModelFormatError, OutputExistsError
from ossnet_deploy.preprocess import global_pool
from ossnet_train import checkpoint
from ossnet_train.augment import AugmentConfig
from ossnet_train.batch_plan import plan_batch
from ossnet_train.batches import CaseCache, SampleConfig, TrainingSamples, case_for_sample
from ossnet_train.datasets import make_dataset
from ossnet_train.losses import coarse_target, occupancy_loss
from ossnet_train.registry import build_model
from ossnet_train.synthetic import write_ellipsoid_dataset
from ossnet_train.train import TrainConfig, _model_config, _preprocess_config, _sample_config, fit

GRID = 32
TINY_MODEL = (("global_shape", (16, 16, 16)), ("encoder_channels", (1, 8, 16)), ("decoder_width", 32))
TINY_PREPROCESS = (("shape", (GRID, GRID, GRID)), ("max_shift", 0), ("intensity", "zscore_volume"),
                   ("foreground", "threshold"), ("foreground_threshold", -1000.0))


def write_ellipsoids(root: Path, seeds: range, *, noise: float = 0.25) -> None:
    """Generic-layout dataset of 32^3 volumes, each a bright ellipsoid of random centre and radii."""
    write_ellipsoid_dataset(root, seeds, grid=GRID, noise=noise)


def tiny_config(data: Path, out: Path, **overrides: object) -> TrainConfig:
    values: dict[str, object] = {
        "data_kind": "generic", "data": str(data), "out": str(out), "variant": "c", "preset": "demo",
        "model_overrides": TINY_MODEL, "preprocess_overrides": TINY_PREPROCESS, "steps": 4, "points": 256,
        "batch": 2, "device": "cpu", "threads": 1, "progress": False, "checkpoint_every": 100,
    }
    values.update(overrides)
    return TrainConfig(**values)  # type: ignore[arg-type]


@pytest.fixture(autouse=True)
def _one_thread() -> object:
    """One torch thread: on a shared 2-core machine two threads wait on each other."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# ------------------------------------------------------------------------------------ losses


def test_occupancy_loss_matches_hand_computed_values() -> None:
    logits = torch.tensor([[0.0], [math.log(3.0)]])
    targets = torch.tensor([1.0, 0.0])
    # -log sigmoid(0) = log 2; -log(1 - sigmoid(log 3)) = -log(1/4) = log 4
    parts = occupancy_loss(logits, targets)
    assert parts.points == pytest.approx(1.5 * math.log(2.0), rel=1e-6)
    assert parts.coarse is None
    coarse_logits = torch.zeros(1, 1, 2, 1, 1)
    coarse_targets = torch.tensor([1.0, 0.0]).view(1, 1, 2, 1, 1)
    parts = occupancy_loss(logits, targets, coarse_logits, coarse_targets)
    assert parts.coarse == pytest.approx(math.log(2.0), rel=1e-6)
    assert float(parts.total) == pytest.approx(1.5 * math.log(2.0) + 0.1 * math.log(2.0), rel=1e-6)


def test_coarse_target_is_a_block_max() -> None:
    label = torch.zeros(1, 4, 2, 2, dtype=torch.uint8)
    label[0, 1, 1, 0] = 1  # one foreground voxel in the first block along axis 0
    target = coarse_target(label, (2, 1, 1))
    assert target.shape == (1, 1, 2, 1, 1)
    assert target.flatten().tolist() == [1.0, 0.0]
    assert coarse_target(torch.zeros(1, 4, 2, 2), (2, 1, 1)).sum() == 0


def test_loss_refuses_mismatched_counts() -> None:
    with pytest.raises(ValueError, match="point logits for"):
        occupancy_loss(torch.zeros(3, 1), torch.zeros(2))


# ------------------------------------------------------------------------------------ batches


def test_samples_are_deterministic_and_consistent(tmp_path: Path) -> None:
    write_ellipsoids(tmp_path / "data", range(3))
    config = tiny_config(tmp_path / "data", tmp_path / "run")
    preprocess = _preprocess_config(config)
    dataset = make_dataset("generic", tmp_path / "data")
    cache = CaseCache(dataset, preprocess, band=True)
    sample_cfg = SampleConfig(points=500, sampling="border", coarse_shape=(4, 4, 4))
    samples = TrainingSamples(cache, sample_cfg, seed=5, length=10)
    a, b = samples[3], samples[3]
    for key in a:
        np.testing.assert_array_equal(a[key], b[key])
    assert a["volume"].shape == (1, 16, 16, 16)
    assert a["coords"].shape == (500, 3) and a["coords"].dtype == np.float32
    assert a["patches"].shape == (500, 1, 7, 7, 7)
    assert a["coarse"].shape == (1, 4, 4, 4)
    assert not np.array_equal(samples[4]["coords"], a["coords"])
    # The patch centre is the voxel the target belongs to: bright centres are mostly foreground.
    centre = a["patches"][:, 0, 3, 3, 3]
    assert centre[a["targets"] == 1].mean() > centre[a["targets"] == 0].mean() + 1.0
    # Border sampling puts half of the points within 6 voxels of the surface, so a small object
    # gets clearly more positives than under uniform sampling of the same volumes.
    uniform = TrainingSamples(cache, SampleConfig(points=500, coarse_shape=(4, 4, 4)), seed=5, length=10)
    border_rate = np.mean([samples[i]["targets"].mean() for i in range(6)])
    uniform_rate = np.mean([uniform[i]["targets"].mean() for i in range(6)])
    assert border_rate > 1.5 * uniform_rate
    # Every case is used once per epoch.
    assert sorted(case_for_sample(5, i, 3) for i in range(3)) == [0, 1, 2]


def test_border_points_hug_the_surface_and_stay_in_the_input(tmp_path: Path) -> None:
    """Border sampling on a synthetic head: a 36^3 input (background 0.1) holding a ball of tissue (r 14, 1.0)
    with a ball label (r 7), placed with shifts and flipped in a 48^3 grid. Half the points come from the
    band (the label boundary +-2), 80 % of the rest from the foreground (tissue), the others from the input's
    region: none lands in the padding, few in the background, most near the surface."""
    import nibabel as nib

    from ossnet_deploy.morphology import max_filter
    from ossnet_train.batches import _training_volume, sample_rng
    from ossnet_train.sampling import label_boundary

    root = tmp_path / "head"
    (root / "imagesTr").mkdir(parents=True)
    (root / "labelsTr").mkdir(parents=True)
    radius = np.sqrt(((np.indices((36, 36, 36)) - 17.5) ** 2).sum(0))
    image = np.where(radius <= 14, 1.0, 0.1).astype(np.float32)
    nib.save(nib.Nifti1Image(image, np.eye(4)), root / "imagesTr" / "head_000_0000.nii.gz")
    nib.save(nib.Nifti1Image((radius <= 7).astype(np.uint8), np.eye(4)), root / "labelsTr" / "head_000.nii.gz")
    config = tiny_config(root, tmp_path / "run", preprocess_overrides=(
        ("shape", (48, 48, 48)), ("max_shift", 3), ("intensity", "zscore_volume"),
        ("foreground", "threshold"), ("foreground_threshold", 0.5)))
    preprocess = _preprocess_config(config)
    cache = CaseCache(make_dataset("generic", root), preprocess, band=True)
    sample = SampleConfig(points=4000, sampling="border", patches=False,
                          augment=AugmentConfig(flip_axes=(0, 1, 2), flip_p=1.0, brightness_p=0.0, noise_p=0.0))
    samples = TrainingSamples(cache, sample, seed=0, length=8)
    fractions: dict[str, list[float]] = {"padding": [], "background": [], "tissue": [], "near surface": [],
                                         "expected near surface": []}
    for g in range(8):
        item = samples[g]
        idx = np.rint(((item["coords"] + 1) * 48 - 1) / 2).astype(np.int64)
        volume = _training_volume(cache.get(0), preprocess, sample, sample_rng(0, g))  # the same draws
        at = tuple(idx.T)
        np.testing.assert_array_equal(item["targets"], volume.label[at])
        values = volume.padded[0][at]
        tissue_level, background_level = volume.padded[0].max(), np.unique(volume.padded[0])[1]
        fractions["padding"].append(float(np.mean(values == volume.pad_values[0])))
        fractions["background"].append(float(np.mean(np.isclose(values, background_level))))
        fractions["tissue"].append(float(np.mean(np.isclose(values, tissue_level))))
        near = max_filter(label_boundary(volume.label), 5)  # within 2 voxels of a boundary voxel
        fractions["near surface"].append(float(near[at].mean()))
        tissue = np.isclose(volume.padded[0], tissue_level)
        region = volume.padded[0] != volume.pad_values[0]
        fractions["expected near surface"].append(0.5 + 0.4 * near[tissue].mean() + 0.1 * near[region].mean())
    mean = {k: float(np.mean(v)) for k, v in fractions.items()}
    assert mean["padding"] == 0.0
    # 50 % band (inside the tissue ball) + 40 % tissue + 10 % region, a quarter of which is tissue.
    assert mean["tissue"] == pytest.approx(0.5 + 0.4 + 0.1 * 0.246, abs=0.02)
    assert mean["background"] == pytest.approx(0.1 * (1 - 0.246), abs=0.02)
    # All of the band, plus the surface's share of the tissue and region draws.
    assert mean["near surface"] == pytest.approx(mean["expected near surface"], abs=0.02)


def test_shifted_training_volumes_are_bias_corrected_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """With bias_correction on, the cache corrects the canonical case once and every shifted
    placement equals prepare_volume with the correction at that shift."""
    from ossnet_deploy.preprocess import prepare_volume
    from ossnet_train.batches import _shifted

    write_ellipsoids(tmp_path / "data", range(1))
    base = _preprocess_config(tiny_config(tmp_path / "data", tmp_path / "run"))
    preprocess = dataclasses.replace(base, bias_correction="log_field", bias_grid_mm=2.0, bias_sigma_mm=8.0,
                                     max_shift=2)
    dataset = make_dataset("generic", tmp_path / "data")
    cache = CaseCache(dataset, preprocess, band=False)
    from ossnet_deploy import preprocess as preprocess_module

    calls: list[int] = []
    estimate = preprocess_module.correct_bias
    monkeypatch.setattr(preprocess_module, "correct_bias", lambda *a, **k: calls.append(1) or estimate(*a, **k))
    cached = cache.get(0)
    assert cached.static is None and cached.data is not None
    assert len(calls) == 1  # the case's field is estimated once, not also for its first placement
    _shifted(cached, preprocess, np.random.default_rng(0))
    assert len(calls) == 1  # nor for a shifted placement
    monkeypatch.undo()
    case = dataset[0]
    rng = np.random.default_rng(3)
    padded, _, pads, offset = _shifted(cached, preprocess, rng)
    shift = np.random.default_rng(3).integers(-2, 3, size=3)
    expected = prepare_volume(case.data, case.affine, preprocess, shift=tuple(int(v) for v in shift))
    assert offset == expected.placement.offset
    np.testing.assert_allclose(padded, expected.padded, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(pads, expected.pad_values)
    uncorrected = prepare_volume(case.data, case.affine, dataclasses.replace(preprocess, bias_correction="none"),
                                 shift=tuple(int(v) for v in shift))
    assert not np.allclose(padded, uncorrected.padded, atol=1e-3)


def test_global_volume_is_recomputed_from_the_augmented_grid(tmp_path: Path) -> None:
    write_ellipsoids(tmp_path / "data", range(1))
    preprocess = _preprocess_config(tiny_config(tmp_path / "data", tmp_path / "run"))
    cache = CaseCache(make_dataset("generic", tmp_path / "data"), preprocess, band=False)
    static = cache.get(0).static
    assert static is not None

    def volume(augment: AugmentConfig | None) -> np.ndarray:
        return TrainingSamples(cache, SampleConfig(points=8, augment=augment), seed=1, length=1)[0]["volume"]

    np.testing.assert_array_equal(volume(None), global_pool(static.padded))
    flip_only = AugmentConfig(flip_axes=(0,), flip_p=1.0, brightness_p=0.0, noise_p=0.0, gamma_p=0.0)
    flipped = global_pool(np.ascontiguousarray(np.flip(static.padded, axis=1)))
    np.testing.assert_array_equal(volume(flip_only), flipped)
    noisy = volume(AugmentConfig(flip_axes=(0,), flip_p=1.0, brightness_p=0.0, noise_p=1.0, gamma_p=0.0,
                                 noise_sigma=0.15))
    # Mean pooling of 8 noise voxels of sigma 0.15 leaves sigma 0.053 on the global volume.
    assert float(np.std(noisy - flipped)) == pytest.approx(0.15 / math.sqrt(8), rel=0.1)


# ------------------------------------------------------------------------------------ runs


def test_resume_reproduces_an_uninterrupted_run(tmp_path: Path) -> None:
    write_ellipsoids(tmp_path / "data", range(4))
    common = {"val_split": "1", "steps": 4, "sampling": "border"}
    fit(tiny_config(tmp_path / "data", tmp_path / "straight", **common))
    fit(tiny_config(tmp_path / "data", tmp_path / "split", stop_after=2, **common))
    first = [json.loads(line) for line in (tmp_path / "split" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in first if r["kind"] == "train"] == [1, 2]
    fit(tiny_config(tmp_path / "data", tmp_path / "split", resume=True, **common))
    # The optimiser state of the earlier last.pt is gone once the new one names its own.
    assert [p.name for p in (tmp_path / "split").glob("state-*.pt")] == ["state-00000004.pt"]

    straight = torch.load(tmp_path / "straight" / "last.pt", weights_only=False)
    resumed = torch.load(tmp_path / "split" / "last.pt", weights_only=False)
    a, b = _state(straight), _state(resumed)
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=1e-6, msg=key)
    records = [[r for r in map(json.loads, (tmp_path / run / "metrics.jsonl").read_text().splitlines())
                if r["kind"] == "train"] for run in ("straight", "split")]
    losses = [[r["loss"] for r in run] for run in records]
    assert len(losses[0]) == 4
    np.testing.assert_allclose(losses[0], losses[1], rtol=0, atol=1e-6)
    # The resumed session continues the same LR schedule and ends at its annealed rate.
    rates = [[r["lr"] for r in run] for run in records]
    assert rates[0] == rates[1]
    assert rates[0][-1] == pytest.approx(0.01 * TrainConfig.lr, rel=1e-12)
    assert rates[0][0] == pytest.approx(TrainConfig.lr, rel=1e-12)
    assert all(r["grad_norm"] > 0 for run in records for r in run)


def _state(ckpt: object) -> dict[str, torch.Tensor]:
    state = ckpt["state_dict"] if isinstance(ckpt, dict) else ckpt.state_dict  # type: ignore[index,attr-defined]
    return {k: v.float() for k, v in state.items()}


def test_run_folder_is_not_overwritten_by_accident(tmp_path: Path) -> None:
    write_ellipsoids(tmp_path / "data", range(2))
    fit(tiny_config(tmp_path / "data", tmp_path / "run", steps=1))
    with pytest.raises(OutputExistsError, match="--resume"):
        fit(tiny_config(tmp_path / "data", tmp_path / "run", steps=1))
    with pytest.raises(InputError, match="settings differ"):
        fit(tiny_config(tmp_path / "data", tmp_path / "run", steps=1, lr=1e-3, resume=True))


def test_bad_settings_are_refused_before_reading_data(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="--sampling"):
        fit(tiny_config(tmp_path / "missing", tmp_path / "run", sampling="random"))
    with pytest.raises(InputError, match="--val-split"):
        fit(tiny_config(tmp_path / "missing", tmp_path / "run", val_split="reference"))


def test_a_bad_preprocessing_override_is_refused_naming_the_setting(tmp_path: Path) -> None:
    # PreprocessConfig raises the InputError itself; training no longer re-wraps it.
    config = tiny_config(tmp_path / "data", tmp_path / "run",
                         preprocess_overrides=(*TINY_PREPROCESS, ("patch_size", 6)))
    with pytest.raises(InputError, match=r"^invalid preprocessing setting PreprocessConfig\.patch_size "
                       r"\(expected a positive odd int; found 6\)\. Fix: "):
        _preprocess_config(config)


def test_settings_left_out_of_to_dict_at_their_defaults_can_still_be_overridden(tmp_path: Path) -> None:
    # to_dict() omits bias correction at "none" and the tissue fraction under "threshold" (older
    # runtimes); the documented CPU command overrides bias_correction on the demo preset.
    config = tiny_config(tmp_path / "data", tmp_path / "run", preset="demo", preprocess_overrides=(
        ("bias_correction", "log_field"), ("bias_iterations", 2)))
    preprocess = _preprocess_config(config)
    assert (preprocess.bias_correction, preprocess.bias_iterations) == ("log_field", 2)
    config = tiny_config(tmp_path / "data", tmp_path / "run", preprocess_overrides=(
        *TINY_PREPROCESS, ("foreground", "tissue"), ("foreground_fraction", 0.3)))
    preprocess = _preprocess_config(config)
    assert (preprocess.foreground, preprocess.foreground_fraction) == ("tissue", 0.3)
    with pytest.raises(InputError, match="unknown preprocessing setting 'bias_corection'"):
        _preprocess_config(tiny_config(tmp_path / "data", tmp_path / "run",
                                       preprocess_overrides=(("bias_corection", "log_field"),)))


def test_memory_plan_picks_the_batch_from_the_budget(tmp_path: Path) -> None:
    config = tiny_config(tmp_path / "data", tmp_path / "run", batch=0, points=4096, max_batch=64)
    preprocess = _preprocess_config(config)
    model = build_model(_model_config(config, preprocess))
    sample = _sample_config(config, model.config, preprocess, config.points)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    roomy = plan_batch(dataclasses.replace(config, memory_budget_gb=64.0), model, sample, preprocess,
                       torch.device("cpu"), None, n_cases=2)
    assert roomy.batch == 64 and roomy.points == 4096 and roomy.source == "probe"
    assert roomy.per_unit_bytes > 4 * 343, "a query holds at least its float32 patch"
    for key, value in model.state_dict().items():  # the probe ran on a copy
        torch.testing.assert_close(value, before[key], rtol=0, atol=0)

    per_sample = roomy.per_volume_bytes + 4096 * roomy.per_unit_bytes
    budget = roomy.fixed_bytes + 3.5 * per_sample
    three = plan_batch(dataclasses.replace(config, memory_budget_gb=budget / 2**30), model, sample, preprocess,
                       torch.device("cpu"), None, n_cases=2)
    # The fixed part includes the process's resident set, which may move a little between calls.
    assert three.batch == int((three.budget_bytes - three.fixed_bytes) // per_sample)
    assert three.batch in (2, 3, 4)
    assert three.estimated_peak_bytes <= three.budget_bytes

    tight = roomy.fixed_bytes + roomy.per_volume_bytes + 2500 * roomy.per_unit_bytes
    fewer = plan_batch(dataclasses.replace(config, memory_budget_gb=tight / 2**30), model, sample, preprocess,
                       torch.device("cpu"), None, n_cases=2)
    assert fewer.batch == 1 and fewer.points in (1024, 2048)
    with pytest.raises(InputError, match="cannot hold one training volume"):
        plan_batch(dataclasses.replace(config, memory_budget_gb=0.01), model, sample, preprocess,
                   torch.device("cpu"), None, n_cases=2)


@pytest.mark.slow
def test_tiny_task_reaches_dice_090_on_unseen_volumes(tmp_path: Path) -> None:
    write_ellipsoids(tmp_path / "train", range(0, 12))
    write_ellipsoids(tmp_path / "val", range(100, 103))
    # The default recipe (cosine schedule, clipped gradients) at a higher rate: 130 steps only.
    result = fit(tiny_config(tmp_path / "train", tmp_path / "run", val_data=str(tmp_path / "val"), steps=130,
                             points=256, batch=2, lr=3e-3, sampling="border",
                             val_mode="reference", checkpoint_every=1000))
    assert result.last_validation is not None
    scores = [s.dice for s in result.last_validation.subjects]
    assert len(scores) == 3
    assert min(scores) >= 0.9, scores


@pytest.mark.parametrize("arch", ["unet3d", "unet2d"])
def test_unet_baselines_train_and_validate_through_the_same_loop(tmp_path: Path, arch: str) -> None:
    write_ellipsoids(tmp_path / "data", range(3))
    result = fit(tiny_config(tmp_path / "data", tmp_path / "run", arch=arch, model_overrides=(),
                             unet_channels=(4, 8, 16), crop=(16, 16, 16), slices=4, steps=2, val_split="1",
                             val_every=1))
    assert result.steps == 2
    assert result.last_validation is not None and len(result.last_validation.subjects) == 1
    subject = result.last_validation.subjects[0]
    assert 0.0 <= subject.dice <= 1.0 and subject.queries == GRID**3
    saved = torch.load(tmp_path / "run" / "last.pt", weights_only=True)
    assert saved["model_config"]["architecture"] == arch
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["kind"] for r in records] == ["train", "val", "train", "val"]
    expected_units = 16**3 if arch == "unet3d" else 4 * GRID * GRID
    assert records[0]["units"] == expected_units


def test_freeze_bn_keeps_running_statistics_and_trains_weights(tmp_path: Path) -> None:
    """With --freeze-bn-after 0 every step normalises with (and keeps) the running statistics."""
    write_ellipsoids(tmp_path / "data", range(0, 3))
    result = fit(tiny_config(tmp_path / "data", tmp_path / "run", steps=3, freeze_bn_after=0.0))
    assert result.steps == 3
    trained = torch.load(tmp_path / "run" / "last.pt", weights_only=True)["state_dict"]
    fresh = build_model(trained_config(tmp_path / "run" / "last.pt")).state_dict()
    stats = [k for k in trained if k.endswith(("running_mean", "running_var"))]
    assert stats
    for key in stats:
        assert torch.equal(trained[key], fresh[key]), key
    weights = [k for k in trained if k.endswith("fc1.weight")]
    assert any(not torch.equal(trained[k], fresh[k]) for k in weights)


def test_fit_clips_to_a_multiple_of_the_running_mean_norm_and_logs_it(tmp_path: Path) -> None:
    """metrics.jsonl's grad_norm (before clipping) and grad_limit follow GradientClipper's rule step by step."""
    write_ellipsoids(tmp_path / "data", range(2))
    fit(tiny_config(tmp_path / "data", tmp_path / "run", steps=6, grad_clip=0.8))
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    mean = None
    for record in records:
        limit = 0.8 * mean if mean is not None else None
        assert record["grad_limit"] == (pytest.approx(limit, rel=1e-9) if limit else None)
        used = min(record["grad_norm"], limit) if limit else record["grad_norm"]
        mean = used if mean is None else 0.9 * mean + 0.1 * used
    assert any(r["grad_limit"] and r["grad_norm"] > r["grad_limit"] for r in records), "some step was clipped"


def test_the_default_recipe_has_no_mid_run_switch(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """By default BatchNorm never switches to its running statistics and the optimiser never restarts."""
    assert TrainConfig.freeze_bn_after == 1.0 and TrainConfig.grad_clip > 0
    from ossnet_train import train as train_module
    from ossnet_train.optim import Lookahead

    calls: list[str] = []
    monkeypatch.setattr(train_module, "freeze_normalisation", lambda model: calls.append("freeze"))
    monkeypatch.setattr(Lookahead, "reset_moments", lambda self: calls.append("reset"))
    write_ellipsoids(tmp_path / "data", range(2))
    fit(tiny_config(tmp_path / "data", tmp_path / "run", steps=4))
    assert calls == []
    # Nor does the demo model's training script (which once froze at 35 %).
    script = (Path(__file__).resolve().parents[2] / "scripts" / "train_demo_gpu.sh").read_text()
    assert '--freeze-bn-after "${FREEZE_BN_AFTER:-1}"' in script


def test_a_freeze_waits_for_the_first_lr_drop_and_restarts_the_moments(tmp_path: Path,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    write_ellipsoids(tmp_path / "data", range(2))
    with pytest.raises(InputError, match="first LR drop"):  # cosine: half way
        fit(tiny_config(tmp_path / "data", tmp_path / "early", steps=10, freeze_bn_after=0.35))
    with pytest.raises(InputError, match="first LR drop"):  # step: the first milestone
        fit(tiny_config(tmp_path / "data", tmp_path / "early", steps=10, lr_schedule="step", freeze_bn_after=0.3))
    from ossnet_train.optim import Lookahead

    resets: list[int] = []
    original = Lookahead.reset_moments

    def reset(self: Lookahead) -> None:
        resets.append(self.step_count)
        original(self)

    monkeypatch.setattr(Lookahead, "reset_moments", reset)
    fit(tiny_config(tmp_path / "data", tmp_path / "run", steps=4, lr_schedule="step", lr_milestones=(0.5,),
                    freeze_bn_after=0.5))
    assert resets == [2]  # once, before step 3 (0-based step 2, the first milestone)


def test_init_from_then_lookahead_sync_keeps_the_loaded_weights(tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """After --init-from and Lookahead's first sync (step 5), the weights are those of a run whose model was
    built holding the checkpoint's weights: the slow weights start from the loaded ones, not the random init."""
    write_ellipsoids(tmp_path / "data", range(2))
    fit(tiny_config(tmp_path / "data", tmp_path / "first", steps=2, seed=1))
    source = checkpoint.load_checkpoint(tmp_path / "first" / "last.pt").state_dict
    fit(tiny_config(tmp_path / "data", tmp_path / "loaded", steps=6, init_from=str(tmp_path / "first" / "last.pt")))

    from ossnet_train import train as train_module

    def built_with_the_weights(config: object) -> torch.nn.Module:
        model = build_model(config)  # the same random draws as the run above, then the weights
        model.load_state_dict(source)
        return model

    monkeypatch.setattr(train_module, "build_model", built_with_the_weights)
    fit(tiny_config(tmp_path / "data", tmp_path / "built", steps=6))
    loaded = checkpoint.load_checkpoint(tmp_path / "loaded" / "last.pt").state_dict
    built = checkpoint.load_checkpoint(tmp_path / "built" / "last.pt").state_dict
    for key in built:
        torch.testing.assert_close(loaded[key].float(), built[key].float(), rtol=0, atol=1e-6, msg=key)


def trained_config(path: Path) -> object:
    from ossnet_train.checkpoint import load_checkpoint

    return load_checkpoint(path).config()


def test_init_from_starts_with_the_checkpoint_weights(tmp_path: Path) -> None:
    write_ellipsoids(tmp_path / "data", range(2))
    fit(tiny_config(tmp_path / "data", tmp_path / "first", steps=2))
    first = checkpoint.load_checkpoint(tmp_path / "first" / "last.pt").state_dict
    # A run takes at least one step, so take one with a negligible learning rate: every weight must
    # still be the first run's (a fresh initialisation differs by far more than the tolerance).
    fit(tiny_config(tmp_path / "data", tmp_path / "second", steps=1, lr=1e-12, pau_lr=1e-12,
                    init_from=str(tmp_path / "first" / "last.pt")))
    second = checkpoint.load_checkpoint(tmp_path / "second" / "last.pt").state_dict
    weights = [k for k in first if not k.endswith(("running_mean", "running_var", "num_batches_tracked"))]
    assert weights
    for key in weights:
        torch.testing.assert_close(second[key], first[key], rtol=0, atol=1e-6, msg=key)


def test_init_from_refuses_another_model_config(tmp_path: Path) -> None:
    write_ellipsoids(tmp_path / "data", range(2))
    fit(tiny_config(tmp_path / "data", tmp_path / "first", steps=1))
    other = (*((k, v) for k, v in TINY_MODEL if k != "decoder_width"), ("decoder_width", 16))
    with pytest.raises(ModelFormatError, match="decoder_width"):
        fit(tiny_config(tmp_path / "data", tmp_path / "second", steps=1, model_overrides=other,
                        init_from=str(tmp_path / "first" / "last.pt")))


@pytest.mark.parametrize(("arch", "variant", "large"), [
    ("ossnet", "b", True), ("ossnet", " D ", True), ("ossnet", "c", False), ("ossnet", "O-Net", False),
    ("ossnet", "e", False), ("unet3d", "d", False),
])
def test_large_patches_follow_the_variant(tmp_path: Path, arch: str, variant: str, large: bool) -> None:
    # The run's preprocessing and its samples add the pooled 14^3 patch exactly for B and D; an
    # unknown variant is left to _model_config, which refuses it naming the variant.
    config = tiny_config(tmp_path / "data", tmp_path / "run", arch=arch, variant=variant)
    preprocess = _preprocess_config(config)
    assert preprocess.large_patches is large
    if arch == "ossnet" and variant != "e":
        assert _sample_config(config, _model_config(config, preprocess), preprocess, 64).large_patches is large
    elif arch == "ossnet":
        with pytest.raises(InputError, match="unknown OSS-Net variant 'e'"):
            _model_config(config, preprocess)


def test_augment_overrides_reach_the_samples_and_are_checked(tmp_path: Path) -> None:
    config = tiny_config(tmp_path / "data", tmp_path / "run", augment_overrides=(("brightness", 0),
                                                                                 ("noise_p", 1.0)))
    preprocess = _preprocess_config(config)
    sample = _sample_config(config, _model_config(config, preprocess), preprocess, 64)
    assert sample.augment == AugmentConfig(flip_axes=tuple(preprocess.flip_axes), brightness=0.0, noise_p=1.0)
    for bad in ((("brightnes", 0.1),), (("noise_p", 2.0),), (("flip_axes", [3]),), (("noise_sigma", "x"),)):
        with pytest.raises(InputError, match="--augment-override"):
            fit(tiny_config(tmp_path / "data", tmp_path / "bad", augment_overrides=bad))
