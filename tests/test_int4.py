import numpy as np
import pytest

from k25ref.checkpoint import bf16_to_f32, f32_to_bf16
from k25ref.int4 import Int4Weight, dequantize, pack, quantize, unpack


def test_pack_unpack_round_trip(rng):
    q = rng.integers(-8, 8, size=(5, 64)).astype(np.int8)
    assert np.array_equal(unpack(pack(q), 64), q)


def test_nibble_order_low_first():
    # element 8j+i sits in nibble i, stored as q+8: codes 0..7 -> values -8..-1
    q = np.arange(-8, 0, dtype=np.int8)[None, :]            # [-8, -7, ..., -1]
    word = pack(q)[0, 0]
    assert np.uint32(word) == 0x76543210


def test_sign_bit_set_for_high_code():
    q = np.zeros((1, 8), np.int8)
    q[0, 7] = 7                                              # u = 15 in the top nibble -> negative int32
    assert pack(q)[0, 0] < 0 and unpack(pack(q), 8)[0, 7] == 7


def test_pack_rejects_out_of_range():
    with pytest.raises(ValueError):
        pack(np.array([[8] * 8]))


def test_dequantize_is_bf16_of_exact_product(rng):
    w = quantize(rng.standard_normal((4, 64)).astype(np.float32))
    q = unpack(w.packed, 64).astype(np.float64).reshape(4, 2, 32)
    exact = (q * w.scale[:, :, None]).reshape(4, 64)
    got = dequantize(w)
    assert np.array_equal(got, bf16_to_f32(f32_to_bf16(exact.astype(np.float32))))
    assert np.abs(got - exact).max() <= np.abs(exact).max() * 2 ** -8    # bf16 keeps 8 significant bits


def test_quantize_error_is_within_half_a_step(rng):
    W = rng.standard_normal((8, 128)).astype(np.float32)
    w = quantize(W)
    step = np.repeat(w.scale, 32, axis=1)
    assert np.all(np.abs(dequantize(w) - W) <= 0.5 * step + np.abs(W) * 2 ** -7)


def test_bf16_round_trip_and_ties():
    x = np.array([1.0, -2.5, 3.140625, np.inf, -np.inf], np.float32)
    assert np.array_equal(bf16_to_f32(f32_to_bf16(x)), x)
    # 1 + 2^-8 is exactly between two bf16 values: ties go to even (1.0)
    assert bf16_to_f32(f32_to_bf16(np.float32(1 + 2 ** -8))) == 1.0
    assert bf16_to_f32(f32_to_bf16(np.float32(1 + 3 * 2 ** -8))) == np.float32(1 + 2 ** -6)
    assert np.isnan(bf16_to_f32(f32_to_bf16(np.float32(np.nan))))


def test_int4_weight_group_size(rng):
    w = quantize(rng.standard_normal((2, 64)).astype(np.float32), group_size=32)
    assert isinstance(w, Int4Weight) and w.group_size == 32 and w.packed.shape == (2, 8)


def test_dequantize_rounds_in_the_scales_dtype(rng):
    """compressed-tensors computes q.to(scale.dtype) * scale: bf16 (K2.5), float16, or the float32 product."""
    q = rng.integers(-8, 8, size=(4, 64))
    scale = (rng.random((4, 2)) * 0.02 + 0.001).astype(np.float32)
    product = (q.astype(np.float32).reshape(4, 2, 32) * scale[:, :, None]).reshape(4, 64)
    f32 = dequantize(Int4Weight(pack(q), scale, (4, 64), "F32"))
    assert np.array_equal(f32, product)
    s16 = scale.astype(np.float16).astype(np.float32)
    f16 = dequantize(Int4Weight(pack(q), s16, (4, 64), "F16"))
    p16 = (q.astype(np.float32).reshape(4, 2, 32) * s16[:, :, None]).reshape(4, 64)
    assert np.array_equal(f16, p16.astype(np.float16).astype(np.float32)) and not np.array_equal(f16, p16)


def test_int4_weight_checks_its_scales(rng):
    q = pack(rng.integers(-8, 8, size=(2, 32)))
    with pytest.raises(ValueError, match="not all bfloat16"):
        Int4Weight(q, np.full((2, 1), 0.1, np.float32), (2, 32))                   # 0.1 is not a bf16 value
    with pytest.raises(ValueError, match="F64"):
        Int4Weight(q, np.ones((2, 1), np.float32), (2, 32), "F64")
    assert Int4Weight(q, np.array([[2.0], [-3.0]], np.float32), (2, 32)).scale_max == 3.0
