"""Weights read on demand inside a memory budget: same numbers as the unbounded path, budget never exceeded."""
import os
import shutil

import numpy as np
import pytest

import k25ref
from k25ref.errors import CheckpointError
from k25ref.model import PREFILL_CHUNK
from k25ref.streaming import WeightCache
from k25ref.summary import summarize
from k25ref.weights import context_bytes

IDS = [7, 300, 21, 4000, 9, 12]


@pytest.mark.parametrize("backend", ["numpy", "numba"])
def test_streaming_equals_eager(tiny_dir, backend):
    eager = k25ref.load_model(tiny_dir)
    want = list(eager.generate(IDS, 6, stop_ids=()))
    for budget in (1, 64 * 1024, 300 * 1024):               # from "keep nothing" to a few layers
        small = k25ref.load_model(tiny_dir, memory_budget=budget)
        assert np.allclose(small.logits(IDS), eager.logits(IDS), rtol=1e-6, atol=1e-6)
        assert list(small.generate(IDS, 6, stop_ids=(), backend=backend)) == want
        assert small.cache.bytes <= budget


def test_budget_is_never_exceeded(tiny_dir):
    size = sum(os.path.getsize(os.path.join(tiny_dir, f)) for f in os.listdir(tiny_dir) if f.endswith(".safetensors"))
    budget = size // 4                                       # the checkpoint is ~4x the budget
    model = k25ref.load_model(tiny_dir, memory_budget=budget)
    seen = []
    original = model.cache._insert
    def watch(key, value, spare=False):
        original(key, value, spare)
        seen.append(model.cache.bytes)
    model.cache._insert = watch
    list(model.generate(IDS, 8, stop_ids=()))
    assert seen and max(seen) <= budget
    assert model.cache.bytes_loaded > budget                 # it really had to evict


def test_budget_bounds_the_whole_model(tiny_dir):
    """Everything the decoder allocates (traced by tracemalloc: weights, working set, activations) stays inside
    the budget when the budget is the working set, the context's cache and activations (weights.context_bytes)
    plus an eighth of the checkpoint: the kernels' path, which
    keeps a layer's matrices as stored and stacks one token's experts at a time."""
    import tracemalloc
    size = sum(os.path.getsize(os.path.join(tiny_dir, f)) for f in os.listdir(tiny_dir) if f.endswith(".safetensors"))
    probe = k25ref.load_model(tiny_dir)
    context = sum(context_bytes(probe.cfg, len(IDS * 4) + 8, PREFILL_CHUNK))  # latent cache + a chunk's activations
    budget = probe.working_set + context + size // 8
    list(k25ref.load_model(tiny_dir, memory_budget=budget).generate(IDS, 2, stop_ids=(), backend="numba"))  # JIT
    model = k25ref.load_model(tiny_dir, memory_budget=budget)
    generation = model.generate(IDS * 4, 8, stop_ids=(), backend="numba")
    assert model.cache.budget == size // 8                         # what the context leaves the weight cache
    tracemalloc.start()
    try:
        tokens = list(generation)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert len(tokens) == 8 and model.cache.bytes_loaded > model.cache.budget      # it had to evict
    assert peak <= budget


def test_cold_reads_match_the_active_set_and_fall_when_warm(tiny_dir):
    model = k25ref.load_model(tiny_dir)                      # unbounded: everything read stays
    model.forward([IDS[0]], model.new_cache())
    cold = model.stats.snapshot()["bytes_read"]
    active = summarize(tiny_dir)["bytes_read_per_decoded_token"]
    assert active <= cold <= 1.3 * active + 4096             # + the 3-value weight_shape tensors
    before = model.stats.snapshot()["bytes_read"]
    model.forward([IDS[0]], model.new_cache())               # same token: all weights are cached
    row = model.cfg.text.hidden_size * 2                     # ... but the embedding row is read again (bf16)
    assert model.stats.snapshot()["bytes_read"] == before + row


def test_embedding_rows_read_each_row_once_and_nearby_rows_together(tiny_dir, monkeypatch):
    model = k25ref.load_model(tiny_dir)
    W, name = model.weights, "language_model.model.embed_tokens.weight"
    table = W.f32(name)                                      # (V, D), the whole table as float32
    reads = []
    read_rows = W.reader.read_rows
    monkeypatch.setattr(W.reader, "read_rows", lambda n, a, b: reads.append((a, b)) or read_rows(n, a, b))
    monkeypatch.setattr(k25ref.weights, "EMBED_GAP", 4096)
    gap = 4096 // (2 * table.shape[1])                       # rows of bf16 within one read's reach
    ids = [4000, 5, 5, 6, 4000, 5 + gap, 9, 7 + 3 * gap]     # repeats, unsorted, one run, two far rows
    assert np.array_equal(W.embedding_rows(ids), table[ids])
    assert reads == [(5, 6 + gap), (7 + 3 * gap, 8 + 3 * gap), (4000, 4001)]
    assert np.array_equal(W.embedding_rows([3]), table[[3]])


def test_cache_lru_and_shared_loads():
    cache = WeightCache(budget=24)
    a = cache.get("a", lambda: np.zeros(2, np.float32))     # 8 bytes
    cache.get("b", lambda: np.zeros(2, np.float32))
    cache.get("a", lambda: pytest.fail("a is cached"))
    cache.get("c", lambda: np.zeros(4, np.float32))          # 16 bytes: evicts b (least recent), keeps a
    assert "a" in cache and "b" not in cache and "c" in cache and cache.bytes == 24
    big = cache.get("d", lambda: np.zeros(100, np.float32))  # over budget: used, not kept
    assert big.size == 100 and "d" not in cache and cache.bytes <= 24
    assert cache.hits == 1 and a is cache.get("a", None)


def test_spare_values_are_evicted_first():
    cache = WeightCache(budget=24)
    cache.get("expert", lambda: np.zeros(2, np.float32), spare=True)   # 8 bytes, oldest
    cache.get("dense", lambda: np.zeros(2, np.float32))               # 8 bytes
    cache.get("expert2", lambda: np.zeros(2, np.float32), spare=True)  # 8 bytes, most recent
    cache.get("dense2", lambda: np.zeros(4, np.float32))              # 16 bytes: both experts go, "dense" stays
    assert "dense" in cache and "dense2" in cache and "expert" not in cache and "expert2" not in cache
    cache.get("dense3", lambda: np.zeros(2, np.float32))              # no spare left: the least recent dense goes
    assert "dense" not in cache and cache.bytes == 24


def test_failed_read_mid_generation_is_clean_and_recoverable(tiny_dir, tmp_path):
    d = tmp_path / "ck"
    shutil.copytree(tiny_dir, d)
    model = k25ref.load_model(str(d), memory_budget=1)       # nothing cached: every token reads
    shard = next(p for p in sorted(d.iterdir()) if p.name.startswith("model-00002"))
    good = shard.read_bytes()
    gen = model.generate(IDS, 10, stop_ids=())
    next(gen)
    shard.write_bytes(good[:-100])
    with pytest.raises(CheckpointError, match="file_changed"):
        next(gen)
    shard.write_bytes(good)
    assert len(list(model.generate(IDS, 3, stop_ids=()))) == 3
