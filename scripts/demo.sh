#!/usr/bin/env bash
# The main job on a fresh machine: install only the runtime (no torch), segment the bundled
# sample (a held-out demo subject, T1 MRI at 1 mm) with the bundled default model on the CPU,
# and write the NIfTI segmentation and its PNG preview into outputs/.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-$(command -v python3.11 || command -v python3)}"
VENV="${OSSNET_DEMO_VENV:-.venv-demo}"
SAMPLE="examples/demo_3004_t1.nii.gz"
OUT="outputs/demo_3004_wm.nii.gz"

"$PY" -m venv "$VENV"
"$VENV/bin/pip" install -q --disable-pip-version-check --upgrade pip
"$VENV/bin/pip" install -q --disable-pip-version-check -c constraints.txt .
mkdir -p outputs
# --overwrite: this script owns outputs/; a rerun replaces its own earlier result.
"$VENV/bin/ossnet-segment" -i "$SAMPLE" -o "$OUT" --preview --overwrite -d cpu "$@"
echo "segmentation: $OUT   preview: ${OUT%.nii.gz}.png"
