"""``ossnet-export``: checkpoint -> verified encoder.onnx + decoder.onnx (+ fp16, + TensorRT).

Examples::

    ossnet-export models/run.pt                      # -> models/run/encoder.onnx, decoder.onnx
    ossnet-export models/run.pt -o out/ --fp16       # also decoder.fp16.onnx, if it passes its gate
    ossnet-export models/run.pt --trt --max-queries 65536
    ossnet-export verify out/ --checkpoint models/run.pt

``ossnet-export CHECKPOINT ...`` is short for ``ossnet-export export CHECKPOINT ...``.

Exit codes (docs/design.md#errors-and-exit-codes): 0 done; 1 the checkpoint or the graphs failed (bad
checkpoint, verification failure, fp16 refused); 2 usage error (bad option, output exists
without ``--overwrite``); 3 missing dependency or hardware (``--trt`` without TensorRT/GPU, or
with a TensorRT of another major than onnxruntime-gpu's TensorRT provider links against,
docs/design.md#gpu-runtime-versions; after the ONNX graphs were written and verified). Errors are one line; ``-v`` adds the traceback.
"""

from __future__ import annotations

import functools
import sys
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from ossnet_deploy.errors import (
    EXIT_DEPENDENCY,
    EXIT_OK,
    EXIT_SOME_FAILED,
    EXIT_USAGE,
    DependencyError,
    OssnetError,
    OutputExistsError,
)

__all__ = ["main"]

F = TypeVar("F", bound=Callable[..., Any])
_PROG = "ossnet-export"


def _exit_code(exc: OssnetError) -> int:
    if isinstance(exc, DependencyError):
        return EXIT_DEPENDENCY
    if isinstance(exc, OutputExistsError):
        return EXIT_USAGE
    return EXIT_SOME_FAILED


def _handle_errors(func: F) -> F:
    """Typed errors -> one line on stderr and the contract's exit code (traceback with -v)."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except OssnetError as exc:
            if kwargs.get("verbose"):
                traceback.print_exc()
            click.echo(f"{_PROG}: error: {exc}", err=True)
            sys.exit(_exit_code(exc))
        except KeyboardInterrupt:
            click.echo(f"{_PROG}: interrupted (nothing was moved into place)", err=True)
            sys.exit(130)

    return wrapper  # type: ignore[return-value]


def _size(n: int) -> str:
    return f"{n / 2**20:.2f} MiB" if n >= 2**20 else f"{n / 2**10:.1f} KiB"


def _say(quiet: bool) -> Callable[[str], None]:
    return (lambda _line: None) if quiet else (lambda line: click.echo(f"{_PROG}: {line}", err=True))


def _parity_line(report: Any) -> str:
    figures = ", ".join(f"{d.tensor} {d.max_abs:.2g}" for d in report.deviations)
    return f"max |diff| {figures} (rtol {report.deviations[0].rtol:g}, atol {report.deviations[0].atol:g})"


class _DefaultGroup(click.Group):
    """A group whose first argument, if it is not a subcommand, goes to ``export``."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        if args and args[0] not in self.commands and args[0] not in ("-h", "--help"):
            args = ["export", *args]
        return super().parse_args(ctx, args)


@click.group(cls=_DefaultGroup, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
def main() -> None:
    """Export OSS-Net checkpoints as verified ONNX graphs, and re-verify exported folders.

    `ossnet-export CHECKPOINT [OPTIONS]` is `ossnet-export export CHECKPOINT [OPTIONS]`.
    """


def _check_profile(min_q: int, opt_q: int, max_q: int) -> Any:
    from ossnet_export.trt import QueryProfile

    try:
        return QueryProfile(min_q, opt_q, max_q)
    except OssnetError as exc:
        raise click.UsageError(str(exc)) from None


def _tolerances(atol: float | None, rtol: float | None) -> dict[str, float]:
    """The parity tolerances the user set (the rest keep ``ExportOptions``' defaults, 1e-5 / 1e-4)."""
    return {name: value for name, value in (("atol", atol), ("rtol", rtol)) if value is not None}


@main.command("export")
@click.argument("checkpoint", type=click.Path(path_type=Path))
@click.option("-o", "--output", type=click.Path(path_type=Path), default=None,
              help="Output folder (default: beside the checkpoint, named after it: run.pt -> run/).")
@click.option("--opset", type=click.IntRange(18, 23), default=20, show_default=True, help="ONNX opset.")
@click.option("--fp16", is_flag=True, help="Also write decoder.fp16.onnx if it passes the fp16 gate.")
@click.option("--reference-volume", type=click.Path(path_type=Path, exists=True), default=None,
              help="A real volume (NIfTI, case folder) for verification and the fp16 gate instead of the phantom.")
@click.option("--trt", is_flag=True, help="Build TensorRT engines (EP-context models) after the ONNX graphs.")
@click.option("--min-queries", type=click.IntRange(min=1), default=1, show_default=True, help="TensorRT profile minimum.")
@click.option("--opt-queries", type=click.IntRange(min=1), default=16384, show_default=True,
              help="TensorRT profile optimum.")
@click.option("--max-queries", type=click.IntRange(min=1), default=32768, show_default=True,
              help="TensorRT profile maximum (the runtime's max_queries must not exceed it).")
@click.option("--no-verify", is_flag=True, help="Skip the comparison with PyTorch (structural checks still run).")
@click.option("--atol", type=click.FloatRange(min=0.0), default=None,
              help="Absolute tolerance of the fp32 comparison with PyTorch  [default: 1e-05]; recorded in ossnet.parity.")
@click.option("--rtol", type=click.FloatRange(min=0.0), default=None,
              help="Relative tolerance of the fp32 comparison with PyTorch  [default: 0.0001]; recorded in ossnet.parity.")
@click.option("--overwrite", is_flag=True, help="Replace an existing output folder.")
@click.option("-q", "--quiet", is_flag=True, help="No progress and no report (warnings and errors still print).")
@click.option("-v", "--verbose", is_flag=True, help="Tracebacks with errors.")
@_handle_errors
def export_command(
    checkpoint: Path,
    output: Path | None,
    opset: int,
    fp16: bool,
    reference_volume: Path | None,
    trt: bool,
    min_queries: int,
    opt_queries: int,
    max_queries: int,
    no_verify: bool,
    atol: float | None,
    rtol: float | None,
    overwrite: bool,
    quiet: bool,
    verbose: bool,
) -> None:
    """Export CHECKPOINT as encoder.onnx + decoder.onnx, verified against PyTorch."""
    from ossnet_export.export_onnx import ExportOptions, export_checkpoint

    profile = _check_profile(min_queries, opt_queries, max_queries) if trt else None
    options = ExportOptions(
        opset=opset,
        verify=not no_verify,
        fp16=fp16,
        reference_volume=None if reference_volume is None else str(reference_volume),
        overwrite=overwrite,
        **_tolerances(atol, rtol),
    )
    if no_verify:
        click.echo(f"{_PROG}: WARNING: --no-verify: the graphs will NOT be compared with PyTorch", err=True)
    result = export_checkpoint(checkpoint, output, options=options, progress=_say(quiet))
    if not quiet:
        _print_report(result)
    for note in result.warnings:
        click.echo(f"{_PROG}: WARNING: {note}", err=True)
    code = EXIT_OK
    if result.fp16_refused is not None:
        click.echo(f"{_PROG}: error: {result.fp16_refused} (encoder.onnx and decoder.onnx were written)", err=True)
        code = EXIT_SOME_FAILED
    if profile is not None:
        _build_engines(result.directory, profile, overwrite=overwrite, quiet=quiet)
    sys.exit(code)


def _print_report(result: Any) -> None:
    from ossnet_train.config import VARIANT_SPECS

    meta = result.metadata["encoder"]
    name = VARIANT_SPECS[meta.variant].display_name if meta.variant in VARIANT_SPECS else meta.variant
    click.echo(f"{result.directory}/ ({name}, preset {meta.preset}, opset {meta.provenance['opset']}, "
               f"pair_id {meta.pair_id[:12]})")
    for name, size in result.files.items():
        click.echo(f"  {name:<20} {_size(size):>11}")
    if result.parity is not None:
        click.echo(f"  parity vs PyTorch ({result.parity.reference}, N={'/'.join(map(str, result.parity.query_counts))}): "
                   f"{_parity_line(result.parity)}: passed")
    if result.fp16 is not None:
        verdict = "refused" if result.fp16_refused else "passed"
        click.echo(f"  fp16 vs fp32: {_parity_line(result.fp16)}; Dice {result.fp16.extra['dice']:.5f} over "
                   f"{result.fp16.extra['dice_voxels']} voxels: {verdict}")
    times = ", ".join(f"{k.replace('_', ' ')} {v:.1f} s" for k, v in result.seconds.items())
    click.echo(f"  time: {times}")


def _build_engines(directory: Path, profile: Any, *, overwrite: bool, quiet: bool) -> None:
    """``--trt``: refuse in one message (exit 3) where TensorRT or a GPU is missing or TensorRT is the wrong major."""
    from ossnet_export.trt import build_folder_engines, detect_environment, require_environment

    env = detect_environment()
    require_environment(env)
    say = _say(quiet)
    say(f"building TensorRT engines (TensorRT {env.tensorrt_version}, compute capability {env.compute_capability}, "
        f"queries {profile.min_queries}/{profile.opt_queries}/{profile.max_queries})")
    for build in build_folder_engines(directory, env=env, profile=profile, overwrite=overwrite):
        if not quiet:
            click.echo(f"  {build.context_path.name:<24} built in {build.build_seconds:.1f} s; "
                       f"{build.side_file.name} written")


@main.command("verify")
@click.argument("directory", type=click.Path(path_type=Path, exists=True, file_okay=False))
@click.option("--checkpoint", required=True, type=click.Path(path_type=Path),
              help="The checkpoint the graphs were exported from.")
@click.option("--reference-volume", type=click.Path(path_type=Path, exists=True), default=None,
              help="A real volume instead of the phantom.")
@click.option("--atol", type=click.FloatRange(min=0.0), default=None,
              help="Absolute tolerance of the fp32 comparison with PyTorch  [default: 1e-05]; recorded in ossnet.parity.")
@click.option("--rtol", type=click.FloatRange(min=0.0), default=None,
              help="Relative tolerance of the fp32 comparison with PyTorch  [default: 0.0001]; recorded in ossnet.parity.")
@click.option("-q", "--quiet", is_flag=True, help="Print nothing on success.")
@click.option("-v", "--verbose", is_flag=True, help="Tracebacks with errors.")
@_handle_errors
def verify_command(directory: Path, checkpoint: Path, reference_volume: Path | None, atol: float | None,
                   rtol: float | None, quiet: bool, verbose: bool) -> None:
    """Re-run the comparison with PyTorch on the graphs in DIRECTORY; non-zero exit names the deviation."""
    from ossnet_export.export_onnx import ExportOptions, verify_export

    options = ExportOptions(reference_volume=None if reference_volume is None else str(reference_volume),
                            **_tolerances(atol, rtol))
    reports = verify_export(directory, checkpoint, options=options)
    if not quiet:
        for name, report in reports.items():
            extra = f"; Dice {report.extra['dice']:.5f}" if "dice" in report.extra else ""
            click.echo(f"{directory}: {name} {_parity_line(report)}{extra}: passed")
    sys.exit(EXIT_OK)


if __name__ == "__main__":
    main(prog_name=_PROG)
