"""Input and output checks against the model's training domain (docs/design.md#input-and-output-checks).

The domain here is measured on the bundled sample itself (one case, so the margins alone decide):
the sample stored differently (zero background, cropped to the brain) must pass, and the foreign
inputs the issue names must each be flagged: inverted contrast, a T2-like contrast, a CT (air at
-1000 HU around a brain of 20-40 HU) and pure Rician noise. Then the whole path through
``Segmenter`` and ``ossnet-segment --fail-on-warning`` on a synthetic threshold model.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from click.testing import CliRunner
from synthetic_models import two_level_phantom, write_threshold_pair

from ossnet_deploy import Segmenter
from ossnet_deploy.cli import main
from ossnet_deploy.domain import DomainWarning, InputProfile, ModelDomain, check_input, check_output
from ossnet_deploy.geometry import foreground_bbox, labels_to_grid, tissue_mask
from ossnet_deploy.preprocess import prepare_volume, preprocess_preset

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


@pytest.fixture(scope="module")
def sample() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    image = nib.load(EXAMPLES / "demo_3004_t1.nii.gz")
    label = np.asarray(nib.load(EXAMPLES / "demo_3004_wm.nii.gz").dataobj)
    return np.asarray(image.dataobj, dtype=np.float32), np.asarray(image.affine), label


def _profile(image: np.ndarray, affine: np.ndarray) -> InputProfile:
    prepared = prepare_volume(image[None].astype(np.float32), affine, preprocess_preset("demo"), fit="downsample")
    assert prepared.profile is not None
    return prepared.profile


@pytest.fixture(scope="module")
def domain(sample: tuple[np.ndarray, np.ndarray, np.ndarray]) -> ModelDomain:
    image, affine, label = sample
    prepared = prepare_volume(image[None], affine, preprocess_preset("demo"))
    assert prepared.profile is not None
    labelled = np.count_nonzero(labels_to_grid(label, prepared.placement)[prepared.region])
    return ModelDomain.from_cases(("t1",), [prepared.profile], [labelled / prepared.profile.foreground_voxels])


def _foreign(image: np.ndarray) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    brain = tissue_mask(image[None], 0.2)
    return {
        "inverted": np.where(brain, image.max() - image, 0),
        # T2-like: CSF brightest, grey matter mid, white matter darkest.
        "t2_like": np.where(brain, np.interp(image, [0, 0.3, 0.6, 0.95, 1.4], [0, 1.0, 0.55, 0.35, 0.3]), 0),
        "ct": np.where(brain, 30 + 8 * (image > 0.8) + rng.normal(0, 5, image.shape), -1000),
        "noise": np.abs(rng.normal(0, 0.05, image.shape) + 1j * rng.normal(0, 0.05, image.shape)),
    }


def test_the_sample_stored_differently_is_inside_the_domain(sample, domain) -> None:
    image, affine, _ = sample
    assert check_input(_profile(image, affine), domain) == []
    brain = tissue_mask(image[None], 0.2)
    assert check_input(_profile(np.where(brain, image, 0), affine), domain) == []
    lo, hi = foreground_bbox(brain)
    crop = tuple(slice(max(a - 5, 0), b + 5) for a, b in zip(lo, hi, strict=True))
    shifted = affine.copy()
    shifted[:3, 3] += affine[:3, :3] @ np.array([s.start for s in crop])
    assert check_input(_profile(np.ascontiguousarray(image[crop]), shifted), domain) == []


@pytest.mark.parametrize("kind", ["inverted", "t2_like", "ct", "noise"])
def test_foreign_inputs_are_flagged(sample, domain, kind: str) -> None:
    image, affine, _ = sample
    findings = check_input(_profile(_foreign(image)[kind].astype(np.float32), affine), domain)
    assert findings, f"{kind} passed the input check"


def test_output_checks(domain: ModelDomain) -> None:
    profile = InputProfile(((0.0,) * 5,), (0.0,), 0.0, foreground_voxels=1000, input_voxels=5000)
    assert "empty" in check_output(0, profile, None)[0]
    assert "empty" in check_output(0, profile, domain)[0]
    lo, hi = domain.label_fraction
    assert check_output(int(1000 * (lo + hi) / 2), profile, domain) == []
    assert "covers" in check_output(int(1000 * min(1.0, hi * 2.5)), profile, domain)[0]
    assert check_output(1, profile, domain) != []
    with_empty_cases = ModelDomain.from_dict({**domain.to_dict(), "label_fraction": [0.0, hi]})
    assert check_output(0, profile, with_empty_cases) == []  # empty is plausible for such a model


def test_domain_round_trips_and_refuses_malformed(domain: ModelDomain) -> None:
    assert ModelDomain.from_dict(domain.to_dict()) == domain
    with pytest.raises(ValueError, match="quantiles"):
        ModelDomain.from_dict({**domain.to_dict(), "quantiles": [1, 2]})
    with pytest.raises(ValueError, match="malformed"):
        ModelDomain.from_dict({k: v for k, v in domain.to_dict().items() if k != "rim_low"})


# ------------------------------------------------------------------ through Segmenter and the CLI

PREPROCESS = {"geometry": "fixed_spacing_pad", "shape": [32, 32, 24], "channels": ["t1"],
              "intensity": "zscore_foreground"}
AFFINE = np.diag([1.0, 1.0, 1.0, 1.0])


@pytest.fixture(scope="module")
def model_with_domain(tmp_path_factory: pytest.TempPathFactory) -> Path:
    phantom = two_level_phantom()
    prepared = prepare_volume(phantom[None], AFFINE, __import__("ossnet_deploy.preprocess").preprocess
                              .PreprocessConfig.from_dict(PREPROCESS))
    assert prepared.profile is not None
    labelled = np.count_nonzero(phantom > phantom[phantom > 0].mean())
    domain = ModelDomain.from_cases(("t1",), [prepared.profile], [labelled / prepared.profile.foreground_voxels])
    folder = tmp_path_factory.mktemp("domain_model")
    write_threshold_pair(folder, PREPROCESS, domain=domain.to_dict())
    return folder


def test_segmenter_warns_and_records_findings(model_with_domain: Path, tmp_path: Path) -> None:
    segmenter = Segmenter.from_dir(model_with_domain, device="cpu", threads=1)
    assert segmenter.pair.domain is not None
    phantom = two_level_phantom()
    with warnings.catch_warnings():
        warnings.simplefilter("error", DomainWarning)
        _, stats = segmenter.segment_with_stats((phantom, AFFINE))
    assert stats.warnings == ()
    inverted = np.where(phantom > 0, phantom.max() + 10 - phantom, 0).astype(np.float32)
    with pytest.warns(DomainWarning, match="in-memory image"):
        _, stats = segmenter.segment_with_stats((inverted, AFFINE))
    assert stats.warnings


def test_cli_fail_on_warning_writes_nothing(model_with_domain: Path, tmp_path: Path) -> None:
    phantom = two_level_phantom()
    inverted = np.where(phantom > 0, phantom.max() + 10 - phantom, 0).astype(np.float32)
    source = tmp_path / "inverted.nii.gz"
    nib.save(nib.Nifti1Image(inverted, AFFINE), source)
    out = tmp_path / "out.nii.gz"
    args = ["-i", str(source), "-o", str(out), "-m", str(model_with_domain), "-d", "cpu", "--threads", "1"]
    warned = CliRunner().invoke(main, args)
    assert warned.exit_code == 0 and out.is_file()
    assert "warning:" in warned.output
    out.unlink()
    failed = CliRunner().invoke(main, [*args, "--fail-on-warning"])
    assert failed.exit_code == 1 and not out.exists()
    assert "nothing was written" in failed.output
