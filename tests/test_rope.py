import math

import numpy as np

from k25ref.config import RopeConfig
from k25ref.rope import apply_rope_interleaved, attention_factor, cos_sin, inv_frequencies, softmax_scale


def test_k25_yarn_constants():
    cfg = RopeConfig()                                       # the real K2.5 rope
    inv, factor = inv_frequencies(cfg, 64)
    base = 50000.0 ** (-np.arange(0, 64, 2) / 64)
    assert np.allclose(inv[:8], base[:8], rtol=1e-6)         # i < 8: pure extrapolation
    assert np.allclose(inv[20:], base[20:] / 64, rtol=1e-6)  # i >= 20: pure interpolation
    assert factor == 1.0
    assert math.isclose(softmax_scale(cfg, 192), 0.1446796, rel_tol=1e-6)


def test_default_rope_has_no_scaling():
    cfg = RopeConfig(type="default", theta=10000.0)
    inv, factor = inv_frequencies(cfg, 8)
    assert np.allclose(inv, 10000.0 ** (-np.arange(0, 8, 2) / 8)) and factor == 1.0
    assert softmax_scale(cfg, 24) == 24 ** -0.5


def test_attention_factor_fallback_without_mscale():
    cfg = RopeConfig(factor=8.0, original_max_position_embeddings=16, mscale=0.0, mscale_all_dim=0.0)
    assert math.isclose(attention_factor(cfg), 0.1 * math.log(8.0) + 1.0)
    assert softmax_scale(cfg, 24) == 24 ** -0.5              # mscale_all_dim 0: no softmax correction


def test_interleaved_rotation_preserves_dot_products(rng):
    # rotating q and k by the same position offset leaves q.k depending only on the distance
    inv, _ = inv_frequencies(RopeConfig(type="default"), 8)
    q, k = rng.standard_normal((1, 8)).astype(np.float32), rng.standard_normal((1, 8)).astype(np.float32)
    def score(pq, pk):
        cq, sq = cos_sin([pq], inv)
        ck, sk = cos_sin([pk], inv)
        return float((apply_rope_interleaved(q, cq, sq) @ apply_rope_interleaved(k, ck, sk).T)[0, 0])
    assert math.isclose(score(5, 2), score(13, 10), rel_tol=1e-5)


def test_interleaved_pairs_rotate_together():
    cos, sin = cos_sin([1], np.array([math.pi / 2], np.float32))    # a quarter turn
    out = apply_rope_interleaved(np.array([[1.0, 0.0]], np.float32), cos, sin)
    assert np.allclose(out, [[0.0, 1.0]], atol=1e-6)
