import numpy as np

from k25ref.config import TextConfig
from k25ref.moe import moe, route
from k25ref.nn import swiglu


def _cfg(**kw):
    base = dict(hidden_size=16, n_routed_experts=16, num_experts_per_tok=4, n_group=4, topk_group=2,
                routed_scaling_factor=2.5, num_hidden_layers=2, moe_intermediate_size=8)
    return TextConfig(**{**base, **kw})


def test_router_picks_a_distinct_experts_in_allowed_groups(rng):
    cfg = _cfg()
    u = rng.standard_normal((20, 16)).astype(np.float32)
    gate, bias = rng.standard_normal((16, 16)).astype(np.float32), 0.3 * rng.standard_normal(16).astype(np.float32)
    idx, w = route(u, gate, bias, cfg)
    assert idx.shape == (20, 4) and w.shape == (20, 4)
    for row in idx:
        assert len(set(row)) == 4
        assert len(set(row // 4)) <= 2                        # at most topk_group groups of 4 experts
    assert np.allclose(w.sum(axis=1), 2.5, rtol=1e-5)        # normalised, then scaled


def test_bias_steers_choice_but_not_weights(rng):
    cfg = _cfg(n_group=1, topk_group=1)
    u = rng.standard_normal((1, 16)).astype(np.float32)
    gate = rng.standard_normal((16, 16)).astype(np.float32)
    bias = np.zeros(16, np.float32)
    bias[[0, 1, 2, 3]] = 100.0                                # force experts 0..3
    idx, w = route(u, gate, bias, cfg)
    assert set(idx[0]) == {0, 1, 2, 3}
    s = 1 / (1 + np.exp(-(u @ gate.T)))[0, idx[0]]
    assert np.allclose(w[0], 2.5 * s / s.sum(), rtol=1e-5)   # weights from s alone


def test_unnormalised_weights(rng):
    cfg = _cfg(norm_topk_prob=False, routed_scaling_factor=1.0)
    u = rng.standard_normal((3, 16)).astype(np.float32)
    gate = rng.standard_normal((16, 16)).astype(np.float32)
    idx, w = route(u, gate, np.zeros(16, np.float32), cfg)
    s = 1 / (1 + np.exp(-(u @ gate.T)))
    assert np.allclose(w, np.take_along_axis(s, idx, axis=1), rtol=1e-5)


def test_moe_equals_per_token_sum(rng):
    D, F, E = 8, 4, 6
    experts = [tuple(rng.standard_normal(s).astype(np.float32) for s in ((F, D), (F, D), (D, F))) for _ in range(E)]
    shared = tuple(rng.standard_normal(s).astype(np.float32) for s in ((F, D), (F, D), (D, F)))
    u = rng.standard_normal((5, D)).astype(np.float32)
    idx = np.array([[0, 1], [1, 2], [0, 5], [3, 1], [2, 0]])
    w = rng.random((5, 2)).astype(np.float32)
    out = moe(u, idx, w, lambda e: experts[e], shared)
    for t in range(5):
        ref = sum(w[t, k] * swiglu(u[t:t + 1], *experts[idx[t, k]]) for k in range(2)) + swiglu(u[t:t + 1], *shared)
        assert np.allclose(out[t], ref[0], rtol=1e-5, atol=1e-6)
