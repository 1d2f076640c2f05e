"""Tests of the query scheduler with analytic numpy decoders (no model, no torch).

A decoder here is a vectorised signed-distance-like field: logit > 0 inside the shape, and the
logit's size grows with the distance to the surface, so near-threshold logits mean something.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest

from ossnet_deploy.errors import InputError, ModelFormatError
from ossnet_deploy.morphology import bounding_box, cell_any, cell_points, max_filter
from ossnet_deploy.scheduler import SchedulerConfig, SchedulerResult, run_scheduler

Field = Callable[[np.ndarray], np.ndarray]

BRATS_GRID = (256, 256, 160)
WHOLE = (slice(None), slice(None), slice(None))
SPHERE_CENTRE = (131.3, 120.7, 77.2)
SPHERE_RADIUS = 29.0
COARSE_LOGIT = 8.0  # what a confident aux head outputs: +8 where a cell holds foreground, -8 elsewhere


# ------------------------------------------------------------------------------------ fields


def sphere(centre: tuple[float, float, float], radius: float, scale: float = 1.0) -> Field:
    c = np.asarray(centre, dtype=np.float64)

    def field(p: np.ndarray) -> np.ndarray:
        return scale * (radius - np.sqrt(((p - c) ** 2).sum(axis=1)))

    return field


def box(centre: tuple[float, float, float], half: tuple[float, float, float]) -> Field:
    c, h = np.asarray(centre, dtype=np.float64), np.asarray(half, dtype=np.float64)

    def field(p: np.ndarray) -> np.ndarray:
        return (h - np.abs(p - c)).min(axis=1)

    return field


def shell(centre: tuple[float, float, float], radius: float, half_thickness: float, scale: float = 1.0) -> Field:
    c = np.asarray(centre, dtype=np.float64)

    def field(p: np.ndarray) -> np.ndarray:
        return scale * (half_thickness - np.abs(np.sqrt(((p - c) ** 2).sum(axis=1)) - radius))

    return field


def union(*fields: Field) -> Field:
    def field(p: np.ndarray) -> np.ndarray:
        return np.max([f(p) for f in fields], axis=0)

    return field


def waves(rng: np.random.Generator, count: int = 6) -> Field:
    """A smooth random field whose zero set has many components, saddles and thin parts."""
    freq = rng.normal(size=(count, 3)) * rng.uniform(0.15, 0.5)
    amp, phase, bias = rng.uniform(0.5, 1.5, count), rng.uniform(0, 2 * np.pi, count), rng.uniform(-1, 1.5)

    def field(p: np.ndarray) -> np.ndarray:
        return (amp * np.cos(p @ freq.T + phase)).sum(axis=1) - bias

    return field


class Recorder:
    """A ``decode`` callable over an analytic field that checks the scheduler's contract on every call."""

    def __init__(self, field: Field, grid: tuple[int, int, int], region: tuple[slice, slice, slice],
                 max_queries: int, record: bool = True) -> None:
        self.field = field
        self.record = record
        self.count = 0
        self.max_queries = max_queries
        self.lo = np.array([s.start or 0 for s in region])
        self.hi = np.array([g if s.stop is None else s.stop for s, g in zip(region, grid, strict=True)])
        self.calls: list[np.ndarray] = []

    def __call__(self, idx: np.ndarray) -> np.ndarray:
        assert idx.dtype == np.int64 and idx.ndim == 2 and idx.shape[1] == 3
        assert 1 <= idx.shape[0] <= self.max_queries
        assert (idx >= self.lo).all() and (idx < self.hi).all(), "a query left the region"
        self.count += len(idx)
        if self.record:
            self.calls.append(idx.copy())
        return self.field(idx.astype(np.float64)).astype(np.float32)

    @property
    def queries(self) -> np.ndarray:
        return np.concatenate(self.calls) if self.calls else np.zeros((0, 3), dtype=np.int64)

    def queried_mask(self, shape: tuple[int, ...]) -> np.ndarray:
        mask = np.zeros(shape, dtype=bool)
        q = self.queries - self.lo
        mask[q[:, 0], q[:, 1], q[:, 2]] = True
        return mask


def run(field: Field, grid: tuple[int, int, int], region: tuple[slice, slice, slice] = WHOLE,
        coarse: np.ndarray | None = None, record: bool = True,
        **config: object) -> tuple[SchedulerResult, Recorder]:
    # The exactness guarantee is stated for interpolation_margin 0; the margin's own tests below
    # pass it explicitly.
    config.setdefault("interpolation_margin", 0.0)
    cfg = SchedulerConfig(**config)  # type: ignore[arg-type]
    recorder = Recorder(field, grid, region, cfg.max_queries, record)
    result = run_scheduler(recorder, grid, region, cfg, coarse_logits=coarse)
    assert result.stats.total_queries == recorder.count == sum(s.queries for s in result.stats.stages)
    return result, recorder


def truth(field: Field, grid: tuple[int, int, int], region: tuple[slice, slice, slice] = WHOLE) -> np.ndarray:
    """The field's labels over the region, evaluated directly (small grids only)."""
    idx = np.indices(grid).reshape(3, -1).T.astype(np.float64)
    return (field(idx) > 0).reshape(grid)[region].astype(np.uint8)


def max_pooled_coarse(grid_labels: np.ndarray, coarse_shape: tuple[int, int, int]) -> np.ndarray:
    """A perfectly trained aux head: +8 where a coarse cell holds any foreground voxel, -8 elsewhere."""
    cells = [g // c for g, c in zip(grid_labels.shape, coarse_shape, strict=True)]
    pooled = grid_labels.reshape(coarse_shape[0], cells[0], coarse_shape[1], cells[1], coarse_shape[2], cells[2])
    return np.where(pooled.any(axis=(1, 3, 5)), COARSE_LOGIT, -COARSE_LOGIT).astype(np.float32)


def components_with_a_query(labels: np.ndarray, queried: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Foreground / background voxels whose 26-connected component holds a queried voxel."""
    out = []
    for mask in (labels.astype(bool), ~labels.astype(bool)):
        grown = queried & mask
        while True:
            nxt = max_filter(grown, 3) & mask
            if np.array_equal(nxt, grown):
                break
            grown = nxt
        out.append(grown)
    return out[0], out[1]


# ---------------------------------------------------------------------- the brats headline sphere


@pytest.fixture(scope="module")
def brats_sphere() -> tuple[Field, np.ndarray, np.ndarray]:
    """The sphere's field, its dense labels over the 256x256x160 grid, and a perfect 8x8x5 coarse head."""
    field = sphere(SPHERE_CENTRE, SPHERE_RADIUS)
    dense, _ = run(field, BRATS_GRID, record=False, mode="dense")
    assert dense.stats.total_queries == 256 * 256 * 160
    assert 100_000 < int(dense.labels.sum()) < 105_000  # 4/3 pi 29^3 = 102,160 voxels
    return field, dense.labels, max_pooled_coarse(dense.labels, (8, 8, 5))


def test_brats_sphere_adaptive_equals_dense_with_half_the_reference_queries(brats_sphere):
    field, dense, coarse = brats_sphere
    reference, _ = run(field, BRATS_GRID, coarse=coarse, mode="reference")
    adaptive, recorder = run(field, BRATS_GRID, coarse=coarse, mode="adaptive")
    assert np.array_equal(adaptive.labels, dense)
    assert adaptive.stats.total_queries <= 0.5 * reference.stats.total_queries
    assert len(np.unique(recorder.queries, axis=0)) == len(recorder.queries)  # never decodes a voxel twice


def test_brats_sphere_without_coarse_segmentation(brats_sphere):
    field, dense, _ = brats_sphere
    reference, _ = run(field, BRATS_GRID, mode="reference")
    adaptive, _ = run(field, BRATS_GRID, mode="adaptive")
    assert reference.stats.stages[0].queries == 64 * 64 * 40  # the "original" full stride-4 lattice
    assert np.array_equal(adaptive.labels, dense)
    assert adaptive.stats.total_queries <= 0.5 * reference.stats.total_queries


def test_reference_counts_its_repeated_queries_honestly(brats_sphere):
    field, _, coarse = brats_sphere
    reference, recorder = run(field, BRATS_GRID, coarse=coarse, mode="reference")
    repeats = len(recorder.queries) - len(np.unique(recorder.queries, axis=0))
    assert repeats > 0  # the paper re-queries stride-4 points it already found negative
    assert sum(s.repeated for s in reference.stats.stages) == repeats


# ----------------------------------------------------------------------------- adaptive = dense

SMALL_GRID = (64, 64, 48)
SMALL_REGION = (slice(3, 61), slice(0, 64), slice(5, 45))


def place_blobs(rng: np.random.Generator, stride: int, count: int,
                region: tuple[slice, slice, slice]) -> Field:
    """Non-touching spheres (radius >= stride) and boxes (side >= 2 * stride + 1) inside the region."""
    lo = np.array([s.start or 0 for s in region], dtype=np.float64)
    hi = np.array([g if s.stop is None else s.stop for s, g in zip(region, SMALL_GRID, strict=True)]) - 1.0
    fields: list[Field] = []
    placed: list[tuple[np.ndarray, float]] = []
    for attempt in range(2000):
        if len(fields) == count:
            break
        is_box = attempt % 2 == 1
        half = rng.uniform(stride, stride + 4, 3) if is_box else None
        extent = float(np.linalg.norm(half)) if half is not None else float(rng.uniform(stride, stride + 5))
        reach = half if half is not None else np.full(3, extent)
        if np.any(hi - lo - 2 * reach - 2 < 0):
            continue
        centre = rng.uniform(lo + reach + 1, hi - reach - 1)
        if any(np.linalg.norm(centre - c) < extent + e + 3 for c, e in placed):
            continue
        placed.append((centre, extent))
        fields.append(box(tuple(centre), tuple(half)) if half is not None else sphere(tuple(centre), extent))
    assert len(fields) == count, "test setup: blobs did not fit"
    return union(*fields)


@pytest.mark.parametrize("stride", [4, 8])
@pytest.mark.parametrize("coarse_kind", ["none", "perfect", "under-segmenting"])
@pytest.mark.parametrize("region", [WHOLE, SMALL_REGION], ids=["whole-grid", "sub-region"])
def test_blobs_twice_the_coarsest_stride_match_dense(stride, coarse_kind, region):
    rng = np.random.default_rng(100 * stride + len(coarse_kind) + (region is WHOLE))
    field = place_blobs(rng, stride, count=4 if stride == 4 else 3, region=region)
    grid_labels = truth(field, SMALL_GRID)
    coarse = None
    if coarse_kind == "perfect":
        coarse = max_pooled_coarse(grid_labels, (4, 4, 3))
    elif coarse_kind == "under-segmenting":
        # A head that only sees the blobs' cores (logit > 2): propagation must find the rest.
        core = truth(lambda p: field(p) - 2.0, SMALL_GRID)
        coarse = max_pooled_coarse(core, (4, 4, 3))
    result, recorder = run(field, SMALL_GRID, region, coarse, coarsest_stride=stride)
    expected = grid_labels[region]
    assert expected.sum() > 0
    assert np.array_equal(result.labels, expected)
    assert result.stats.total_queries < expected.size / 2  # and it did not just go dense
    assert len(np.unique(recorder.queries, axis=0)) == len(recorder.queries)


@pytest.mark.parametrize("seed", range(6))
def test_every_component_holding_a_decoded_voxel_is_exact(seed):
    """The guarantee docs/scheduler.md states: a (26-connected, foreground or background) component
    of the dense labels that holds any decoded voxel comes out exactly as dense."""
    rng = np.random.default_rng(seed)
    grid = (40, 36, 32)
    region = (slice(2, 39), slice(0, 36), slice(3, 30)) if seed % 2 else WHOLE
    field = waves(rng)
    coarse = rng.normal(size=(5, 4, 4)).astype(np.float32) * 4 if seed % 3 == 0 else None
    stride = (2, 4, 8)[seed % 3]
    result, recorder = run(field, grid, region, coarse, coarsest_stride=stride)
    dense = truth(field, grid, region)
    fg, bg = components_with_a_query(dense, recorder.queried_mask(dense.shape))
    assert fg.any() and bg.any()
    assert result.labels[fg].all()
    assert not result.labels[bg].any()


# ------------------------------------------------------------- last-level interpolation margin


def test_interpolation_margin_skips_clear_points_of_a_sharp_field(brats_sphere):
    """A trained decoder's logits are steep (several logits per voxel) and smooth: on such a field
    the margin decides many last-level points without decoding and changes no voxel."""
    _, dense, coarse = brats_sphere
    field = sphere(SPHERE_CENTRE, SPHERE_RADIUS, scale=6.0)
    exact, _ = run(field, BRATS_GRID, coarse=coarse, interpolation_margin=0.0)
    skipping, recorder = run(field, BRATS_GRID, coarse=coarse, interpolation_margin=3.0)
    assert np.array_equal(exact.labels, dense)
    assert np.array_equal(skipping.labels, dense)
    last = skipping.stats.stages[-1]
    assert last.name == "refine 2->1" and last.interpolated > 0
    assert all(s.interpolated == 0 for s in skipping.stats.stages[:-1])
    assert exact.stats.stages[-1].interpolated == 0
    # Every interpolated point is one the exact run decoded: the margin only replaces queries.
    assert skipping.stats.total_queries + last.interpolated == exact.stats.total_queries
    assert skipping.stats.total_queries < 0.8 * exact.stats.total_queries
    assert len(np.unique(recorder.queries, axis=0)) == len(recorder.queries)


def test_interpolated_points_are_those_clear_of_the_threshold():
    """The rule itself, both ways: a last-level point is decided without decoding exactly when its
    bracketing stride-2 lattice points were all decoded, lie on one side of the threshold, and
    their mean logit is at least the margin from it; it then takes that side."""
    grid, threshold, margin = (48, 48, 48), 0.5, 2.0
    field = union(sphere((23.3, 24.6, 22.1), 12.0, scale=6.0), sphere((31.0, 30.2, 33.7), 7.5, scale=3.0))
    exact, exact_rec = run(field, grid, threshold_logit=threshold, interpolation_margin=0.0)
    skipping, skip_rec = run(field, grid, threshold_logit=threshold, interpolation_margin=margin)
    last = skipping.stats.stages[-1]
    decoded = skip_rec.queried_mask(grid)
    # On smooth fields the decided values match the decoder, so propagation visits the same
    # cells and the decided points are exactly the last-level points the exact run decoded extra.
    assert np.array_equal(skipping.labels, exact.labels)
    assert skipping.stats.total_queries + last.interpolated == exact.stats.total_queries
    extra = exact_rec.queried_mask(grid) & ~decoded
    assert int(extra.sum()) == last.interpolated > 0

    def clear(points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Per point: whether the rule decides it, and the mean of its bracketing logits."""
        # A lattice point past the grid's end stands for the last voxel (the scheduler mirrors).
        corners = [np.minimum((points + np.array(a)) // 2 * 2, np.array(grid) - 1) for a in np.ndindex(2, 2, 2)]
        logits = np.array([field(c.astype(np.float64)).astype(np.float16).astype(np.float32) - threshold
                           for c in corners])
        bracketed = np.all([decoded[c[:, 0], c[:, 1], c[:, 2]] for c in corners], axis=0)
        one_side = (logits > 0).all(axis=0) | (logits <= 0).all(axis=0)
        mean = logits.mean(axis=0)
        return bracketed & one_side & (np.abs(mean) >= margin), mean

    points = np.argwhere(extra)
    rule, mean = clear(points)
    assert rule.all()
    assert np.array_equal(skipping.labels[extra], (mean > 0).astype(np.uint8))
    # ...and every last-level point it decoded (not on the stride-2 lattice) was not clear.
    queried = skip_rec.queries
    fine = queried[(queried % 2).any(axis=1)]
    rule, _ = clear(fine)
    assert fine.size and not rule.any()


def test_interpolation_margin_errors_stay_on_undecoded_voxels():
    """On a rough field the margin may decide wrongly; such voxels are never decoded ones, and they
    are few."""
    rng = np.random.default_rng(7)
    base = waves(rng)
    grid = (40, 36, 32)

    def field(p: np.ndarray) -> np.ndarray:
        return 4.0 * base(p)

    result, recorder = run(field, grid, interpolation_margin=1.5)
    dense = truth(field, grid)
    wrong = result.labels != dense
    assert result.stats.stages[-1].interpolated > 0
    assert not (wrong & recorder.queried_mask(grid)).any()
    assert wrong.sum() <= 0.01 * dense.sum()


@pytest.mark.parametrize("region", [WHOLE, SMALL_REGION], ids=["whole-grid", "sub-region"])
def test_interpolation_margin_keeps_queries_in_the_region(region):
    rng = np.random.default_rng(11)
    base = place_blobs(rng, 8, count=3, region=region)

    def field(p: np.ndarray) -> np.ndarray:
        return 5.0 * base(p)

    result, recorder = run(field, SMALL_GRID, region, interpolation_margin=3.0)  # Recorder checks bounds
    assert result.stats.stages[-1].interpolated > 0
    assert len(np.unique(recorder.queries, axis=0)) == len(recorder.queries)
    assert np.array_equal(result.labels, truth(field, SMALL_GRID, region))


# ----------------------------------------------------- the documented failure mode, and its knobs

SHELL_GRID = (48, 48, 48)
LATTICE_POINT = (24.0, 24.0, 24.0)  # on the stride-8 lattice of the whole grid


def test_thin_shell_between_lattice_points_is_missed():
    # Stride-8 lattice points lie at distances 8 * sqrt(n) from the centre: 16.0 (n = 4) and
    # 17.9 (n = 5) leave a gap that a shell of radius 16.95 and thickness 0.9 falls into.
    field = shell(LATTICE_POINT, 16.95, 0.45, scale=10.0)
    dense = truth(field, SHELL_GRID)
    result, _ = run(field, SHELL_GRID)
    assert dense.sum() > 1000
    assert result.labels.sum() == 0


def test_small_blob_between_lattice_points_is_missed():
    field = sphere((28.0, 28.0, 28.0), 2.5, scale=10.0)  # the centre of a stride-8 cell
    dense = truth(field, SHELL_GRID)
    result, _ = run(field, SHELL_GRID)
    assert dense.sum() > 50
    assert result.labels.sum() == 0


def test_thin_shell_through_a_lattice_point_is_found_whole():
    field = shell(LATTICE_POINT, 16.0, 0.45, scale=10.0)  # passes through (40, 24, 24) and others
    result, _ = run(field, SHELL_GRID)
    assert np.array_equal(result.labels, truth(field, SHELL_GRID))


def test_uncertainty_band_finds_a_near_miss():
    # The lattice point (24, 24, 24) is 0.5 outside this blob (logit -0.5); (28, 24, 24) is inside.
    field = sphere((27.5, 24.0, 24.0), 3.0)
    dense = truth(field, SHELL_GRID)
    without, _ = run(field, SHELL_GRID, uncertainty_band=0.0)
    with_band, _ = run(field, SHELL_GRID, uncertainty_band=1.0)
    assert without.labels.sum() == 0
    assert np.array_equal(with_band.labels, dense)


def test_coarse_segmentation_limits_the_search():
    # The aux head sees only the first blob: the second, far from it, is never queried.
    first, second = sphere((14.0, 14.0, 14.0), 9.0), sphere((48.0, 48.0, 34.0), 9.0)
    field = union(first, second)
    coarse = max_pooled_coarse(truth(first, SMALL_GRID), (4, 4, 3))  # cells of 16 voxels
    result, recorder = run(field, SMALL_GRID, coarse=coarse)
    assert np.array_equal(result.labels, truth(first, SMALL_GRID))
    # Seeded: coarse cells 0..1 (voxels 0..31) plus the 8-voxel margin.
    assert (recorder.queries < 40).all()


# -------------------------------------------------------------------------- reference procedure


def test_reference_original_queries_the_full_grid_stride4_lattice():
    grid, region = (32, 32, 24), (slice(3, 30), slice(0, 32), slice(5, 21))
    result, recorder = run(sphere((16.0, 16.0, 12.0), 5.0), grid, region, mode="reference")
    first = result.stats.stages[0]
    stage1 = recorder.queries[:first.queries]
    expected = np.stack(np.meshgrid(np.arange(4, 30, 4), np.arange(0, 32, 4), np.arange(8, 21, 4),
                                    indexing="ij"), axis=-1).reshape(-1, 3)
    assert first.queries == 7 * 8 * 4
    assert np.array_equal(stage1, expected)  # grid-aligned (0, 4, 8, ...), C order


def test_reference_improved_queries_the_positive_upsampled_lattice_points():
    # Coarse 2x2x2 with only cell (0, 0, 0) positive, upsampled (align_corners=True) to the 4x4x4
    # stride-4 lattice: per-axis weights of that cell are 1, 2/3, 1/3, 0, so the probability
    # exceeds 0.5 at lattice points (0,0,0) (weight 1) and the three one step away (2/3).
    coarse = np.full((2, 2, 2), -8.0, dtype=np.float32)
    coarse[0, 0, 0] = 8.0
    result, recorder = run(sphere((0.0, 0.0, 0.0), 3.0), (16, 16, 16), coarse=coarse, mode="reference")
    first = result.stats.stages[0]
    assert first.queries == 4
    assert {tuple(q) for q in recorder.queries[:4]} == {(0, 0, 0), (4, 0, 0), (0, 4, 0), (0, 0, 4)}


def test_reference_stages_on_a_single_voxel_object():
    def field(p: np.ndarray) -> np.ndarray:
        return 0.5 - np.abs(p - 8.0).max(axis=1)  # only voxel (8, 8, 8) is foreground

    result, _ = run(field, (16, 16, 16), mode="reference")
    stages = result.stats.stages
    assert [s.stride for s in stages] == [4, 2, 1]
    assert stages[0].queries == 4 ** 3
    # Stride-2 points within Chebyshev distance 4 of (8, 8, 8): {4, 6, 8, 10, 12}^3 less the
    # positive itself; the 26 of them on the stride-4 lattice were already queried in stage 1.
    assert (stages[1].queries, stages[1].repeated) == (5 ** 3 - 1, 3 ** 3 - 1)
    assert (stages[2].queries, stages[2].repeated) == (3 ** 3 - 1, 0)
    expected = np.zeros((16, 16, 16), dtype=np.uint8)
    expected[8, 8, 8] = 1
    assert np.array_equal(result.labels, expected)


def test_reference_without_positives_stops_after_stage_one():
    result, _ = run(lambda p: np.full(len(p), -3.0), (16, 16, 8), mode="reference")
    assert [s.queries for s in result.stats.stages] == [4 * 4 * 2, 0, 0]
    assert result.labels.sum() == 0


# ------------------------------------------------------------------------- dense, chunks, stats


def test_dense_queries_every_region_voxel_once():
    grid, region = (20, 18, 16), (slice(2, 19), slice(1, 18), slice(0, 10))
    field = union(sphere((9.3, 8.1, 5.0), 5.0), box((15.0, 4.0, 3.0), (2.0, 2.5, 3.0)))
    result, recorder = run(field, grid, region, mode="dense", max_queries=1000)
    assert result.labels.dtype == np.uint8 and result.labels.shape == (17, 17, 10)
    assert np.array_equal(result.labels, truth(field, grid, region))
    assert len(np.unique(recorder.queries, axis=0)) == 17 * 17 * 10 == len(recorder.queries)


@pytest.mark.parametrize("mode", ["dense", "reference", "adaptive"])
def test_chunking_never_exceeds_max_queries_and_does_not_change_results(mode):
    grid, region = (24, 20, 16), (slice(1, 23), slice(0, 20), slice(2, 16))
    field = union(sphere((10.2, 9.7, 8.1), 5.5), box((18.0, 12.0, 9.0), (3.0, 4.0, 3.5)))
    coarse = max_pooled_coarse(truth(field, grid), (3, 2, 2))
    runs = [run(field, grid, region, coarse, mode=mode, max_queries=m) for m in (1, 7, 4096)]
    for result, recorder in runs:
        assert np.array_equal(result.labels, runs[0][0].labels)
        assert np.array_equal(recorder.queries, runs[0][1].queries)  # same points in the same order
    assert all(len(c) == 1 for c in runs[0][1].calls)
    assert max(len(c) for c in runs[1][1].calls) == 7


def test_progress_reports_every_call_and_stats_add_up():
    reports: list[tuple[str, int, int]] = []
    field = sphere((10.2, 9.7, 8.1), 5.5)
    recorder = Recorder(field, (24, 20, 16), WHOLE, 100)
    result = run_scheduler(recorder, (24, 20, 16), WHOLE, SchedulerConfig(max_queries=100),
                           progress=lambda *args: reports.append(args))
    assert len(reports) == len(recorder.calls)
    for stage in result.stats.stages:
        done = [d for name, d, _ in reports if name == stage.name]
        assert done == sorted(done) and (done[-1] if done else 0) == stage.queries
    assert all(planned >= done for _, done, planned in reports)
    stats = result.stats
    assert stats.mode == "adaptive"
    assert stats.bookkeeping_seconds == pytest.approx(stats.seconds - stats.decode_seconds)
    assert stats.decode_seconds == pytest.approx(sum(s.decode_seconds for s in stats.stages))
    assert [s.stride for s in stats.stages] == [8, 4, 2, 1]


def test_empty_coarse_segmentation_queries_nothing():
    coarse = np.full((4, 4, 3), -8.0, dtype=np.float32)
    result, _ = run(sphere((30.0, 30.0, 20.0), 9.0), SMALL_GRID, coarse=coarse)
    assert result.stats.total_queries == 0 and result.labels.sum() == 0


def test_thin_region_and_threshold():
    grid, region = (16, 16, 16), (slice(4, 5), slice(0, 16), slice(2, 14))  # one slice thick
    field = sphere((4.0, 8.0, 8.0), 5.0)
    result, _ = run(field, grid, region)
    assert np.array_equal(result.labels, truth(field, grid, region))
    shifted, _ = run(field, grid, region, threshold_logit=2.0)
    assert np.array_equal(shifted.labels, truth(lambda p: field(p) - 2.0, grid, region))


# ------------------------------------------------------------------------------ lattice helpers


def test_cell_any_and_cell_points_match_brute_force():
    rng = np.random.default_rng(3)
    points = rng.random((7, 5, 9)) < 0.05
    cells = rng.random((3, 2, 4)) < 0.3
    expected_any = np.array([[[points[2 * a:2 * a + 3, 2 * b:2 * b + 3, 2 * c:2 * c + 3].any()
                               for c in range(4)] for b in range(2)] for a in range(3)])
    expected_points = np.zeros((7, 5, 9), dtype=bool)
    for a, b, c in zip(*np.nonzero(cells), strict=True):
        expected_points[2 * a:2 * a + 3, 2 * b:2 * b + 3, 2 * c:2 * c + 3] = True
    assert np.array_equal(cell_any(points), expected_any)
    assert np.array_equal(cell_points(cells), expected_points)


def test_max_filter_and_bounding_box_match_brute_force():
    rng = np.random.default_rng(4)
    mask = rng.random((6, 9, 5)) < 0.04
    for size in (1, 3, 5, 9):
        r = size // 2
        expected = np.zeros_like(mask)
        for i, j, k in zip(*np.nonzero(mask), strict=True):
            expected[max(i - r, 0):i + r + 1, max(j - r, 0):j + r + 1, max(k - r, 0):k + r + 1] = True
        assert np.array_equal(max_filter(mask, size), expected)
    hits = np.nonzero(mask)
    assert bounding_box(mask) == tuple((int(h.min()), int(h.max()) + 1) for h in hits)
    assert bounding_box(np.zeros((2, 2, 2), dtype=bool)) is None


# ------------------------------------------------------------------------------------- errors


@pytest.mark.parametrize(("settings", "match"), [
    ({"mode": "fast"}, "invalid scheduler setting mode"),
    ({"coarsest_stride": 6}, "power of two"),
    ({"max_queries": 0}, "max_queries"),
    ({"uncertainty_band": -1.0}, "uncertainty_band"),
    ({"interpolation_margin": -0.5}, "interpolation_margin"),
    ({"interpolation_margin": float("nan")}, "interpolation_margin"),
    ({"seed_margin": -2}, "seed_margin"),
])
def test_invalid_config_is_refused(settings, match):
    with pytest.raises(InputError, match=match):
        SchedulerConfig(**settings)


@pytest.mark.parametrize(("grid", "region", "match"), [
    ((16, 16, 16), (slice(0, 17), slice(None), slice(None)), "region axis 0 does not fit"),
    ((16, 16, 16), (slice(4, 4), slice(None), slice(None)), "region axis 0 does not fit"),
    ((16, 16, 16), (slice(None), slice(0, 16, 2), slice(None)), "region axis 1 does not fit"),
    ((16, 16, 16), (slice(None), slice(None)), "invalid region"),
    ((16, 16), WHOLE, "invalid padded grid shape"),
])
def test_invalid_region_is_refused(grid, region, match):
    with pytest.raises(InputError, match=match):
        run_scheduler(lambda idx: np.zeros(len(idx), np.float32), grid, region)


@pytest.mark.parametrize(("coarse", "match"), [
    (np.zeros((4, 4), dtype=np.float32), "invalid coarse segmentation logits"),
    (np.zeros((4, 4, 40), dtype=np.float32), "no larger than the grid"),
    (np.full((2, 2, 2), np.nan, dtype=np.float32), "not finite"),
])
def test_invalid_coarse_logits_are_refused(coarse, match):
    with pytest.raises(InputError, match=match):
        run_scheduler(lambda idx: np.zeros(len(idx), np.float32), (16, 16, 16), WHOLE, coarse_logits=coarse)


def test_decoder_output_is_checked():
    with pytest.raises(ModelFormatError, match="wrong shape"):
        run_scheduler(lambda idx: np.zeros((len(idx), 2), np.float32), (8, 8, 8), WHOLE)
    with pytest.raises(ModelFormatError, match="non-finite logits"):
        run_scheduler(lambda idx: np.full(len(idx), np.nan, np.float32), (8, 8, 8), WHOLE)
    column, _ = run(lambda p: -np.ones(len(p)), (8, 8, 8), mode="dense")
    ok = run_scheduler(lambda idx: -np.ones((len(idx), 1), np.float32), (8, 8, 8), WHOLE,
                       SchedulerConfig(mode="dense"))
    assert np.array_equal(ok.labels, column.labels)
