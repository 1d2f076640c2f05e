"""The runtime imports without torch, the training/export packages or ``onnx``.

Checked in fresh interpreters, because this test process may already have imported anything.
Every module of ``ossnet_deploy`` is found with pkgutil, so modules added later are covered.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import ossnet_deploy

REPO_ROOT = Path(ossnet_deploy.__file__).resolve().parents[1]
# Packages the runtime must never need. ``onnx`` is not ``onnxruntime``: the edge has only the latter.
FORBIDDEN = (
    "torch",
    "torchvision",
    "ossnet_train",
    "ossnet_export",
    "onnx",
    "onnxscript",
    "tensorrt",
    "scipy",
)
# Optional extras, imported only when used (docs/design.md#dicom): every module imports without them.
OPTIONAL_EXTRAS = ("pydicom", "highdicom")


def run_python(code: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        env=env,
        cwd=REPO_ROOT,
        timeout=120,
        check=False,
    )


def test_every_runtime_module_imports_with_forbidden_packages_blocked():
    # A meta-path finder makes the forbidden packages unimportable, as in the torch-free CI
    # environment; afterwards none of them may be loaded.
    result = run_python(
        f"""
        import importlib, pkgutil, sys

        FORBIDDEN = {(*FORBIDDEN, *OPTIONAL_EXTRAS)!r}

        class Block:
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in FORBIDDEN:
                    raise ImportError(f"blocked in this test: {{name}}")
                return None

        sys.meta_path.insert(0, Block())
        import ossnet_deploy
        names = ["ossnet_deploy"]
        for info in pkgutil.walk_packages(ossnet_deploy.__path__, "ossnet_deploy."):
            if info.name.rsplit(".", 1)[-1] == "__main__":
                continue  # importing __main__ would run the CLI
            importlib.import_module(info.name)
            names.append(info.name)
        loaded = sorted({{m.split(".")[0] for m in sys.modules}} & set(FORBIDDEN))
        assert not loaded, loaded
        for required in ("ossnet_deploy.metadata", "ossnet_deploy.metrics", "ossnet_deploy.nifti_io",
                         "ossnet_deploy.atomic", "ossnet_deploy.errors"):
            assert required in names, (required, names)
        print(len(names), "modules")
        """
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "modules" in result.stdout


def test_importing_the_package_does_no_work():
    result = run_python(
        """
        import sys
        import ossnet_deploy
        assert isinstance(ossnet_deploy.__version__, str) and ossnet_deploy.__version__
        heavy = sorted(m for m in ("numpy", "onnxruntime", "nibabel", "torch") if m in sys.modules)
        assert not heavy, heavy
        """
    )
    assert result.returncode == 0, result.stderr[-3000:]


def test_metadata_needs_neither_numpy_nor_onnxruntime():
    # The exporter and light tools read the schema and model files; both stay pure Python.
    result = run_python(
        """
        import sys
        import ossnet_deploy.metadata
        import ossnet_deploy.onnx_metadata
        heavy = sorted(m for m in ("numpy", "onnxruntime", "nibabel") if m in sys.modules)
        assert not heavy, heavy
        """
    )
    assert result.returncode == 0, result.stderr[-3000:]
