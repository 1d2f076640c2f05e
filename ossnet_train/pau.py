"""Padé activation unit (PAU) in plain tensor ops, with a memory-lean backward.

``y = P(x) / Q(x)`` with ``P(x) = a0 + a1 x + ... + a5 x^5`` and the "safe" denominator
``Q(x) = 1 + |b1| |x| + |b2| |x|^2 + |b3| |x|^3 + |b4| |x|^4`` (Q >= 1, so y is finite
wherever P is). Each activation site owns one :class:`PAU` with 10 learnable scalars:
``numerator`` (6,) = a0..a5 and ``denominator`` (4,) = b1..b4, initialised to the PAU
authors' "pade_optimized_leakyrelu" fit (as OSS-Net's reference code does). The reference needs a CUDA
extension; this is plain elementwise arithmetic (Abs, Mul, Add, Div), so it runs on CPU and
exports to ONNX as ordinary nodes.

Evaluation is Horner's scheme in the tensor's dtype (float32). For ``|x| <= 1e6`` it matches a
float64 evaluation of the same coefficients within ``1e-6 * max(1, |y|)`` (tested); the
numerator overflows float32 only beyond ``|x| ~ 7e7``, seven orders of magnitude above what
batch-normalised activations reach. A rescaled form (divide P and Q by ``|x|^4``) would stay
finite for every float, but it doubles the elementwise work, and these elementwise passes,
not the matrix products, dominate the decoder's cost on a CPU at the ``demo`` width.

Memory: composed from tensor ops, autograd would keep about ten intermediates of the input's
size per activation for backward. :class:`PAUFunction` keeps only the input and the 10
coefficients and recomputes the rest in backward, with analytic gradients; the forward is the
same arithmetic, so the forward result is bit-identical either way. The lean path is taken only
while training with autograd recording (:func:`lean_backward_active`); in eval mode, under
``torch.no_grad`` and while compiling or exporting, the module is the plain expression, which is
what ``torch.onnx.export(dynamo=True)`` sees.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn

__all__ = [
    "PADE_LEAKY_RELU_DENOMINATOR",
    "PADE_LEAKY_RELU_NUMERATOR",
    "PAU",
    "PAUFunction",
    "backward_chunk_elements",
    "lean_backward",
    "lean_backward_active",
    "rational",
    "rational_backward_",
    "rational_into",
]

#: a0..a5 of the "pade_optimized_leakyrelu" initialisation.
PADE_LEAKY_RELU_NUMERATOR: tuple[float, ...] = (
    3.35583603e-02,
    5.05000375e-01,
    1.65343934e00,
    2.01001052e00,
    9.31901999e-01,
    1.52424124e-01,
)
#: b1..b4 of the "pade_optimized_leakyrelu" initialisation.
PADE_LEAKY_RELU_DENOMINATOR: tuple[float, ...] = (
    3.30847488e-06,
    3.98021568e00,
    5.12471206e-07,
    3.01830109e-01,
)

# Recomputation in backward works on slices of this many elements (at least), so its
# temporaries do not grow with the number of queries. Large tensors are cut into at most
# _MAX_CHUNKS slices, which bounds the number of kernel launches on a GPU.
_MIN_CHUNK_ELEMENTS = 1 << 20
_MAX_CHUNKS = 8

_lean_enabled = True


@contextlib.contextmanager
def lean_backward(enabled: bool) -> Iterator[None]:
    """Switch the memory-lean backward (this module and the decoder's fused CBN+PAU) on or off.

    Values and gradients are the same either way (up to float rounding in the gradients);
    only the memory kept for backward changes. Off is the naive autograd composition, used by
    ``benchmarks/bench_train_memory.py`` to show the gain and by tests to compare the two.
    Not thread-safe: it sets a process-wide switch for the duration of the ``with`` block.
    """
    global _lean_enabled
    previous = _lean_enabled
    _lean_enabled = enabled
    try:
        yield
    finally:
        _lean_enabled = previous


def lean_backward_active(module: nn.Module, *tensors: torch.Tensor) -> bool:
    """True when ``module`` should use a hand-written lean backward for ``tensors``.

    That is: the switch of :func:`lean_backward` is on, the module is in training mode,
    autograd is recording, some input or parameter requires grad, and torch is not compiling
    or exporting (those must see plain ops).
    """
    if not (_lean_enabled and module.training and torch.is_grad_enabled()):
        return False
    if torch.compiler.is_compiling():
        return False
    return any(t.requires_grad for t in tensors)


def backward_chunk_elements(numel: int) -> int:
    """Slice length (elements) for recomputation over a tensor of ``numel`` elements."""
    return max(_MIN_CHUNK_ELEMENTS, -(-numel // _MAX_CHUNKS))


def rational(x: torch.Tensor, numerator: torch.Tensor, denominator: torch.Tensor) -> torch.Tensor:
    """``P(x) / Q(x)`` elementwise in plain, differentiable, exportable ops.

    ``x``: any shape and float dtype; ``numerator`` (6,) a0..a5, ``denominator`` (4,) b1..b4,
    same dtype. Returns a tensor of ``x``'s shape. Horner's scheme; this exact op order is
    what :func:`rational_into` reproduces in place.
    """
    p = numerator[5] * x + numerator[4]
    p = p * x + numerator[3]
    p = p * x + numerator[2]
    p = p * x + numerator[1]
    p = p * x + numerator[0]
    ax = x.abs()
    b = denominator.abs()
    q = b[3] * ax + b[2]
    q = q * ax + b[1]
    q = q * ax + b[0]
    q = q * ax + 1.0
    return p / q


@torch.no_grad()
def rational_into(
    x: torch.Tensor, numerator: torch.Tensor, denominator: torch.Tensor, out: torch.Tensor
) -> torch.Tensor:
    """:func:`rational` written into ``out`` (same shape as ``x``) with two temporaries.

    Bit-identical to :func:`rational` (same operations in the same order). ``out`` must not
    alias ``x``. Returns ``out``.
    """
    torch.mul(x, numerator[5], out=out)
    for k in (4, 3, 2, 1):
        out.add_(numerator[k]).mul_(x)
    out.add_(numerator[0])
    ax = x.abs()
    b = denominator.abs()
    q = ax * b[3]
    for k in (2, 1, 0):
        q.add_(b[k]).mul_(ax)
    q.add_(1.0)
    return out.div_(q)


@torch.no_grad()
def rational_backward_(
    x: torch.Tensor,
    grad: torch.Tensor,
    numerator: torch.Tensor,
    denominator: torch.Tensor,
    grad_numerator: torch.Tensor,
    grad_abs_denominator: torch.Tensor,
) -> torch.Tensor:
    """Gradients of :func:`rational` on one slice, recomputed from the input alone.

    ``x``, ``grad``: the slice's input and the gradient of the loss w.r.t. its output (same
    shape). ``grad_numerator`` (6,) and ``grad_abs_denominator`` (4,) are accumulators the
    slice's contributions are added to (the latter w.r.t. ``|b_k|``; the caller multiplies by
    ``sign(b_k)`` once at the end). Returns the gradient w.r.t. ``x`` (a new tensor).

    With ``y = P/Q``: ``dy/dx = (P'(x) - y Q'(x)) / Q``, ``dy/da_k = x^k / Q``,
    ``dy/d|b_k| = -y |x|^k / Q`` and ``Q'(x) = sign(x) (|b1| + 2|b2||x| + 3|b3||x|^2 + 4|b4||x|^3)``.
    At ``x = 0`` and ``b_k = 0`` the sign is 0, the subgradient autograd picks for ``abs``, so
    the result equals autograd of :func:`rational` everywhere.
    """
    a = numerator
    b = denominator.abs()
    ax = x.abs()
    q = ax * b[3]
    for k in (2, 1, 0):
        q.add_(b[k]).mul_(ax)
    q.add_(1.0)
    y = torch.mul(x, a[5])
    for k in (4, 3, 2, 1):
        y.add_(a[k]).mul_(x)
    y.add_(a[0]).div_(q)
    gq = torch.div(grad, q)
    del q

    power = gq.clone()
    grad_numerator[0] += power.sum()
    for k in range(1, 6):
        power.mul_(x)
        grad_numerator[k] += power.sum()
    torch.mul(gq, y, out=power)
    for k in range(4):
        power.mul_(ax)
        grad_abs_denominator[k] -= power.sum()
    del power

    dq = ax * (4.0 * b[3])
    dq.add_(3.0 * b[2]).mul_(ax).add_(2.0 * b[1]).mul_(ax).add_(b[0])
    dq.mul_(torch.sign(x)).mul_(y)
    del y, ax
    dp = torch.mul(x, 5.0 * a[5])
    dp.add_(4.0 * a[4]).mul_(x).add_(3.0 * a[3]).mul_(x).add_(2.0 * a[2]).mul_(x).add_(a[1])
    return dp.sub_(dq).mul_(gq)


class PAUFunction(torch.autograd.Function):
    """Autograd function of :func:`rational` that saves only its inputs.

    ``apply(x, numerator, denominator) -> y``; forward and backward work on flat slices of
    :func:`backward_chunk_elements` elements so their temporaries stay bounded.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, numerator: torch.Tensor, denominator: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        ctx.save_for_backward(x, numerator, denominator)
        flat = x.reshape(-1)
        out = torch.empty_like(flat)
        step = backward_chunk_elements(flat.numel())
        for start in range(0, flat.numel(), step):
            stop = start + step
            rational_into(flat[start:stop], numerator, denominator, out[start:stop])
        return out.view(x.shape)

    @staticmethod
    def backward(ctx, grad_y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:  # type: ignore[override]
        x, numerator, denominator = ctx.saved_tensors
        flat = x.reshape(-1)
        gflat = grad_y.reshape(-1)
        grad_x = torch.empty_like(flat)
        grad_num = torch.zeros_like(numerator)
        grad_absden = torch.zeros_like(denominator)
        step = backward_chunk_elements(flat.numel())
        for start in range(0, flat.numel(), step):
            stop = start + step
            grad_x[start:stop] = rational_backward_(
                flat[start:stop], gflat[start:stop], numerator, denominator, grad_num, grad_absden
            )
        return grad_x.view(x.shape), grad_num, grad_absden * torch.sign(denominator)


class PAU(nn.Module):
    """One Padé activation site: ``y = P(x) / Q(x)`` elementwise, 10 parameters.

    Input: any shape, float32 (float64 for gradient checks). Output: same shape and dtype.
    Parameters: ``numerator`` (6,) a0..a5 and ``denominator`` (4,) b1..b4, initialised to the
    leaky-ReLU fit.
    """

    def __init__(self) -> None:
        super().__init__()
        self.numerator = nn.Parameter(torch.tensor(PADE_LEAKY_RELU_NUMERATOR, dtype=torch.float32))
        self.denominator = nn.Parameter(torch.tensor(PADE_LEAKY_RELU_DENOMINATOR, dtype=torch.float32))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if lean_backward_active(self, x, self.numerator, self.denominator):
            return PAUFunction.apply(x, self.numerator, self.denominator)
        return rational(x, self.numerator, self.denominator)
