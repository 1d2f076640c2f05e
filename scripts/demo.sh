#!/usr/bin/env bash
# The main job on a fresh machine: install the runtime only (no PyTorch, as on an edge machine),
# then segment the bundled sample (a held-out 1 mm T1 demo subject, examples/) with the bundled
# default model (OSS-Net C, white matter) on the CPU. Writes the NIfTI segmentation and a PNG
# preview to outputs/demo/, prints ossnet-segment's summary and the Dice against the sample's
# label.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-$(command -v python3.11 || command -v python3)}"
VENV="${OSSNET_DEMO_VENV:-.venv-demo}"
OUT="outputs/demo"
CASE="demo_3004"
PIP=(-q --disable-pip-version-check)

started=$(date +%s.%N)
"$PY" -m venv "$VENV"
"$VENV/bin/pip" install "${PIP[@]}" --upgrade pip
"$VENV/bin/pip" install "${PIP[@]}" -c constraints.txt .
installed=$(date +%s.%N)
if "$VENV/bin/python" -c "import torch" 2>/dev/null; then
    echo "error: the runtime environment $VENV holds torch; it must not" >&2
    exit 1
fi

mkdir -p "$OUT"
"$VENV/bin/ossnet-segment" -i "examples/${CASE}_t1.nii.gz" -o "$OUT/${CASE}_wm_pred.nii.gz" -d cpu \
    --preview --overwrite
segmented=$(date +%s.%N)
"$VENV/bin/python" - "$OUT/${CASE}_wm_pred.nii.gz" "examples/${CASE}_wm.nii.gz" <<'PY'
import sys

import nibabel as nib
import numpy as np

from ossnet_deploy.metrics import dice, iou

pred = np.asanyarray(nib.load(sys.argv[1]).dataobj) > 0
truth = np.asanyarray(nib.load(sys.argv[2]).dataobj) > 0
print(f"white matter against the sample's label: Dice {dice(pred, truth):.4f}, IoU {iou(pred, truth):.4f}")
PY
echo "segmentation: $OUT/${CASE}_wm_pred.nii.gz   preview: $OUT/${CASE}_wm_pred.png"
awk -v a="$started" -v b="$installed" -v c="$segmented" \
    'BEGIN { printf "wall time: install %.0f s, ossnet-segment %.1f s (process start to exit)\n", b - a, c - b }'
