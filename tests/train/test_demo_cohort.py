"""The demo cohort: geometry, label plausibility, alignment, determinism, files and notice.

Generating one subject takes about 2 s on one core; this module generates six (three of them
with an acquisition: another field of view, spacing, background and storage).
"""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from ossnet_deploy.errors import DependencyError, InputError, OutputExistsError
from ossnet_deploy.geometry import labels_to_grid
from ossnet_deploy.morphology import max_filter
from ossnet_deploy.preprocess import prepare_volume, preprocess_preset
from ossnet_train import demo_cohort
from ossnet_train.acquisition import Acquisition, draw_acquisition
from ossnet_train.datasets import make_dataset
from ossnet_train.demo_cohort import (
    GENERATOR_VERSION,
    MNI_NOTICE,
    DemoSubject,
    load_template,
    make_demo_cohort,
    make_demo_subject,
    template_dir,
    write_subject,
)

try:
    template_dir()
except DependencyError as exc:  # pragma: no cover - depends on the environment
    pytest.skip(f"nilearn's MNI template files are not installed ({exc})", allow_module_level=True)

SEED = 5


@pytest.fixture(scope="module")
def cohort(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("demo") / "cohort"
    calls: list[tuple[int, int]] = []
    assert make_demo_cohort(out, 1, SEED, progress=lambda done, total: calls.append((done, total))) == ["demo_0005"]
    assert calls == [(1, 1)]
    return out


@pytest.fixture(scope="module")
def subject() -> DemoSubject:
    return make_demo_subject(SEED)


def _contrast(image: np.ndarray, label: np.ndarray) -> float:
    """Mean intensity inside the label over the mean in the one-voxel shell around it."""
    shell = max_filter(label, 3) & ~label
    return float(image[label].mean() / image[shell].mean())


def test_files_grid_and_storage(cohort: Path) -> None:
    tpl = load_template()
    image = nib.load(cohort / "imagesTr" / "demo_0005_0000.nii.gz")
    label = nib.load(cohort / "labelsTr" / "demo_0005.nii.gz")
    for img in (image, label):
        assert img.shape == tpl.t1.shape == (197, 233, 189)
        np.testing.assert_array_equal(img.affine, tpl.affine)
    assert image.get_data_dtype() == np.int16 and image.dataobj.slope > 0
    assert label.get_data_dtype() == np.uint8
    assert set(np.unique(np.asanyarray(label.dataobj)).tolist()) == {0, 1}


def test_dataset_json_and_notice(cohort: Path) -> None:
    meta = json.loads((cohort / "dataset.json").read_text(encoding="utf-8"))
    assert meta["generator"]["version"] == GENERATOR_VERSION
    assert meta["generator"]["parameters"]["ffd_spacing_mm"] == 24.0
    assert [(s["case"], s["seed"]) for s in meta["subjects"]] == [("demo_0005", SEED)]
    assert meta["numTraining"] == 1 and meta["labels"] == {"background": 0, "white_matter": 1}
    notice = (cohort / "MNI_NOTICE.txt").read_text(encoding="utf-8")
    assert MNI_NOTICE in notice
    assert "Copyright (C) 1993-2009 Louis Collins, McConnell Brain Imaging Centre" in notice


def test_file_holds_exactly_the_generated_subject(cohort: Path, subject: DemoSubject) -> None:
    image = nib.load(cohort / "imagesTr" / "demo_0005_0000.nii.gz").get_fdata(dtype=np.float32)
    label = np.asanyarray(nib.load(cohort / "labelsTr" / "demo_0005.nii.gz").dataobj)
    np.testing.assert_array_equal(image, subject.image)
    np.testing.assert_array_equal(label, subject.label)
    case = make_dataset("demo", cohort)[0]
    assert case.case_id == "demo_0005" and case.data.shape == (1, 197, 233, 189)
    np.testing.assert_array_equal(case.label, subject.label)


def test_label_fraction_follows_the_drawn_scaling(subject: DemoSubject) -> None:
    # Measured: the template's WM (p > 0.5) is 7.3 % of the grid; a subject's fraction is that
    # times its volume change prod(scale) (within 4 % over seeds 0-6), so 5-10 % overall.
    template_fraction = float((load_template().wm > 127.5).mean())
    fraction = float(subject.label.mean())
    assert 0.05 < fraction < 0.10
    expected = template_fraction * float(np.prod(subject.drawn["scale"]))
    assert abs(fraction / expected - 1.0) < 0.06


def test_image_and_label_are_aligned(subject: DemoSubject) -> None:
    label = subject.label.astype(bool)
    image = subject.image
    assert image[label].mean() > 2.0 * image[~label].mean()  # white matter is bright on T1
    aligned = _contrast(image, label)
    assert aligned > 1.1
    # Any one-voxel misalignment lowers the WM/shell contrast.
    for axis in range(3):
        for shift in (-1, 1):
            assert _contrast(image, np.roll(label, shift, axis=axis)) < aligned


def test_subject_is_moved_relative_to_the_template(subject: DemoSubject) -> None:
    template = load_template().wm > 127.5
    label = subject.label.astype(bool)
    dice = 2.0 * (label & template).sum() / (label.sum() + template.sum())
    assert 0.3 < dice < 0.9  # same anatomy, clearly displaced


def test_same_seed_same_bytes_other_seed_differs(cohort: Path, subject: DemoSubject, tmp_path: Path) -> None:
    # ``subject`` is a second, independent generation with the cohort's seed.
    for written in write_subject(subject, tmp_path):
        assert written.read_bytes() == (cohort / written.relative_to(tmp_path)).read_bytes(), written.name
    other = make_demo_subject(SEED + 1)
    assert other.drawn != subject.drawn
    assert not np.array_equal(other.label, subject.label)
    assert np.abs(other.image - subject.image).mean() > 0.01


def test_parallel_jobs_write_the_same_cohort(cohort: Path, tmp_path: Path) -> None:
    # Seeds SEED and SEED + 1 in two processes: the same files as one process writes, and a
    # dataset.json that lists the subjects in seed order.
    calls: list[tuple[int, int]] = []
    out = tmp_path / "parallel"
    assert make_demo_cohort(out, 2, SEED, jobs=2, progress=lambda done, total: calls.append((done, total))) == [
        "demo_0005", "demo_0006"]
    assert calls == [(1, 2), (2, 2)]
    for name in ("imagesTr/demo_0005_0000.nii.gz", "labelsTr/demo_0005.nii.gz"):
        assert (out / name).read_bytes() == (cohort / name).read_bytes(), name
    meta = json.loads((out / "dataset.json").read_text())
    assert [s["seed"] for s in meta["subjects"]] == [SEED, SEED + 1]
    with pytest.raises(InputError, match="invalid number of jobs"):
        make_demo_cohort(tmp_path / "bad", 1, SEED, jobs=0)


def test_existing_outputs_are_refused_without_overwrite(cohort: Path) -> None:
    before = (cohort / "dataset.json").read_bytes()
    with pytest.raises(OutputExistsError, match=r"demo output already exists.*overwrite"):
        make_demo_cohort(cohort, 3, SEED)
    assert (cohort / "dataset.json").read_bytes() == before
    assert not (cohort / "imagesTr" / "demo_0006_0000.nii.gz").exists()


def test_missing_template_files_raise_dependency_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(demo_cohort.TEMPLATE_FILES, "t1", "no_such_template.nii.gz")
    with pytest.raises(DependencyError, match=r"no_such_template.*pip install --no-deps nilearn"):
        template_dir()
    monkeypatch.setattr(demo_cohort.importlib.util, "find_spec", lambda name, *args: None)
    with pytest.raises(DependencyError, match=r"not installed.*pip install --no-deps nilearn"):
        template_dir()


def test_bspline_taps_partition_unity_and_field_rms() -> None:
    first, weights, n_ctrl = demo_cohort._bspline_taps(197, 24.0)
    np.testing.assert_allclose(weights.sum(axis=0), 1.0, atol=1e-12)
    assert first.min() == 0 and first.max() + 3 == n_ctrl - 1
    # The coefficient scaling makes the field's rms per component the requested one (2 mm):
    # over 20 random fields on a 73 x 80 x 70 grid it lands within 10 %.
    mean_square = np.mean([
        (demo_cohort._Spline.random(np.random.default_rng(s), (73, 80, 70), (24.0, 24.0, 24.0), 2.0, 3)
         .slab(slice(None)) ** 2).mean()
        for s in range(20)
    ])
    assert abs(np.sqrt(mean_square) - 2.0) < 0.2


# ------------------------------------------------------------------------ acquisition variety


def _assert_same_anatomy(acquired: DemoSubject, subject: DemoSubject) -> None:
    """Every voxel of ``acquired`` holds the label of the template-grid voxel nearest to its world
    position in the version-1 ``subject`` of the same seed (same warp), and 0 outside that grid."""
    shape = acquired.label.shape
    ijk = np.stack(np.meshgrid(*(np.arange(n) for n in shape), indexing="ij"), axis=-1).reshape(-1, 3)
    world = ijk @ acquired.affine[:3, :3].T + acquired.affine[:3, 3]
    src = world @ np.linalg.inv(subject.affine[:3, :3]).T - np.linalg.inv(subject.affine[:3, :3]) @ subject.affine[:3, 3]
    src = np.floor(src + 0.5 + 1e-6).astype(np.int64)  # ties (1.5 mm) go to the higher index
    inside = np.all((src >= 0) & (src < np.array(subject.label.shape)), axis=1)
    expected = np.zeros(len(src), dtype=np.uint8)
    expected[inside] = subject.label[tuple(src[inside].T)]
    np.testing.assert_array_equal(acquired.label.reshape(-1), expected)
    assert acquired.label.sum() > 0


ZERO_CROP_15 = Acquisition(
    background="zero", mask_dilation_vox=2, fov="crop", crop_margin_mm=(3.0, 0.0, 9.0, 15.0, 6.0, 1.0),
    zero_pad_mm=(0.0, 4.0, 0.0, 10.0, 0.0, 2.0), spacing_mm=(1.5, 1.5, 1.5), storage="uint8", gamma=1.3,
    contrast_knots=(0.3, 0.7), bias_log_rms=0.05, noise_fraction=0.02,
)


def test_zero_background_crop_at_1_5_mm_in_uint8(subject: DemoSubject, tmp_path: Path) -> None:
    acquired = make_demo_subject(SEED, acquisition=ZERO_CROP_15)
    _assert_same_anatomy(acquired, subject)
    np.testing.assert_allclose(np.sqrt((acquired.affine[:3, :3] ** 2).sum(axis=0)), 1.5)
    image, label = acquired.image, acquired.label.astype(bool)
    assert acquired.dtype == "uint8" and image.max() == 255.0 and np.array_equal(image, np.rint(image))
    assert np.all(image[label] > 0)
    assert np.all(image[-7:] == 0) and np.all(image[:, :3] == 0)  # the zero padding (10 mm, 4 mm)
    assert 0.3 < float((image == 0).mean()) < 0.8  # zero background outside the brain
    # Image and label stay aligned at the new spacing.
    aligned = _contrast(image, label)
    for axis in range(3):
        for shift in (-1, 1):
            assert _contrast(image, np.roll(label, shift, axis=axis)) < aligned
    # Written and read back as the training data reader sees it; the demo preprocessing places it.
    write_subject(acquired, tmp_path)
    stored = nib.load(tmp_path / "imagesTr" / "demo_0005_0000.nii.gz")
    assert stored.get_data_dtype() == np.uint8
    case = make_dataset("demo", tmp_path)[0]
    np.testing.assert_array_equal(case.data[0], image)
    np.testing.assert_array_equal(case.label, acquired.label)
    np.testing.assert_allclose(case.affine, acquired.affine, atol=1e-6)
    prepared = prepare_volume(case.data, case.affine, preprocess_preset("demo"))
    grid_label = labels_to_grid(case.label, prepared.placement)
    assert grid_label.sum() == pytest.approx(label.sum() * 1.5**3, rel=0.1)


def test_rician_full_view_thick_slices_in_float32(subject: DemoSubject) -> None:
    acq = Acquisition(background="noise", fov="full", placement=(0.1, 0.9, 0.5), max_placement_mm=20.0,
                      spacing_mm=(1.0, 3.0, 1.0), storage="float32", gain=0.01, gamma=0.7, bias_log_rms=0.3,
                      noise_fraction=0.05)
    acquired = make_demo_subject(SEED, acquisition=acq)
    _assert_same_anatomy(acquired, subject)
    assert acquired.image.shape == (197, 78, 189) and acquired.dtype == "float32"
    assert not np.array_equal(acquired.affine[:3, 3], subject.affine[:3, 3])  # placed, not the template's FOV
    assert float(acquired.image.min()) > 0.0  # Rician noise over the whole field of view
    assert 0.001 < float(acquired.image.max()) < 0.05  # gain 0.01 on a full scale of about 1
    assert acquired.drawn["acquisition"]["storage"] == "float32"


def test_variety_cohort_records_each_acquisition(subject: DemoSubject, tmp_path: Path) -> None:
    with pytest.raises(InputError, match="unknown demo variety"):
        make_demo_cohort(tmp_path / "bad", 1, SEED, variety="scanner")
    out = tmp_path / "variety"
    assert make_demo_cohort(out, 1, SEED, variety="acquisition") == ["demo_0005"]
    meta = json.loads((out / "dataset.json").read_text(encoding="utf-8"))
    assert meta["generator"]["variety"] == "acquisition" and meta["generator"]["acquisition_version"] >= 1
    record = meta["subjects"][0]
    drawn = draw_acquisition(SEED).to_dict()
    assert {k: record["drawn"]["acquisition"][k] for k in drawn} == drawn
    img = nib.load(out / "imagesTr" / "demo_0005_0000.nii.gz")
    assert list(img.shape) == record["shape"] and img.get_data_dtype() == np.dtype(record["image_dtype"])
    np.testing.assert_allclose(img.header.get_zooms(), record["spacing_mm"], atol=1e-6)
    case = make_dataset("demo", out)[0]
    acquired = DemoSubject("demo_0005", SEED, case.data[0], case.label, case.affine, 1.0, {})
    _assert_same_anatomy(acquired, subject)
