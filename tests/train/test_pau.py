"""PAU (ossnet_train.pau): values against float64, gradients, the lean backward and its switch."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ossnet_train import pau as pau_module
from ossnet_train.pau import (
    PADE_LEAKY_RELU_DENOMINATOR,
    PADE_LEAKY_RELU_NUMERATOR,
    PAU,
    PAUFunction,
    lean_backward,
    rational,
)


def reference64(x: np.ndarray, numerator: np.ndarray, denominator: np.ndarray) -> np.ndarray:
    """P(x)/Q(x) in float64 from explicit power sums (independent of the module's Horner form)."""
    x = x.astype(np.float64)
    p = sum(float(numerator[k]) * x**k for k in range(6))
    q = 1.0 + sum(abs(float(denominator[k - 1])) * np.abs(x) ** k for k in range(1, 5))
    return p / q


def assert_matches_float64(x32: torch.Tensor) -> None:
    unit = PAU()
    with torch.no_grad():
        y = unit(x32).numpy()
    assert y.dtype == np.float32
    assert np.isfinite(y).all()
    y64 = reference64(x32.numpy(), unit.numerator.detach().numpy(), unit.denominator.detach().numpy())
    err = np.abs(y.astype(np.float64) - y64) / np.maximum(1.0, np.abs(y64))
    assert err.max() <= 1e-6, f"max scaled error {err.max():.3g} at x={x32[int(err.argmax())].item()}"


def test_initial_coefficients_are_the_leaky_relu_fit() -> None:
    unit = PAU()
    assert unit.numerator.shape == (6,)
    assert unit.denominator.shape == (4,)
    assert sum(p.numel() for p in unit.parameters()) == 10
    np.testing.assert_array_equal(unit.numerator.detach().numpy(), np.float32(PADE_LEAKY_RELU_NUMERATOR))
    np.testing.assert_array_equal(unit.denominator.detach().numpy(), np.float32(PADE_LEAKY_RELU_DENOMINATOR))
    # The fit approximates leaky ReLU: about x for x > 0, close to 0 for x < 0.
    with torch.no_grad():
        y = unit(torch.tensor([-2.0, 2.0]))
    assert abs(y[0].item()) < 0.1
    assert abs(y[1].item() - 2.0) < 0.1


def test_each_module_owns_its_parameters() -> None:
    first, second = PAU(), PAU()
    with torch.no_grad():
        first.numerator[1] += 1.0
    assert not torch.equal(first.numerator, second.numerator)


def test_dense_grid_matches_float64() -> None:
    assert_matches_float64(torch.linspace(-20.0, 20.0, 400_001))


def test_log_spaced_magnitudes_match_float64_and_stay_finite() -> None:
    magnitude = torch.logspace(-3, 6, 20_001, dtype=torch.float64).to(torch.float32)
    x = torch.cat([magnitude, -magnitude, torch.zeros(1)])
    assert_matches_float64(x)


def _random_coefficients() -> tuple[torch.Tensor, torch.Tensor]:
    """float64 coefficients with |b_k| well away from 0 (finite differences cross no kink), one negative."""
    gen = torch.Generator().manual_seed(3)
    numerator = torch.randn(6, generator=gen, dtype=torch.float64)
    denominator = torch.tensor([0.3, -1.2, 0.05, -0.4], dtype=torch.float64)
    return numerator, denominator


def test_gradcheck_function_in_float64() -> None:
    numerator, denominator = _random_coefficients()
    x = torch.randn(40, generator=torch.Generator().manual_seed(1), dtype=torch.float64) * 3
    x[0] = 0.0  # |x| has its kink here; sign(0) = 0 matches the symmetric difference
    inputs = (x.requires_grad_(), numerator.requires_grad_(), denominator.requires_grad_())
    assert torch.autograd.gradcheck(PAUFunction.apply, inputs, eps=1e-6, atol=1e-7, rtol=1e-6)


def test_gradcheck_module_in_training_mode() -> None:
    unit = PAU().double().train()
    x = torch.randn(30, generator=torch.Generator().manual_seed(2), dtype=torch.float64, requires_grad=True)
    assert unit(x).grad_fn.name() == "PAUFunctionBackward"
    assert torch.autograd.gradcheck(unit, (x,), eps=1e-6, atol=1e-7, rtol=1e-6)


def test_function_gradients_equal_autograd_of_plain_expression() -> None:
    numerator, denominator = _random_coefficients()
    denominator[2] = 0.0  # sign(0) = 0: the subgradient autograd takes for abs at 0
    x = torch.randn(500, generator=torch.Generator().manual_seed(4), dtype=torch.float64) * 4
    x[:3] = torch.tensor([0.0, -0.0, 1e-12], dtype=torch.float64)
    grad_out = torch.randn(500, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    results = []
    for fn in (PAUFunction.apply, rational):
        leaves = [t.clone().requires_grad_() for t in (x, numerator, denominator)]
        y = fn(*leaves)
        results.append((y.detach(), torch.autograd.grad(y, leaves, grad_out)))
    (y_lean, grads_lean), (y_plain, grads_plain) = results
    assert torch.equal(y_lean, y_plain)
    for name, lean, plain in zip(("x", "numerator", "denominator"), grads_lean, grads_plain, strict=True):
        torch.testing.assert_close(lean, plain, rtol=1e-12, atol=1e-12, msg=f"gradient w.r.t. {name}")


def test_chunked_recomputation_equals_one_slice(monkeypatch: pytest.MonkeyPatch) -> None:
    x = torch.randn(3, 50, 7, generator=torch.Generator().manual_seed(6))
    grad_out = torch.randn(3, 50, 7, generator=torch.Generator().manual_seed(7))
    runs = []
    for chunk in (1 << 20, 64):  # one slice, then 8 slices of 132 (the last one partial)
        monkeypatch.setattr(pau_module, "_MIN_CHUNK_ELEMENTS", chunk)
        unit = PAU().train()
        leaf = x.clone().requires_grad_()
        y = unit(leaf)
        y.backward(grad_out)
        runs.append((y.detach(), leaf.grad, unit.numerator.grad, unit.denominator.grad))
    for one, many in zip(*runs, strict=True):
        torch.testing.assert_close(many, one, rtol=1e-5, atol=1e-6)
    assert torch.equal(runs[0][0], runs[1][0])


def test_lean_function_keeps_only_input_and_coefficients() -> None:
    unit = PAU().train()
    x = torch.randn(4, 8, requires_grad=True)
    y = unit(x)
    saved = y.grad_fn.saved_tensors
    assert len(saved) == 3
    assert saved[0] is x or saved[0].data_ptr() == x.data_ptr()
    assert {t.numel() for t in saved[1:]} == {6, 4}


def test_plain_ops_in_eval_no_grad_and_when_switched_off() -> None:
    unit = PAU()
    x = torch.randn(16, requires_grad=True)
    unit.train()
    lean = unit(x)
    with lean_backward(False):
        plain = unit(x)
    assert plain.grad_fn.name() == "DivBackward0"
    assert torch.equal(lean, plain)  # same arithmetic: bit-identical forward
    unit.eval()
    assert unit(x).grad_fn.name() == "DivBackward0"
    with torch.no_grad():
        assert unit.train()(x).grad_fn is None


def test_export_sees_plain_elementwise_ops() -> None:
    exported = torch.export.export(PAU().eval(), (torch.randn(2, 5),))
    targets = {str(node.target) for node in exported.graph.nodes if node.op == "call_function"}
    assert targets <= {"aten.mul.Tensor", "aten.add.Tensor", "aten.abs.default", "aten.div.Tensor", "aten.select.int"}
    assert {"aten.abs.default", "aten.div.Tensor"} <= targets
