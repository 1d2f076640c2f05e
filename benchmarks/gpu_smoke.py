"""GPU smoke test of the export -> TensorRT -> runtime path (run on a machine with an NVIDIA GPU).

    python benchmarks/gpu_smoke.py [--checkpoint CKPT] [--preset demo] [--out DIR]
                                   [--opt-queries 16384] [--max-queries 32768] [--device-id 0]

Steps, each timed and printed:

1. a checkpoint: ``--checkpoint``, or a perturbed full-size OSS-Net C of ``--preset`` (weights
   perturbed and calibrated on the phantom by ``ossnet_export.testing.perturb_``);
2. ``ossnet-export``'s export with ``--fp16`` (fp32 pair verified against PyTorch, fp16 gated);
3. TensorRT engines for every graph (``ossnet_export.trt.build_folder_engines``: ONNX Runtime's
   TensorRT EP, explicit profiles, EP-context models, ``.engine.json`` side files); each engine
   is checked against ONNX Runtime CPU at the profile's min/opt/max query counts;
4. the runtime (``ossnet_deploy.Segmenter``) on the phantom for every available device and
   precision (cpu fp32; cuda fp32/fp16; trt fp32/fp16): load time, segmentation time, decoder
   logits at the verification queries vs CPU fp32 (max |diff|), and the segmentation's Dice
   against CPU fp32 (``ossnet_deploy.metrics.dice``).

Exit status: 0 when every device that ran agrees with the CPU (logits within ``1e-2`` absolute +
``1e-2`` relative, Dice >= 0.999), 1 otherwise, 3 when this machine has neither CUDA nor
TensorRT (nothing GPU-side could run). Speed is measured here only, never in tests.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from ossnet_deploy.devices import CUDA_PROVIDER, available_providers
from ossnet_deploy.metrics import dice
from ossnet_deploy.preprocess import PreprocessConfig, preprocess_preset
from ossnet_export.export_onnx import ExportOptions, export_checkpoint
from ossnet_export.testing import perturb_
from ossnet_export.trt import QueryProfile, build_folder_engines, detect_environment
from ossnet_export.verify import make_case, make_phantom

TOLERANCE = 1e-2
MIN_DICE = 0.999


def _perturbed_checkpoint(preset: str, folder: Path) -> Path:
    from ossnet_train.checkpoint import save_checkpoint
    from ossnet_train.registry import create_model

    model = create_model("c", preset)
    preprocess = preprocess_preset(preset)
    perturb_(model, seed=0, calibrate=(make_case(preprocess, (61, 389)), preprocess))
    return save_checkpoint(folder / f"{preset}_c_perturbed.pt", model, preprocess, overwrite=True)


def _timed(label: str, func, *args, **kwargs):  # type: ignore[no-untyped-def]
    start = time.perf_counter()
    value = func(*args, **kwargs)
    print(f"{label:<48} {time.perf_counter() - start:8.2f} s", flush=True)
    return value


def _run_device(model_dir: Path, device: str, precision: str, preprocess: PreprocessConfig,
                phantom: tuple[np.ndarray, np.ndarray], queries: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Load, segment the phantom and query the verification points; returns (labels, logits)."""
    from ossnet_deploy import Segmenter

    segmenter = _timed(f"  load      {device:<5} {precision}", Segmenter.from_dir, model_dir, device=device,
                       precision=precision)
    image, affine = phantom
    array = image[0] if image.shape[0] == 1 else np.moveaxis(image, 0, -1)
    _timed(f"  warm-up   {device:<5} {precision}", segmenter.segment, (array, affine))
    labels = _timed(f"  segment   {device:<5} {precision}", segmenter.segment, (array, affine))
    state = segmenter.encode((array, affine))
    logits = _timed(f"  {len(queries)} queries {device:<5} {precision}", segmenter.query, state, queries)
    segmenter.close()
    return np.asarray(labels.dataobj), logits


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--checkpoint", type=Path, default=None)
    parser.add_argument("--preset", default="demo", choices=("demo", "brats", "lits"))
    parser.add_argument("--out", type=Path, default=None, help="work folder (default: a temporary one)")
    parser.add_argument("--opt-queries", type=int, default=16384)
    parser.add_argument("--max-queries", type=int, default=32768)
    parser.add_argument("--device-id", type=int, default=0)
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory() as tmp:
        work = args.out or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        checkpoint = args.checkpoint or _timed("perturbed checkpoint", _perturbed_checkpoint, args.preset, work)
        model_dir = work / "model"
        result = _timed("export (+ verify, fp16 gate)", export_checkpoint, checkpoint, model_dir,
                        options=ExportOptions(fp16=True, overwrite=True))
        for name, size in result.files.items():
            print(f"  {name:<22} {size / 2**20:8.2f} MiB")
        if result.fp16_refused:
            print(f"  fp16 refused: {result.fp16_refused}")

        env = detect_environment(args.device_id)
        print(f"providers: {', '.join(env.providers)}; TensorRT {env.tensorrt_version}; "
              f"compute capability {env.compute_capability}")
        devices = [("cpu", "fp32")]
        has_fp16 = (model_dir / "decoder.fp16.onnx").is_file()
        if CUDA_PROVIDER in available_providers():
            devices += [(f"cuda:{args.device_id}", "fp32")] + ([(f"cuda:{args.device_id}", "fp16")] if has_fp16 else [])
        if not env.missing():
            profile = QueryProfile(1, args.opt_queries, args.max_queries)
            builds = _timed("TensorRT engines", build_folder_engines, model_dir, env=env, profile=profile,
                            overwrite=True, builder_optimization_level=3)
            for build in builds:
                print(f"  {build.context_path.name:<26} build {build.build_seconds:7.1f} s; "
                      f"max |diff| vs CPU {max(c['max_abs'] for c in build.parity['checks']):.3g}")
            devices += [(f"trt:{args.device_id}", "fp32")] + ([(f"trt:{args.device_id}", "fp16")] if has_fp16 else [])
        else:
            print("TensorRT: not available here: " + "; ".join(env.missing()))
        if len(devices) == 1:
            print("neither CUDA nor TensorRT is available: nothing GPU-side to smoke-test")
            return 3

        preprocess = result.metadata["encoder"].preprocess
        config = PreprocessConfig.from_dict(preprocess)
        phantom = make_phantom(config, seed=0)
        queries = make_case(config, (389, 61)).queries[0]
        reference_labels, reference_logits = None, None
        failures = 0
        print("runtime:")
        for device, precision in devices:
            labels, logits = _run_device(model_dir, device, precision, config, (phantom.image, phantom.affine), queries)
            if reference_labels is None:
                reference_labels, reference_logits = labels, logits
                continue
            diff = np.abs(logits - reference_logits)
            ok_logits = bool(np.all(diff <= TOLERANCE + TOLERANCE * np.abs(reference_logits)))
            agreement = dice(labels, reference_labels)
            ok = ok_logits and agreement >= MIN_DICE
            failures += not ok
            print(f"  {device:<7} {precision}: logits max |diff| vs cpu fp32 {diff.max():.3g}; Dice {agreement:.5f}; "
                  f"{'ok' if ok else 'MISMATCH'}")
        return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
