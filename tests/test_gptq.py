"""Tests of the torch-free GPTQ / RTN quantizers (llama2rs.gptq)."""

from __future__ import annotations

import numpy as np
import pytest

from llama2rs.quantize.gptq import (
    HessianAccumulator,
    find_params,
    gptq_quantize,
    layer_output_error,
    quantize_rtn,
    quantize_to_int,
)
from llama2rs.quantize.affine import AffineQuantized

SHAPES = [(64, 172), (172, 64), (30, 50), (17, 33)]
GROUPS = [32, 64, 128, -1]


def correlated_inputs(n: int, cols: int, seed: int) -> np.ndarray:
    """Inputs with strong column correlations (low-rank mixing plus a little noise) and
    unequal column scales."""
    rng = np.random.default_rng(seed)
    rank = max(2, cols // 8)
    z = rng.standard_normal((n, rank))
    mix = rng.standard_normal((rank, cols))
    x = z @ mix + 0.1 * rng.standard_normal((n, cols))
    return x * rng.uniform(0.5, 2.0, size=cols)


def hessian_of(x: np.ndarray) -> np.ndarray:
    acc = HessianAccumulator(x.shape[1])
    acc.add(x)
    return acc.hessian


# ----------------------------------------------------------------------------- quantizer


def test_find_params_asym_4bit_hand_computed() -> None:
    w = np.array(
        [
            [-1.0, 2.5, 3.5, 14.0],  # xmin -1, xmax 14: scale 1, zero 1
            [-0.5, 14.5, 1.5, 0.0],  # scale 1, zero round(0.5) = 0 (half to even)
            [0.0, 0.0, 0.0, 0.0],  # all zero -> [-1, 1]: scale float32(2/15), zero 7 (see below)
            [1.0, 2.0, 3.0, 15.0],  # all positive: xmin = 0 -> scale 1, zero 0
        ]
    )
    scale, zero = find_params(w, bits=4, sym=False)
    assert scale.dtype == np.float32 and zero.dtype == np.uint8
    np.testing.assert_allclose(scale, [1.0, 1.0, 2.0 / 15.0, 1.0], rtol=1e-7)
    # float32(2/15) rounds up, so 1 / scale = 7.4999996 -> 7 (torch's float32 arithmetic agrees)
    np.testing.assert_array_equal(zero, [1, 0, 7, 0])
    q = quantize_to_int(w, scale, zero, bits=4)
    # round(2.5) = 2 and round(3.5) = 4 (half to even, as torch.round)
    np.testing.assert_array_equal(q[0], [0, 3, 5, 15])
    np.testing.assert_array_equal(q[1], [0, 14, 2, 0])
    np.testing.assert_array_equal(q[2], [7, 7, 7, 7])
    np.testing.assert_array_equal(q[3], [1, 2, 3, 15])


def test_find_params_half_scales_round_before_the_zero_point() -> None:
    w = np.array([[0.0, 0.0, 0.0, 0.0], [-1.0, 2.5, 3.5, 14.0], [0.0, 1e-9, 0.0, 2e-9]])
    scale, zero = find_params(w, bits=4, sym=False, half_scales=True)
    # 2/15 as fp16 is 0.13330078125; 1 / that = 7.5018 rounds to 8 (float32's 2/15 gave 7).
    assert scale[0] == np.float32(np.float16(2.0 / 15.0)) == 0.13330078125 and zero[0] == 8
    assert scale[1] == 1.0 and zero[1] == 1
    # Below fp16's normal range the float32 scale stays.
    assert scale[2] == np.float32(2e-9 / 15) and scale[2].astype(np.float16) != scale[2]


def test_find_params_sym_4bit_hand_computed() -> None:
    w = np.array(
        [
            [-3.75, 1.0, 0.5, 2.5],  # xmax = 3.75, xmin = -3.75: scale 0.5, zero 8
            [0.0, 0.0, 0.0, 0.0],  # -> [-1, 1]: scale 2/15, zero 8
            [0.0, 1.5, 3.0, 0.75],  # no negative value: xmin stays 0 (reference quirk)
        ]
    )
    scale, zero = find_params(w, bits=4, sym=True)
    np.testing.assert_allclose(scale, [0.5, 2.0 / 15.0, 0.2], rtol=1e-7)
    np.testing.assert_array_equal(zero, [8, 8, 8])
    q = quantize_to_int(w, scale, zero, bits=4)
    # -7.5 -> -8 (half to even) + 8 = 0; 2 + 8; 1 + 8; 5 + 8
    np.testing.assert_array_equal(q[0], [0, 10, 9, 13])
    np.testing.assert_array_equal(q[1], [8, 8, 8, 8])
    # quirk: only the upper half of the grid is usable, 3.0 / 0.2 + 8 = 23 clamps to 15
    np.testing.assert_array_equal(q[2], [8, 15, 15, 12])


def test_find_params_8bit_hand_computed() -> None:
    w = np.array([[-1.0, 254.0, 10.5, 11.5], [-127.5, 100.0, 0.0, 2.5]])
    scale, zero = find_params(w, bits=8, sym=False)
    np.testing.assert_allclose(scale[0], 1.0)
    assert zero[0] == 1
    np.testing.assert_array_equal(quantize_to_int(w, scale, zero, bits=8)[0], [0, 255, 11, 13])
    np.testing.assert_allclose(scale[1], 227.5 / 255.0, rtol=1e-7)
    assert zero[1] == round(127.5 / np.float32(227.5 / 255.0))
    scale, zero = find_params(w, bits=8, sym=True)
    # row 0: [-254, 254] -> scale 508/255; row 1: [-127.5, 127.5] -> scale 1
    np.testing.assert_allclose(scale, [508.0 / 255.0, 1.0], rtol=1e-7)
    np.testing.assert_array_equal(zero, [128, 128])
    # row 1: xmax = 127.5 -> scale 1; -127.5 -> -128 + 128 = 0; 2.5 -> 2 + 128
    np.testing.assert_array_equal(quantize_to_int(w, scale, zero, bits=8)[1], [0, 228, 128, 130])


@pytest.mark.parametrize("bits", [4, 8])
@pytest.mark.parametrize("group_size", [32, 64, -1])
def test_rtn_error_bounded_by_half_scale(bits: int, group_size: int) -> None:
    rng = np.random.default_rng(1)
    w = rng.standard_normal((40, 172)).astype(np.float32)
    aq = quantize_rtn(w, bits=bits, group_size=group_size)
    assert aq.perm is None
    gs = aq.group_size
    assert gs == (172 if group_size == -1 else group_size)
    assert aq.scales.shape == (40, -(-172 // gs))
    step = aq.scales[:, np.arange(172) // gs]
    err = np.abs(aq.dequantize().astype(np.float64) - w)
    assert np.all(err <= step / 2 * (1 + 1e-5) + 1e-7)


def test_rtn_rejects_bad_arguments() -> None:
    w = np.ones((4, 8))
    with pytest.raises(ValueError):
        quantize_rtn(w, bits=3)
    with pytest.raises(ValueError):
        quantize_rtn(w, group_size=0)
    with pytest.raises(ValueError):
        quantize_rtn(np.full((4, 8), np.nan))


# ----------------------------------------------------------------------------- Hessian


def test_hessian_accumulator_running_mean() -> None:
    x = correlated_inputs(100, 12, seed=2)
    acc = HessianAccumulator(12)
    for chunk in (x[:7], x[7:40], x[40:41], x[41:]):
        acc.add(chunk)
    assert acc.count == 100
    np.testing.assert_allclose(acc.hessian, 2.0 / 100 * x.T @ x, rtol=1e-12, atol=1e-12)
    acc3 = HessianAccumulator(12)
    acc3.add(x.reshape(4, 25, 12))  # leading dims are flattened
    np.testing.assert_allclose(acc3.hessian, acc.hessian, rtol=1e-12, atol=1e-12)
    with pytest.raises(ValueError):
        acc.add(np.ones((3, 11)))


# ----------------------------------------------------------------------------- GPTQ


@pytest.mark.parametrize("sym", [False, True])
@pytest.mark.parametrize("bits", [4, 8])
@pytest.mark.parametrize("act_order", [False, True])
def test_gptq_with_scaled_identity_hessian_equals_rtn(sym: bool, bits: int, act_order: bool) -> None:
    # H = c*I: the inverse factor is diagonal, so Hinv[i, i+1:] = 0 and no error is propagated;
    # every group is fitted on the untouched weights -> exactly RTN. With equal diagonal entries
    # the (stable) act-order permutation is the identity.
    rng = np.random.default_rng(3)
    w = rng.standard_normal((17, 50)).astype(np.float32)
    for group_size in (16, -1):
        rtn = quantize_rtn(w, bits=bits, group_size=group_size, sym=sym)
        g = gptq_quantize(w, 3.0 * np.eye(50), bits=bits, group_size=group_size, sym=sym, act_order=act_order)
        np.testing.assert_array_equal(g.q, rtn.q)
        np.testing.assert_array_equal(g.scales, rtn.scales)
        np.testing.assert_array_equal(g.zeros, rtn.zeros)
        if act_order:
            np.testing.assert_array_equal(g.perm, np.arange(50))
        else:
            assert g.perm is None


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("group_size", GROUPS)
@pytest.mark.parametrize("act_order", [False, True])
def test_gptq_beats_rtn_on_correlated_inputs(shape: tuple[int, int], group_size: int, act_order: bool) -> None:
    rows, cols = shape
    rng = np.random.default_rng(rows * 1000 + cols)
    w = rng.standard_normal((rows, cols)).astype(np.float32)
    x = correlated_inputs(256, cols, seed=cols)
    h = hessian_of(x)
    rtn = quantize_rtn(w, bits=4, group_size=group_size)
    g = gptq_quantize(w, h, bits=4, group_size=group_size, act_order=act_order)
    assert g.q.shape == (rows, cols)
    err_rtn = layer_output_error(w, rtn.dequantize(), x)
    err_gptq = layer_output_error(w, g.dequantize(), x)
    assert err_gptq < 0.7 * err_rtn, (err_gptq, err_rtn)


@pytest.mark.parametrize("group_size", [8, 32, -1])
def test_act_order_layout(group_size: int) -> None:
    rows, cols = 12, 44
    rng = np.random.default_rng(5)
    w = rng.standard_normal((rows, cols)).astype(np.float32)
    x = correlated_inputs(200, cols, seed=6)
    h = hessian_of(x)
    g = gptq_quantize(w, h, bits=4, group_size=group_size, act_order=True)
    assert g.perm is not None and g.perm.dtype == np.int32
    np.testing.assert_array_equal(np.sort(g.perm), np.arange(cols))
    np.testing.assert_array_equal(g.perm, np.argsort(-np.diag(h), kind="stable"))
    assert not np.array_equal(g.perm, np.arange(cols))  # a real permutation in this case
    # Each stored group is contiguous and self-consistent: re-quantizing the stored dequantized
    # columns with that group's scale/zero gives back q.
    stored = g.dequantize_stored()
    gs = g.group_size
    for start in range(0, cols, gs):
        k = start // gs
        sl = slice(start, min(start + gs, cols))
        np.testing.assert_array_equal(quantize_to_int(stored[:, sl], g.scales[:, k], g.zeros[:, k], 4), g.q[:, sl])
    # dequantize() is the stored matrix in original input order
    np.testing.assert_array_equal(g.dequantize()[:, g.perm], stored)
    np.testing.assert_allclose(x[:, g.perm] @ stored.T, x @ g.dequantize().T, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("act_order", [False, True])
def test_dead_columns(act_order: bool) -> None:
    rows, cols = 10, 40
    rng = np.random.default_rng(7)
    w = rng.standard_normal((rows, cols)).astype(np.float32)
    x = correlated_inputs(128, cols, seed=8)
    dead = [0, 5, 17, 39]
    x[:, dead] = 0.0
    h = hessian_of(x)
    assert np.all(np.diag(h)[dead] == 0)
    g = gptq_quantize(w, h, bits=4, group_size=16, act_order=act_order)
    deq = g.dequantize()
    assert np.all(np.isfinite(deq))
    np.testing.assert_array_equal(deq[:, dead], 0.0)
    rtn = quantize_rtn(w, bits=4, group_size=16)
    assert layer_output_error(w, deq, x) < layer_output_error(w, rtn.dequantize(), x)


def test_8bit_much_better_than_4bit() -> None:
    rng = np.random.default_rng(9)
    w = rng.standard_normal((64, 172)).astype(np.float32)
    x = correlated_inputs(256, 172, seed=10)
    h = hessian_of(x)
    for act_order in (False, True):
        e4 = layer_output_error(w, gptq_quantize(w, h, bits=4, group_size=32, act_order=act_order).dequantize(), x)
        e8 = layer_output_error(w, gptq_quantize(w, h, bits=8, group_size=32, act_order=act_order).dequantize(), x)
        assert e8 < e4 / 100, (e8, e4)


def test_block_size_does_not_change_result() -> None:
    rng = np.random.default_rng(11)
    w = rng.standard_normal((20, 70))
    h = hessian_of(correlated_inputs(150, 70, seed=12))
    for group_size, act_order in ((16, False), (24, True), (-1, False)):
        ref = gptq_quantize(w, h, group_size=group_size, act_order=act_order, block_size=128)
        for bs in (1, 5, 16, 33):
            got = gptq_quantize(w, h, group_size=group_size, act_order=act_order, block_size=bs)
            np.testing.assert_allclose(got.dequantize(), ref.dequantize(), atol=1e-6)


def unblocked_gptq(w: np.ndarray, h: np.ndarray, bits: int, group_size: int, percdamp: float) -> np.ndarray:
    """Plain OBQ-style sequential GPTQ (no act-order, no dead columns): quantize column j with
    the inverse Hessian of the columns not yet quantized, spread the error over those columns,
    then remove column j from the inverse Hessian. Returns the dequantized weights."""
    maxq = 2**bits - 1
    w = w.astype(np.float64).copy()
    rows, cols = w.shape
    h = h + percdamp * np.mean(np.diag(h)) * np.eye(cols)
    hinv = np.linalg.inv(h)  # over all columns; quantized ones are removed below
    out = np.zeros_like(w)
    scale = zero = np.zeros(rows)
    for j in range(cols):
        if j % group_size == 0:
            block = w[:, j : j + group_size]
            xmin = np.minimum(block.min(axis=1), 0)
            xmax = np.maximum(block.max(axis=1), 0)
            both = (xmin == 0) & (xmax == 0)
            xmin[both], xmax[both] = -1, 1
            # 4-bit scales are stored as fp16 (these are all in its normal range), 8-bit as float32.
            stored = np.float16 if maxq == 15 else np.float32
            scale = ((xmax - xmin) / maxq).astype(np.float32).astype(stored).astype(np.float64)
            zero = np.round(-xmin / scale)
        q = np.clip(np.round(w[:, j] / scale) + zero, 0, maxq)
        out[:, j] = scale * (q - zero)
        err = (w[:, j] - out[:, j]) / hinv[j, j]
        for k in range(j + 1, cols):
            w[:, k] -= err * hinv[j, k]
        # remove column j: Hinv <- Hinv - Hinv[:, j] Hinv[j, :] / Hinv[j, j]
        hinv = hinv - np.outer(hinv[:, j], hinv[j, :]) / hinv[j, j]
    return out


def test_blocked_equals_unblocked_obq_update() -> None:
    rng = np.random.default_rng(13)
    w = rng.standard_normal((3, 6))
    x = rng.standard_normal((40, 6)) @ rng.standard_normal((6, 6))  # correlated inputs
    h = hessian_of(x)
    expected = unblocked_gptq(w, h, bits=4, group_size=3, percdamp=0.01)
    for bs in (2, 128):
        got = gptq_quantize(w, h, bits=4, group_size=3, block_size=bs)
        np.testing.assert_allclose(got.dequantize(), expected, atol=1e-6)
    # ... and error feedback really happened (the result differs from RTN)
    assert not np.allclose(quantize_rtn(w, bits=4, group_size=3).dequantize(), expected)
    # a larger case, crossing block boundaries inside groups
    w = rng.standard_normal((5, 23))
    h = hessian_of(correlated_inputs(80, 23, seed=14))
    expected = unblocked_gptq(w, h, bits=4, group_size=5, percdamp=0.01)
    for bs in (3, 7, 128):
        got = gptq_quantize(w, h, bits=4, group_size=5, block_size=bs)
        np.testing.assert_allclose(got.dequantize(), expected, atol=1e-6)


def test_not_positive_definite_retries_with_more_damping() -> None:
    h = np.array([[1.0, 2.0], [2.0, 1.0]])  # eigenvalues -1 and 3; needs damping > 1
    w = np.array([[0.3, -0.7], [1.0, 0.2]])
    with pytest.warns(RuntimeWarning, match="not positive definite"):
        g = gptq_quantize(w, h, bits=4, group_size=-1)
    assert isinstance(g, AffineQuantized)
    assert np.all(np.isfinite(g.dequantize()))
    with pytest.raises(ValueError):
        gptq_quantize(w, np.full((2, 2), np.nan))
    with pytest.raises(ValueError):
        gptq_quantize(w, np.eye(3))


def test_layer_output_error() -> None:
    x = np.array([[1.0, 2.0], [0.0, 1.0]])
    w = np.array([[1.0, 0.0]])
    wq = np.array([[0.0, 1.0]])
    # rows: x @ (w - wq)^T = [1 - 2, 0 - 1] = [-1, -1] -> (1 + 1) / 2
    assert layer_output_error(w, wq, x) == pytest.approx(1.0)
