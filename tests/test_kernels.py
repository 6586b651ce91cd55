"""Every Numba kernel equals the NumPy reference it speeds up.

Each test runs the compiled kernel and its undecorated loop body (plain Python). CI runs this file twice:
`pytest` (kernels compiled) and `NUMBA_DISABLE_JIT=1 pytest -m kernels` (everything as Python), so shapes
stay small. Tolerances are rtol ~1e-5 of the output's scale: the kernels accumulate in float32 in another
order than NumPy/BLAS (fast-math reassociation), nothing else may differ.
"""
import numba
import numpy as np
import pytest

from k25ref.checkpoint import bf16_to_f32, f32_to_bf16
from k25ref.config import from_hf
from k25ref.engine import numba_ops
from k25ref.weights import ExpertStack
from k25ref.errors import ConfigError
from k25ref.int4 import Int4Weight, dequantize, quantize
from k25ref.kernels import FASTMATH, PARALLEL_MIN_WORK, compiled, jit, launch, warmup
from k25ref.kernels.bf16_matvec import _bf16_matmul_loops, _widen_rows_loops, bf16_matmul, bf16_matmul_numba, widen_rows
from k25ref.kernels import bf16_matvec, int4_matvec
from k25ref.kernels.int4_matvec import (SCALE_MAX, _int4_matmul_loops, bf16_product_numba, dequantize_dot2_numba,
                                        dequantize_row_numba, expand_scales_numba,
                                        int4_matmul, int4_matmul_numba, kernel_exact, split_nibbles)
from k25ref.kernels.mla_decode import _mla_absorbed_loops, attend_absorbed, mla_absorbed_numba
from k25ref import mla
from k25ref.kernels import mla_blocked, mla_decode, moe_route, rms_norm
from k25ref.kernels.moe_experts import (gather_experts, _group_by_expert_loops, _moe_experts_loops, _silu_loops,
                                        moe_experts, moe_experts_numba, silu_numba)
from k25ref.kernels.expf import _exp_loops, exp_numba
from k25ref.kernels.vision_attention import _softmax_rows_loops, softmax_rows, softmax_rows_numba
from k25ref.make_tiny import preset
from k25ref.mla import MLAWeights, attend_absorbed as attend_absorbed_ref, attend_naive, online_softmax_step
from k25ref.moe import moe
from k25ref.kernels import vision_block as vb
from k25ref.moonvit import VisionBlockWeights, attention, rope_2d, segments, vision_block
from k25ref.nn import gelu_erf, gelu_tanh, layer_norm, softmax
from k25ref.rope import apply_rope_interleaved
from conftest import check_close

pytestmark = pytest.mark.kernels


def close(out, ref, label, rtol=1e-5):
    """|out - ref| <= rtol * max|ref| everywhere (float64 reference)."""
    check_close(out, ref, atol=rtol * float(np.abs(ref).max()), label=label)


# ----------------------------------------------------------------------------
# INT4 matvec


def _every_scale_and_code():  # -> q, s: (16 N,) float32, every code -8..7 with every bf16 scale below SCALE_MAX
    """Every positive and negative bf16 scale (subnormals too) when compiled; as Python (NUMBA_DISABLE_JIT=1),
    every 61st, to keep the run short."""
    bits = np.arange(0x0001, 0x7F80, 1 if compiled() else 61, dtype=np.uint32) << np.uint32(16)
    s = bits.view(np.float32)
    s = s[s < SCALE_MAX]
    s = np.concatenate([s, -s])
    return np.tile(np.arange(-8, 8, dtype=np.float32), s.size), np.repeat(s, 16)


def _bf16_products_loops(q, s, s65537, out):
    for i in range(q.shape[0]):
        out[i] = bf16_product_numba(q[i], s[i], s65537[i])


_bf16_products = jit(_bf16_products_loops)


def test_bf16_product_rounds_like_dequantize_for_every_scale_and_code():
    """The split rounding equals int4.dequantize's (nearest, ties to even) over its whole domain, as numbers:
    q = 0 with a negative scale gives +0 where the reference has -0, which no sum can tell apart."""
    q, s = _every_scale_and_code()
    want = bf16_to_f32(f32_to_bf16(q * s))
    got = np.empty_like(q)
    _bf16_products(q, s, s * np.float32(65537.0), got)
    assert np.array_equal(got, want)
    assert np.array_equal(got[q != 0].view(np.uint32), want[q != 0].view(np.uint32))


@pytest.mark.parametrize("dtype, scale, exact", [("BF16", 0.0078125, True), ("BF16", 0.0, True),
                                                 ("BF16", 2.0**99, True), ("BF16", 2.0**-130, True),
                                                 ("BF16", 2.0**110, False), ("F16", 0.01, False), ("F32", 0.01, False)])
def test_kernel_exact_picks_kernel_or_reference(rng, dtype, scale, exact, monkeypatch):
    """int4_matmul runs the kernel for bf16 scales below SCALE_MAX (every scale of the matrix set to `scale`,
    subnormal included), and the reference, without calling the kernel, for F16/F32 scales (rounded in their
    own dtype) and above SCALE_MAX (the split's t overflows at 2^110). Either way: the reference's numbers."""
    codes = quantize(rng.standard_normal((8, 64), dtype=np.float32)).packed
    w = Int4Weight(codes, np.full((8, 2), scale, np.float32), (8, 64), dtype)
    assert kernel_exact(w) == exact
    calls = []
    kernel = int4_matvec.int4_matmul_numba
    monkeypatch.setattr(int4_matvec, "int4_matmul_numba", lambda *a: calls.append(1) or kernel(*a))
    x = rng.standard_normal((2, 64), dtype=np.float32)
    ref = x.astype(np.float64) @ dequantize(w).astype(np.float64).T
    out = int4_matmul(w, x)
    assert out.dtype == np.float32 and bool(calls) == exact
    close(out, ref, f"int4 matmul, {dtype} scales {scale}")


@pytest.mark.parametrize("G", [8, 32])
def test_dequantized_rows_are_int4_dequantize_exactly(rng, G):
    """Row buffers hold bit-for-bit the reference weights, in nibble-split order."""
    w = quantize(rng.standard_normal((3, 64), dtype=np.float32), G)
    ref = split_nibbles(dequantize(w))                                            # (3, 64)
    buf, s_w = np.empty(64, np.float32), np.empty(8, np.float32)
    for o in range(3):
        expand_scales_numba(w.scale[o], s_w)
        dequantize_row_numba(w.packed[o], s_w, buf)
        assert np.array_equal(buf, ref[o])


@pytest.mark.parametrize("G", [8, 32])
@pytest.mark.parametrize("body", ["kernel", "loops"])
def test_two_rows_per_pass_are_two_dot_products(rng, G, body):
    """dequantize_dot2 (two rows, one input: the MoE kernel's decoding passes) gives each row's own dot product
    with the reference's weights, in float32 up to summation order, on rows of 8 to 128 words."""
    for I in (64, 256, 1024):
        w = quantize(rng.standard_normal((2, I), dtype=np.float32), G)
        x = rng.standard_normal((1, I), dtype=np.float32)
        ref = dequantize(w).astype(np.float64) @ x[0].astype(np.float64)       # (2,)
        s0, s1 = np.empty(I // 8, np.float32), np.empty(I // 8, np.float32)
        expand = expand_scales_numba if body == "kernel" else int4_matvec._expand_scales_loops
        expand(w.scale[0], s0)
        expand(w.scale[1], s1)
        dot2 = dequantize_dot2_numba if body == "kernel" else int4_matvec._dequantize_dot2_loops
        got = np.array(dot2(w.packed[0], w.packed[1], s0, s1, split_nibbles(x)[0]), np.float64)
        close(got, ref, f"two rows of {I} inputs, G={G}")


@pytest.mark.parametrize("body", ["kernel", "loops"])
def test_tile4_takes_four_tokens_or_the_groups_last_ones(rng, body):
    """tile4 against a group of 1..9 tokens, from every start b: min(4, left) dot products of each of the four
    rows, each with its own token (tails of one or two by tile42, of three by tile44 with a repeat)."""
    tile4 = int4_matvec.tile4_numba if body == "kernel" else int4_matvec._tile4_loops
    n = 40
    w = rng.standard_normal((4, n + 16), dtype=np.float32)
    x = rng.standard_normal((12, n + 16), dtype=np.float32)
    acc = np.full((4, 4), np.nan, np.float32)
    for size in range(1, 10):
        tokens = rng.permutation(12)[:size]
        for b in range(size):
            took = tile4(w, x, n, tokens, b, acc)
            assert took == min(4, size - b)
            ref = w[:, :n].astype(np.float64) @ x[tokens[b:b + took], :n].astype(np.float64).T   # (4, took)
            close(acc[:, :took], ref, f"tile4, {size} tokens from {b}")


@pytest.mark.parametrize("O, I, T, G", [(8, 32, 1, 32), (24, 64, 3, 32), (5, 96, 2, 8), (40, 64, 17, 16)])
@pytest.mark.parametrize("body", ["kernel", "loops"])
def test_int4_matmul_matches_reference(rng, O, I, T, G, body):
    w = quantize(rng.standard_normal((O, I), dtype=np.float32), G)
    x = rng.standard_normal((T, I), dtype=np.float32)
    ref = x.astype(np.float64) @ dequantize(w).astype(np.float64).T               # (T, O)
    if body == "kernel":
        assert kernel_exact(w)                                                    # int4_matmul runs the kernel
        out = int4_matmul(w, x)
    else:
        out = np.empty((T, O), np.float32)
        _int4_matmul_loops(w.packed, w.scale, split_nibbles(x), out)
    close(out, ref, f"int4 matmul {O}x{I}, T={T}, G={G}")
    assert out.dtype == np.float32


def test_int4_matmul_rejects_partial_words(rng):
    w = quantize(rng.standard_normal((4, 36), dtype=np.float32), 4)
    with pytest.raises(ConfigError, match="multiples of 8"):
        int4_matmul(w, np.ones((1, 36), np.float32))


# ----------------------------------------------------------------------------
# BF16 matvec


@pytest.mark.parametrize("O, I, T", [(1, 8, 1), (70, 48, 1), (9, 33, 4), (13, 40, 6)])
@pytest.mark.parametrize("body", ["kernel", "loops"])
def test_bf16_matmul_matches_reference(rng, O, I, T, body):
    raw = f32_to_bf16(rng.standard_normal((O, I), dtype=np.float32))             # (O, I) stored bf16
    x = rng.standard_normal((T, I), dtype=np.float32)
    ref = x.astype(np.float64) @ bf16_to_f32(raw).astype(np.float64).T            # (T, O)
    if body == "kernel":
        out = bf16_matmul(raw, x)
    else:
        out = np.empty((T, O), np.float32)
        _bf16_matmul_loops(raw, x, out)
    close(out, ref, f"bf16 matmul {O}x{I}, T={T}")


@pytest.mark.parametrize("body", ["kernel", "loops"])
def test_widen_rows_is_the_exact_bit_shift(rng, body):
    """Every bf16 bit pattern (signed zeros, subnormals, infinities, NaNs among them) widens to the float32
    whose top half it is, as checkpoint.bf16_to_f32 does; rows of any length, a non-contiguous view too."""
    raw = np.arange(1 << 16, dtype=np.uint32).astype(np.uint16).reshape(512, 128)
    raw = np.concatenate([raw, raw[:, ::-1]], axis=1)[:, 3:250]                   # (512, 247) view
    if body == "kernel":
        out = widen_rows(raw)
    else:
        out = np.empty(raw.shape, np.float32)
        _widen_rows_loops(np.ascontiguousarray(raw), out.view(np.uint32))
    assert out.dtype == np.float32 and np.array_equal(out.view(np.uint32), bf16_to_f32(raw).view(np.uint32))


# ----------------------------------------------------------------------------
# MoE dispatch


def _experts(rng, E, D, F, G=32):
    return [tuple(quantize(rng.standard_normal(s, dtype=np.float32) / np.float32(np.sqrt(s[1])), G)
                  for s in ((F, D), (F, D), (D, F))) for _ in range(E)]


def test_group_by_expert_is_a_stable_counting_sort():
    idx = np.array([[2, 0], [0, 1], [2, 1]])
    start, order = np.empty(4, np.int64), np.empty(6, np.int64)
    _group_by_expert_loops(idx, 3, start, order)
    assert start.tolist() == [0, 2, 4, 6]
    assert order.tolist() == [1, 2, 3, 5, 0, 4]                 # pair t*A+a, grouped by expert, tokens in order


@pytest.mark.parametrize("body", ["kernel", "loops"])
def test_silu_matches_reference(body):
    """The inlined silu, over the whole range: -200 (e^-a clamped) to 100."""
    a = np.linspace(-200, 100, 3001).astype(np.float32)
    got = np.array([(silu_numba if body == "kernel" else _silu_loops)(v) for v in a], np.float32)
    ref = a.astype(np.float64) / (1 + np.exp(-a.astype(np.float64)))
    check_close(got, ref, rtol=4e-7, atol=1e-30, label="silu")


# decode; experts shared by tokens; A = E; several 4-token passes with a tail; down rows in three blocks
@pytest.mark.parametrize("T, E, A, D", [(1, 4, 2, 64), (5, 6, 3, 64), (3, 4, 4, 64), (19, 4, 2, 64), (1, 3, 2, 160),
                                        (6, 5, 2, 160)])
@pytest.mark.parametrize("body", ["kernel", "loops"])
@pytest.mark.parametrize("stack", [True, False])
def test_moe_experts_matches_reference(rng, T, E, A, D, body, stack):
    F = 32
    ws = _experts(rng, E, D, F)
    u = rng.standard_normal((T, D), dtype=np.float32)
    idx = np.stack([rng.choice(E, A, replace=False) for _ in range(T)])
    g = rng.random((T, A), dtype=np.float32)
    no_shared = (np.zeros((1, D), np.float32), np.zeros((1, D), np.float32), np.zeros((D, 1), np.float32))
    ref = moe(u.astype(np.float64), idx, g.astype(np.float64),
              lambda e: tuple(dequantize(w).astype(np.float64) for w in ws[e]), no_shared)
    used = np.unique(idx)
    experts = gather_experts([ws[e] for e in used], stack)         # only the chosen experts, as the decoder does
    rows = np.searchsorted(used, idx)
    if body == "kernel":
        out = moe_experts(u, rows, g, experts)
    else:
        out = np.empty((T, D), np.float32)
        _moe_experts_loops(u, rows, g, *experts, out)
    close(out, ref, f"moe T={T} E={E} A={A} D={D}")


def test_gather_experts_refuses_scales_the_kernel_cannot_reproduce(rng):
    """An expert with F32 scales would get bf16 rounding from the kernel: a clear error, not wrong numbers."""
    ws = _experts(rng, 2, 64, 32)
    down = ws[1][2]
    ws[1] = ws[1][:2] + (Int4Weight(down.packed, down.scale, down.shape, "F32"),)
    with pytest.raises(ConfigError, match="only for BF16 scales"):
        gather_experts(ws)


@pytest.mark.parametrize("T", [1, 7])
def test_kernel_takes_a_layers_stacked_experts_by_global_id(rng, T):
    """A layer's ExpertStack, filled only with the experts chosen so far (the rest zero), gives the
    reference's output on global expert ids; the Int4Weights it hands back are views of its entries."""
    E, A, D, F = 8, 2, 64, 32
    ws = _experts(rng, E, D, F)
    stack = ExpertStack(E)
    no_shared = (np.zeros((1, D), np.float32), np.zeros((1, D), np.float32), np.zeros((D, 1), np.float32))
    for lo, hi in ((0, 4), (2, 7)):                                # the second call adds experts 4..6
        u = rng.standard_normal((T, D), dtype=np.float32)
        idx = np.stack([rng.choice(np.arange(lo, hi), A, replace=False) for _ in range(T)])
        g = rng.random((T, A), dtype=np.float32)
        for e in np.unique(idx):
            if not stack.held[e]:
                views = stack.put(e, ws[e])                         # gate, up, down
                assert all(np.shares_memory(w.packed, stack.arrays[2 * j]) and np.shares_memory(w.scale, stack.arrays[2 * j + 1])
                           for j, w in enumerate(views))
        ref = moe(u.astype(np.float64), idx, g.astype(np.float64),
                  lambda e: tuple(dequantize(w).astype(np.float64) for w in ws[e]), no_shared)
        close(moe_experts(u, idx, g, stack.arrays), ref, f"stacked experts T={T} chosen from {lo}..{hi - 1}")
    assert not stack.held[7] and not stack.arrays[0][7].any()


# ----------------------------------------------------------------------------
# MLA decode


def _mla_case(rng, T, S):
    cfg = from_hf(preset("tiny")).text
    H, Dn, Dr, Dv, Ckv = (cfg.num_attention_heads, cfg.qk_nope_head_dim, cfg.qk_rope_head_dim, cfg.v_head_dim,
                          cfg.kv_lora_rank)
    r = lambda *s: rng.standard_normal(s, dtype=np.float32)                        # noqa: E731
    w = MLAWeights(kv_a_proj_with_mqa=r(Ckv + Dr, 8), kv_a_layernorm=r(Ckv), kv_b_proj=r(H * (Dn + Dv), Ckv) / 4,
                   o_proj=r(8, H * Dv))
    return cfg, w, (r(T, H, Dn), r(T, H, Dr), r(S, Ckv), r(S, Dr))


@pytest.mark.parametrize("T, S", [(1, 1), (1, 9), (3, 3), (4, 11)])               # decode, S = 1, prefill, continue
@pytest.mark.parametrize("body", ["kernel", "loops"])
def test_mla_absorbed_matches_reference(rng, T, S, body):
    cfg, w, (q_nope, q_rope, c_kv, k_rope) = _mla_case(rng, T, S)
    scale = 0.3
    ref = attend_absorbed_ref(*(a.astype(np.float64) for a in (q_nope, q_rope, c_kv, k_rope)), w, cfg, scale)
    if body == "kernel":
        out = attend_absorbed(q_nope, q_rope, c_kv, k_rope, w, cfg, scale)
    else:
        H, Dn = cfg.num_attention_heads, cfg.qk_nope_head_dim
        out = np.empty((T, H * cfg.v_head_dim), np.float32)
        _mla_absorbed_loops(q_nope, q_rope, c_kv, k_rope, w.kv_b_proj.reshape(H, Dn + cfg.v_head_dim, -1),
                            np.float32(scale), out)
    close(out, ref, f"mla absorbed T={T} S={S}")


@pytest.mark.parametrize("T, B, diag", [(1, 1, 0), (3, 5, 0), (4, 7, 2), (5, 3, 9), (2, 6, -1)])
@pytest.mark.parametrize("body", ["kernel", "loops"])
def test_online_softmax_matches_reference(rng, T, B, diag, body):
    """One step from a state after earlier blocks (finite m) and from the start (m = -inf), crossing the
    causal diagonal, entirely visible (diag >= B - 1) and with a query that sees no key of the block."""
    H, d = 2, 3
    fn = mla_blocked.online_softmax_numba if body == "kernel" else mla_blocked._online_softmax_loops
    for m0 in (np.full((H, T), -np.inf, np.float32), rng.standard_normal((H, T), dtype=np.float32)):
        if not np.isfinite(m0).all() and diag < 0:
            continue                                  # the first block always holds key 0, seen by every query
        s, l, acc = (rng.standard_normal(shape, dtype=np.float32) for shape in ((H, T, B), (H, T), (H, T, d)))
        l = np.abs(l)
        ref = [a.astype(np.float64) for a in (s, m0, l, acc)]
        online_softmax_step(ref[0], diag, 0.7, *ref[1:])
        out = [s, m0.copy(), l, acc]
        fn(out[0], np.int64(diag), np.float32(0.7), *out[1:])
        for name, o, r in zip(("p", "m", "l", "acc"), out, ref):
            check_close(o, r, rtol=1e-5, atol=1e-6, label=f"online softmax {name} T={T} B={B} diag={diag}")


@pytest.mark.parametrize("T, S, B", [(1, 9, 4), (3, 3, 1), (5, 12, 5), (6, 6, 64)])
@pytest.mark.parametrize("absorbed", [False, True])
def test_blocked_attention_with_kernel_matches_one_shot(rng, T, S, B, absorbed, monkeypatch):
    """attend (attend_blocked with the kernel's step, or attend_latent) in key blocks of B == the one-shot
    reference, the decode kernel kept out of the way."""
    monkeypatch.setattr(mla_blocked, "DECODE_ROWS", 0)
    monkeypatch.setattr(mla_blocked, "KEY_BLOCK", B)
    monkeypatch.setattr(mla, "KEY_BLOCK", B)
    cfg, w, (q_nope, q_rope, c_kv, k_rope) = _mla_case(rng, T, S)
    ref = (attend_absorbed_ref if absorbed else attend_naive)(
        *(a.astype(np.float64) for a in (q_nope, q_rope, c_kv, k_rope)), w, cfg, 0.3)
    out = mla_blocked.attend(q_nope, q_rope, c_kv, k_rope, w, cfg, 0.3, absorbed)
    close(out, ref, f"blocked attention T={T} S={S} B={B}")


@pytest.mark.parametrize("T, S, B, rows", [(1, 9, 4, 1), (3, 3, 1, 4), (5, 12, 5, 10), (2, 11, 3, 6), (6, 6, 64, 999)])
def test_latent_attention_matches_one_shot(rng, T, S, B, rows):
    """attend_latent in key blocks of B and head groups of rows // T heads (one head, several, a last group
    shorter than the others, all) == the one-shot absorbed reference."""
    cfg, w, (q_nope, q_rope, c_kv, k_rope) = _mla_case(rng, T, S)
    ref = attend_absorbed_ref(*(a.astype(np.float64) for a in (q_nope, q_rope, c_kv, k_rope)), w, cfg, 0.3)
    out = mla_blocked.attend_latent(q_nope, q_rope, c_kv, k_rope, w, cfg, 0.3, block=B, rows=rows)
    close(out, ref, f"latent attention T={T} S={S} B={B} rows={rows}")


def test_decoding_over_a_long_cache_reads_it_once_per_step(rng, monkeypatch):
    """Over a long cache (more than DECODE_WORK multiply-adds) a decoded token attends through attend_latent
    (all heads in one group, the cache read once), not mla_decode's kernel (once per head); the same
    attention either way."""
    cfg = from_hf(preset("tiny")).text
    work_per_key = cfg.num_attention_heads * (2 * cfg.kv_lora_rank + cfg.qk_rope_head_dim)
    monkeypatch.setattr(mla_blocked, "DECODE_WORK", 8 * work_per_key)                # 8 keys: the kernel, 9: not
    cfg, w, (q_nope, q_rope, c_kv, k_rope) = _mla_case(rng, 1, 9)
    short = mla_blocked.attend(q_nope, q_rope, c_kv[:8], k_rope[:8], w, cfg, 0.3, absorbed=True)
    close(short, mla_decode.attend_absorbed(q_nope, q_rope, c_kv[:8], k_rope[:8], w, cfg, 0.3), "decode kernel")

    def refuse(*args):
        raise AssertionError("mla_decode's kernel was used over a long cache")
    monkeypatch.setattr(mla_decode, "attend_absorbed", refuse)
    out = mla_blocked.attend(q_nope, q_rope, c_kv, k_rope, w, cfg, 0.3, absorbed=True)
    ref = attend_absorbed_ref(*(a.astype(np.float64) for a in (q_nope, q_rope, c_kv, k_rope)), w, cfg, 0.3)
    close(out, ref, "decode over a long cache")


# ----------------------------------------------------------------------------
# vision block-diagonal attention


@pytest.mark.parametrize("body", ["kernel", "loops"])
def test_exp_matches_numpy(body):
    """The polynomial e^x is within 2 ulp of NumPy's over the whole float32 range it serves, and 0 below it."""
    x = np.concatenate([np.linspace(-87.0, 88.0, 20001), [-87.5, -1e4, -np.inf]]).astype(np.float32)
    exp = np.vectorize(_exp_loops if body == "loops" else exp_numba, otypes=[np.float32])
    got, ref = exp(x), np.exp(x.astype(np.float64))
    inside = x >= -87.0
    assert (np.abs(got[inside] - ref[inside]) <= 2 * np.spacing(ref[inside].astype(np.float32))).all()
    assert (got[~inside] == 0).all()


@pytest.mark.parametrize("body", ["kernel", "loops"])
def test_softmax_rows_matches_reference(rng, body):
    """Rows of scores with a wide spread and masked (-inf) entries: nn.softmax's numbers, in place."""
    x = (rng.standard_normal((2, 5, 37)) * 8).astype(np.float32)
    x[0, 1, :30] = -np.inf
    ref = softmax(x.astype(np.float64))
    if body == "kernel":
        got = softmax_rows(x)
        assert got is x                                           # in place: no second (H, rows, n) array
    else:
        got = x.reshape(-1, 37)
        _softmax_rows_loops(got, np.float32(1.0), got.max(axis=1))
    close(got.reshape(ref.shape), ref, "softmax rows")


@pytest.mark.parametrize("body", ["kernel", "loops"])
def test_softmax_rows_fuses_the_scale(rng, body):
    """softmax(scale * x) with the scaling inside the kernel: the same numbers as scaling first."""
    x = (rng.standard_normal((6, 50)) * 30).astype(np.float32)
    scale = np.float32(72 ** -0.5)
    ref = softmax((x * scale).astype(np.float64))
    if body == "kernel":
        got = softmax_rows(x.copy(), scale)
    else:
        got = x.copy()
        _softmax_rows_loops(got, scale, got.max(axis=1) * scale)
    close(got, ref, "scaled softmax rows", rtol=1e-6)


@pytest.mark.parametrize("grid", [[(1, 2, 2)], [(1, 2, 4), (2, 2, 2), (1, 2, 2)]])
def test_segment_attention_matches_reference(rng, grid):
    """moonvit.attention with the kernels' ops (engine.numba_ops().vision) gives the float64 reference's output."""
    v = from_hf(preset("tiny")).vision
    D = v.hidden_size
    blk = VisionBlockWeights(*(rng.standard_normal(s, dtype=np.float32) / 4 for s in (
        (D,), (D,), (3 * D, D), (3 * D,), (D, D), (D,), (D,), (D,), (v.intermediate_size, D),
        (v.intermediate_size,), (D, v.intermediate_size), (D,))))
    N = sum(t * h * w for t, h, w in grid)
    x = rng.standard_normal((N, D), dtype=np.float32)
    rope = [rope_2d(g, v.head_dim, v.rope_theta) for g in grid]
    cos, sin = np.concatenate([c for c, _ in rope]), np.concatenate([s for _, s in rope])
    bounds = segments(grid)
    ref = attention(x.astype(np.float64), blk, v, cos, sin, bounds)
    close(attention(x, blk, v, cos, sin, bounds, numba_ops().vision), ref, f"segment attention {grid}")


# ----------------------------------------------------------------------------
# the elementwise passes of a vision block


@pytest.mark.parametrize("body", ["kernel", "loops"])
def test_vision_layer_norm_matches_reference(rng, body):
    x = (rng.standard_normal((7, 48)) * 3 + 5).astype(np.float32)                 # a mean far from 0
    w, b = rng.standard_normal(48, dtype=np.float32), rng.standard_normal(48, dtype=np.float32)
    ref = layer_norm(x.astype(np.float64), w, b, 1e-5)
    if body == "kernel":
        got = vb.layer_norm(x.reshape(7, 1, 48), w, b, 1e-5).reshape(7, 48)          # (..., D) like nn's
    else:
        got = np.empty_like(x)
        vb._layer_norm_loops(x, w, b, 1e-5, got)
    close(got, ref, "layer norm", rtol=1e-6)


@pytest.mark.parametrize("body", ["kernel", "loops"])
def test_bias_gelu_tanh_matches_reference(rng, body):
    """Over -20..20, where 1 + tanh(y) cancels at the low end: close to the float64 reference everywhere."""
    h = np.linspace(-20, 20, 4001, dtype=np.float32).reshape(1, -1) - np.float32(0.5)
    bias = np.full(h.shape[1], 0.5, np.float32)
    ref = gelu_tanh(h.astype(np.float64) + 0.5)
    got = h.copy()
    (vb.bias_gelu_tanh if body == "kernel" else vb._bias_gelu_tanh_loops)(got, bias)
    close(got, ref, "bias + gelu_tanh", rtol=1e-6)
    assert np.abs(got[0, :50]).max() < 1e-30                                       # e^-(2y) clamped, not inf - inf


@pytest.mark.parametrize("body", ["kernel", "loops"])
def test_gelu_erf_matches_reference(rng, body):
    x = (rng.standard_normal((5, 64)) * 4).astype(np.float32)
    ref = gelu_erf(x)
    if body == "kernel":
        got = vb.gelu_erf(x)
    else:
        got = np.empty_like(x)
        vb._gelu_erf_loops(x, got)
    close(got, ref, "gelu_erf", rtol=1e-7)                                         # both: float64 erf, one rounding


@pytest.mark.parametrize("body", ["kernel", "loops"])
def test_vision_rope_matches_reference(rng, body):
    x = rng.standard_normal((3, 5, 8), dtype=np.float32)
    cos, sin = rng.standard_normal((5, 4), dtype=np.float32), rng.standard_normal((5, 4), dtype=np.float32)
    ref = apply_rope_interleaved(x, cos, sin)
    if body == "kernel":
        got = vb.apply_rope_interleaved(x, cos, sin)
    else:
        got = np.empty_like(x)
        vb._rope_interleaved_loops(x, cos, sin, got)
    close(got, ref, "rope", rtol=1e-6)


def test_vision_block_matches_reference(rng):
    """A whole block through the kernels (engine.numba_ops().vision) against the float64 NumPy block."""
    v = from_hf(preset("tiny")).vision
    D, F = v.hidden_size, v.intermediate_size
    blk = VisionBlockWeights(*(rng.standard_normal(s, dtype=np.float32) / 4 for s in (
        (D,), (D,), (3 * D, D), (3 * D,), (D, D), (D,), (D,), (D,), (F, D), (F,), (D, F), (D,))))
    grid = [(1, 4, 4), (2, 2, 2)]
    x = rng.standard_normal((24, D), dtype=np.float32)
    rope = [rope_2d(g, v.head_dim, v.rope_theta) for g in grid]
    cos, sin = np.concatenate([c for c, _ in rope]), np.concatenate([s for _, s in rope])
    ref = vision_block(x.astype(np.float64), blk, v, cos, sin, segments(grid))
    close(vision_block(x, blk, v, cos, sin, segments(grid), numba_ops().vision), ref, "vision block")


# ----------------------------------------------------------------------------
# policy


def test_warmup_compiles_every_kernel():
    names = set(warmup())
    assert names == {"int4_matmul", "bf16_matmul", "mla_absorbed", "moe_experts", "softmax_rows", "layer_norm",
                     "bias_gelu_tanh", "gelu_erf", "rope_interleaved", "online_softmax", "moe_route", "rms_norm",
                     "widen_rows"}
    for kernel in (int4_matmul_numba, bf16_matmul_numba, mla_absorbed_numba, mla_blocked.online_softmax_numba,
                   moe_experts_numba,
                   softmax_rows_numba, vb.layer_norm_numba, vb.bias_gelu_tanh_numba, vb.gelu_erf_numba,
                   vb.rope_interleaved_numba, moe_route.select_numba, rms_norm.rms_norm_numba,
                   bf16_matvec.widen_rows_numba):
        if hasattr(kernel, "targetoptions"):                      # compiled (not under NUMBA_DISABLE_JIT)
            assert kernel.targetoptions["fastmath"] == FASTMATH
            assert kernel.signatures, f"{kernel} was not compiled by warmup()"


def test_launch_runs_small_work_on_one_thread_and_restores_the_count():
    seen = []
    kernel = lambda: seen.append(numba.get_num_threads() if compiled() else 1)      # noqa: E731
    before = numba.get_num_threads()
    launch(kernel, PARALLEL_MIN_WORK - 1)
    launch(kernel, PARALLEL_MIN_WORK)
    assert seen == [1, before if compiled() else 1] and numba.get_num_threads() == before


def test_fastmath_keeps_inf_checks():
    assert "nnan" not in FASTMATH and "ninf" not in FASTMATH and FASTMATH != {"fast"}


def test_a_cached_kernel_is_stamped_with_every_kernel_file(tmp_path):
    """moe_experts inlines int4_matvec's loops: numba's own stamp (the kernel's file) would keep serving the
    old machine code after an edit to int4_matvec.py. Every cached kernel carries the stamp of all files,
    and touching any one of them changes it."""
    import os
    import k25ref.kernels as kernels
    for name in ("a.py", "b.py", "notes.txt"):
        (tmp_path / name).write_text("x = 1\n")
    before = kernels.sources_stamp(str(tmp_path))
    assert [name for name, _, _ in before] == ["a.py", "b.py"]
    os.utime(tmp_path / "b.py", ns=(0, 10 ** 9))                   # an edit elsewhere: a new time stamp
    assert kernels.sources_stamp(str(tmp_path)) != before
    assert {"int4_matvec.py", "moe_experts.py"} <= {name for name, _, _ in kernels.SOURCES_STAMP}
    if kernels.CACHE and compiled():
        for kernel in (int4_matmul_numba, moe_experts_numba):
            assert kernel._cache._cache_file._source_stamp == kernels.SOURCES_STAMP
    assert kernels.stamp_cache(object()) is False                  # no cache file to stamp: jit compiles uncached


class _Features(dict):
    def flatten(self):
        return ",".join(("+" if on else "-") + name for name, on in self.items())


@pytest.mark.parametrize("host, user, want", [
    ({"avx512f": True, "fma": True}, {}, "+avx512f,+fma,-prefer-256-bit"),
    ({"avx512f": False, "fma": True}, {}, None),                    # no AVX-512: LLVM's choice stands
    ({"avx512f": True}, {"CPU_FEATURES": "+avx2"}, "+avx2"),         # the user's settings win
    ({"avx512f": True}, {"CPU_NAME": "generic"}, None)])
def test_512_bit_vectors_only_on_avx512_hosts_the_user_left_alone(monkeypatch, host, user, want):
    """The preference for 256-bit vectors is dropped from numba's CPU features on AVX-512 hosts, unless
    NUMBA_CPU_NAME or NUMBA_CPU_FEATURES says otherwise (run on a stand-in config: the real one is set)."""
    import types
    import llvmlite.binding
    import k25ref.kernels as kernels
    config = types.SimpleNamespace(**{"CPU_NAME": None, "CPU_FEATURES": None, **user})
    monkeypatch.setattr(kernels, "numba", types.SimpleNamespace(config=config))
    monkeypatch.setattr(llvmlite.binding, "get_host_cpu_features", lambda: _Features(host))
    kernels.prefer_512_bit_vectors()
    assert config.CPU_FEATURES == want


@pytest.mark.skipif(not compiled(), reason="the intrinsic exists only compiled")
def test_prefetch_that_does_not_compile_falls_back_to_nothing(monkeypatch, caplog):
    """An LLVM (or llvmlite) that rejects llvm.prefetch leaves a prefetch that does nothing, with a warning,
    instead of failing every kernel that inlines it."""
    from llvmlite import ir
    from k25ref import kernels

    def reject(*args, **kwargs):
        raise NotImplementedError("no llvm.prefetch here")
    monkeypatch.setattr(ir.Module, "declare_intrinsic", reject)
    monkeypatch.setattr(kernels, "CACHE", False)                  # compile now, not from the cache
    fallback = kernels._prefetch_compiled()
    assert fallback.py_func is kernels._prefetch_python and "did not compile" in caplog.text
    fallback(np.zeros(16, np.int32), 3)
