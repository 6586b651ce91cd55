import numpy as np

import k25ref
from k25ref.mla import LatentCache, attend_absorbed, attend_naive, causal_mask, project
from conftest import check_close


def test_causal_mask_rows_never_empty():
    m = causal_mask(3, 5)
    assert np.all(np.isfinite(m).any(axis=1))
    assert np.isfinite(m[0, 2]) and not np.isfinite(m[0, 3])


def test_naive_equals_absorbed(tiny_dir, rng):
    model = k25ref.load_model(tiny_dir)
    cfg, W = model.cfg.text, model.weights
    x = rng.standard_normal((6, cfg.hidden_size)).astype(np.float32)
    cos, sin = model.rope.at(0, 6)
    q_nope, q_rope, c_kv, k_rope = project(x, W.attention(1), cfg, cos, sin)
    a = attend_naive(q_nope, q_rope, c_kv, k_rope, W.attention(1), cfg, model.rope.scale)
    b = attend_absorbed(q_nope, q_rope, c_kv, k_rope, W.attention(1), cfg, model.rope.scale)
    check_close(b, a, rtol=1e-4, atol=1e-5, label="absorbed vs naive")


def test_cache_grows_and_keeps_contents(rng):
    cache = LatentCache(4, 2, capacity=2)
    a = rng.standard_normal((3, 4)).astype(np.float32)
    c, k = cache.append(a, np.ones((3, 2), np.float32))
    c, k = cache.append(a[:1], np.zeros((1, 2), np.float32))
    assert c.shape == (4, 4) and np.array_equal(c[:3], a) and np.array_equal(c[3], a[0])
    assert cache.nbytes == 4 * 6 * 4


def _decode_all(model, ids, absorbed):
    cache = model.new_cache()
    rows = [model.forward(ids[:3], cache, absorbed=absorbed)]
    rows += [model.forward(ids[t:t + 1], cache, absorbed=absorbed) for t in range(3, len(ids))]
    return np.concatenate(rows)


def test_cached_decode_equals_full_forward(tiny_dir, plain_dir):
    for path in (tiny_dir, plain_dir):
        model = k25ref.load_model(path)
        ids = np.arange(1, 13) * 5 % model.cfg.text.vocab_size
        full = model.logits(ids)
        for absorbed in (False, True):
            step = _decode_all(model, ids, absorbed)
            err = np.abs(step - full).max() / np.abs(full).max()
            assert err < 1e-4, (path, absorbed, err)
