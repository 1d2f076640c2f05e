#!/usr/bin/env bash
# One full benchmark run (issue #7): every table and plot in benchmarks/results/ from one sitting,
# one commit of the code. Run it on a quiet machine from the repository root, after
# `python benchmarks/workloads.py all` (docs/benchmarks.md). About 95 minutes on 2 cores.
#
#   bash benchmarks/full_run.sh [DENSE_CACHE_DIR]
#
# DENSE_CACHE_DIR (default data/bench/dense-cache) keeps each workload's dense labels keyed by its
# graphs and input; the dense pass of (b) alone takes about 25 minutes here. The log goes to
# benchmarks/results/full_run.log.
set -euo pipefail
cache="${1:-data/bench/dense-cache}"
log=benchmarks/results/full_run.log
mkdir -p benchmarks/results
{
  echo "full run: $(date -u '+%Y-%m-%d %H:%M:%S UTC'), git $(git rev-parse --short HEAD)"
  # (a), (b): every program; (c): ours (ONNX Runtime, OpenVINO), the U-Net and MONAI. PyTorch eager and the paper's
  # reference scheduler take 8+ minutes per run on (c) and no (c) target needs them.
  python benchmarks/bench_peers.py --repeats 3 --dense-cache "$cache" \
      --programs-for c=ossnet-ort,ossnet-ov,unet3d,monai
  # Memory scaling with ONNX Runtime only: ossnet-ov's peak is ossnet-ort's plus OpenVINO's
  # libraries and compiled decoder (measured on a, b, c above), and its lits runs would add
  # about 25 minutes.
  python benchmarks/bench_peers.py --study scaling --repeats 2 --programs ossnet-ort,unet3d,monai
  python benchmarks/bench_hardware.py --repeats 3
  echo "done: $(date -u '+%Y-%m-%d %H:%M:%S UTC')"
} 2>&1 | tee "$log"
