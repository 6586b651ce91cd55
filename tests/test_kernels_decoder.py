"""The decoder's small kernels (router selection, RMSNorm) equal their NumPy references.

Like tests/test_kernels.py, each test runs the compiled kernel and its loop body as plain Python, and CI runs
the file again with NUMBA_DISABLE_JIT=1 (`-m kernels`).
"""
import numpy as np
import pytest

from k25ref import mla
from k25ref.config import TextConfig, from_hf
from k25ref.kernels import mla_blocked, moe_route, rms_norm as rms_kernel
from k25ref.kernels.mla_blocked import absorbing_pays
from k25ref.make_tiny import preset
from k25ref.moe import route
from k25ref.nn import rms_norm
from conftest import check_close

pytestmark = pytest.mark.kernels


def _cfg(E, A, G, Gk, **kw):
    return TextConfig(hidden_size=24, n_routed_experts=E, num_experts_per_tok=A, n_group=G, topk_group=Gk,
                      num_hidden_layers=2, moe_intermediate_size=8, **kw)


@pytest.mark.parametrize("E, A, G, Gk", [(16, 4, 4, 2), (64, 8, 8, 4), (12, 3, 1, 1), (8, 2, 4, 3), (6, 6, 2, 2)])
@pytest.mark.parametrize("norm, scale", [(True, 2.5), (False, 1.0)])
@pytest.mark.parametrize("body", ["kernel", "loops"])
def test_route_matches_reference(rng, E, A, G, Gk, norm, scale, body, monkeypatch):
    """Same experts in the same order and the same weights, over many tokens, with a bias that changes the
    choice, one group, groups of two and every expert chosen (A = E)."""
    if body == "loops":
        monkeypatch.setattr(moe_route, "select_numba", moe_route._select_loops)
    cfg = _cfg(E, A, G, Gk, norm_topk_prob=norm, routed_scaling_factor=scale)
    u = rng.standard_normal((50, 24)).astype(np.float32)
    gate, bias = rng.standard_normal((E, 24)).astype(np.float32), rng.standard_normal(E).astype(np.float32)
    idx, g = moe_route.route(u, gate, bias, cfg)
    ref_idx, ref_g = route(u, gate, bias, cfg)
    assert idx.dtype == ref_idx.dtype and g.dtype == ref_g.dtype == np.float32
    np.testing.assert_array_equal(idx, ref_idx)
    check_close(g, ref_g, rtol=1e-6, atol=1e-7, label="router weights")


@pytest.mark.parametrize("body", ["kernel", "loops"])
def test_route_ties_go_to_the_lower_index(body, monkeypatch):
    """Equal groups and equal experts: the lower index first, as the reference's stable argsort."""
    if body == "loops":
        monkeypatch.setattr(moe_route, "select_numba", moe_route._select_loops)
    cfg = _cfg(8, 3, 4, 2)
    u, gate, bias = np.ones((2, 24), np.float32), np.zeros((8, 24), np.float32), np.zeros(8, np.float32)
    idx, g = moe_route.route(u, gate, bias, cfg)
    np.testing.assert_array_equal(idx, route(u, gate, bias, cfg)[0])
    np.testing.assert_array_equal(idx, [[0, 1, 2]] * 2)


@pytest.mark.parametrize("shape", [(1, 1024), (5, 24), (3, 2, 40), (1, 1)])
@pytest.mark.parametrize("body", ["kernel", "loops"])
def test_rms_norm_matches_reference(rng, shape, body, monkeypatch):
    if body == "loops":
        monkeypatch.setattr(rms_kernel, "rms_norm_numba", rms_kernel._rms_norm_loops)
    x = (3 * rng.standard_normal(shape)).astype(np.float32)
    w = rng.standard_normal(shape[-1]).astype(np.float32)
    out = rms_kernel.rms_norm(x, w, 1e-6)
    ref = rms_norm(x.astype(np.float64), w.astype(np.float64), 1e-6)
    assert out.dtype == np.float32 and out.shape == x.shape
    check_close(out, ref, rtol=1e-5, atol=1e-6, label=f"rms_norm {shape}")
    check_close(rms_kernel.rms_norm(x[..., :1] * 0, w[:1], 1e-6), np.zeros(shape[:-1] + (1,)), label="zero row")


def test_absorbing_pays_by_the_count():
    """Absorbed for few queries over many keys, naive for a prompt chunk attending to itself: at tools/bench.py's
    `small` dims the counted verdicts its docstring's measurements agree with."""
    cfg = TextConfig(hidden_size=1024, num_attention_heads=16, kv_lora_rank=256, q_lora_rank=384,
                     qk_nope_head_dim=64, qk_rope_head_dim=32, v_head_dim=64, num_hidden_layers=2)
    assert absorbing_pays(1, 5000, cfg) and absorbing_pays(8, 136, cfg) and absorbing_pays(32, 2048, cfg)
    assert not absorbing_pays(32, 32, cfg) and not absorbing_pays(128, 128, cfg) and not absorbing_pays(128, 1024, cfg)


@pytest.mark.parametrize("T, S, absorb", [(2, 40, True), (40, 40, False)])
def test_absorbed_attention_takes_the_cheaper_form(rng, T, S, absorb, monkeypatch):
    """mla_blocked.attend(absorbed=True) runs attend_latent where absorbing pays and attend_blocked's naive path
    where it does not; either way the attention of the one-shot absorbed reference."""
    cfg = from_hf(preset("tiny")).text
    H, Dn, Dr, Dv, Ckv = (cfg.num_attention_heads, cfg.qk_nope_head_dim, cfg.qk_rope_head_dim, cfg.v_head_dim,
                          cfg.kv_lora_rank)
    w = mla.MLAWeights(np.zeros((Ckv + Dr, 1), np.float32), np.ones(Ckv, np.float32),
                       (0.1 * rng.standard_normal((H * (Dn + Dv), Ckv))).astype(np.float32), np.zeros((1, H * Dv)))
    q_nope, q_rope = rng.standard_normal((T, H, Dn), np.float32), rng.standard_normal((T, H, Dr), np.float32)
    c_kv, k_rope = rng.standard_normal((S, Ckv), np.float32), rng.standard_normal((S, Dr), np.float32)
    monkeypatch.setattr(mla_blocked, "DECODE_ROWS", 0)
    taken = []
    latent = mla_blocked.attend_latent
    monkeypatch.setattr(mla_blocked, "attend_latent", lambda *a, **k: taken.append("latent") or latent(*a, **k))
    out = mla_blocked.attend(q_nope, q_rope, c_kv, k_rope, w, cfg, 0.3, absorbed=True)
    assert absorbing_pays(T, S, cfg) == absorb and taken == (["latent"] if absorb else [])
    ref = mla.attend_absorbed(*(a.astype(np.float64) for a in (q_nope, q_rope, c_kv, k_rope)), w, cfg, 0.3)
    check_close(out, ref, atol=1e-5 * float(np.abs(ref).max()), label=f"attention T={T} S={S}")


@pytest.mark.parametrize("body", ["kernel", "loops"])
def test_rms_norm_of_rows_whose_mean_square_overflows_is_zero(body, monkeypatch):
    """Rows at +-3.39e38 (bf16's largest): the mean of squares is inf, the reference's row 0, never NaN."""
    if body == "loops":
        monkeypatch.setattr(rms_kernel, "rms_norm_numba", rms_kernel._rms_norm_loops)
    x = np.full((2, 64), 3.3895314e38, np.float32) * np.where(np.arange(64) % 2, 1, -1).astype(np.float32)
    w = np.full(64, 2.5, np.float32)
    with np.errstate(over="ignore"):
        ref, out = rms_norm(x, w, 1e-5), rms_kernel.rms_norm(x, w, 1e-5)
    np.testing.assert_array_equal(ref, 0)
    np.testing.assert_array_equal(out, ref)


@pytest.mark.parametrize("shape", [(7, 16), (5, 3, 16), (1, 8)])
def test_rope_kernel_matches_reference_on_any_leading_dims(rng, shape):
    """engine.rope_kernel (MoonViT's RoPE kernel) == rope.apply_rope_interleaved for k_rope's (T, Dr) and for
    queries as project hands them over, a transposed (H, T, Dr) view."""
    from k25ref.engine import rope_kernel
    from k25ref.rope import apply_rope_interleaved
    T, Dr = shape[-2:]
    cos, sin = (rng.standard_normal((T, Dr // 2)).astype(np.float32) for _ in range(2))
    x = rng.standard_normal(shape).astype(np.float32)
    views = [x] + ([x.transpose(1, 0, 2).copy().transpose(1, 0, 2)] if x.ndim == 3 else [])
    for v in views:
        check_close(rope_kernel(v, cos, sin), apply_rope_interleaved(v.astype(np.float64), cos, sin), rtol=1e-6,
                    atol=1e-6, label=f"rope {shape}")
