#!/usr/bin/env bash
# Train, export and deploy, end to end, in about two minutes on a CPU (the main job, segmenting
# with the bundled model, is scripts/demo.sh).
#
# Installs ossnet with training and export, writes a small synthetic dataset (bright ellipsoids of random size and position in
# noise), train OSS-Net C at a reduced size for 130 steps on the CPU, export it to verified
# ONNX graphs, and segment an unseen volume with the torch-free runtime (`ossnet-segment`),
# writing the NIfTI segmentation and its PNG preview and printing the Dice against the truth.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-$(command -v python3.11 || command -v python3)}"
VENV="${OSSNET_TRAIN_DEMO_VENV:-.venv-train-demo}"
WORK="outputs/synthetic-demo"
PIP=(-q --disable-pip-version-check)

"$PY" -m venv "$VENV"
"$VENV/bin/pip" install "${PIP[@]}" --upgrade pip
"$VENV/bin/pip" install "${PIP[@]}" "torch==${OSSNET_TORCH_VERSION:-2.13.0}"
"$VENV/bin/pip" install "${PIP[@]}" -c constraints.txt ".[train,export]"

mkdir -p "$WORK"
"$VENV/bin/python" - "$WORK" <<'PY'
import sys
from ossnet_train.synthetic import write_ellipsoid_dataset
work = sys.argv[1]
write_ellipsoid_dataset(f"{work}/train", range(0, 12))
write_ellipsoid_dataset(f"{work}/val", range(100, 103))
write_ellipsoid_dataset(f"{work}/test", range(200, 201))
PY

# A reduced OSS-Net C (global volume 16^3, encoder 1-8-16, decoder width 32) on a 32^3 grid.
"$VENV/bin/ossnet-train" fit --data-kind generic --data "$WORK/train" --val-data "$WORK/val" \
    --variant c --preset demo \
    --model-override 'global_shape=[16,16,16]' --model-override 'encoder_channels=[1,8,16]' \
    --model-override decoder_width=32 \
    --preprocess-override 'shape=[32,32,32]' --preprocess-override max_shift=0 \
    --preprocess-override intensity=zscore_volume --preprocess-override foreground_threshold=-1000 --preprocess-override 'foreground="threshold"' \
    --steps 130 --points 256 --batch 2 --lr 3e-3 --lr-milestones 0.8,0.9 --sampling border \
    --threads 1 --out "$WORK/run" --overwrite --no-progress
"$VENV/bin/ossnet-export" "$WORK/run/last.pt" -o "$WORK/model" --overwrite
"$VENV/bin/ossnet-segment" -i "$WORK/test/imagesTr/ell_200_0000.nii.gz" -o "$WORK/ell_200_seg.nii.gz" \
    -m "$WORK/model" -d cpu --preview --overwrite
"$VENV/bin/python" - "$WORK" <<'PY'
import sys
import nibabel as nib
import numpy as np
from ossnet_deploy.metrics import dice
work = sys.argv[1]
pred = np.asanyarray(nib.load(f"{work}/ell_200_seg.nii.gz").dataobj) > 0
truth = np.asanyarray(nib.load(f"{work}/test/labelsTr/ell_200.nii.gz").dataobj) > 0
print(f"Dice of the unseen volume against its truth: {dice(pred, truth):.4f}")
print(f"segmentation: {work}/ell_200_seg.nii.gz   preview: {work}/ell_200_seg.png")
PY
