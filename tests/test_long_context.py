"""Long prompts: chunked prefill and blocked attention give the one-shot logits, decoding continues a long
prefill exactly, the context window is a clear PromptError (exit 6) for every entry point, and a prompt far
past YaRN's original context matches the transformers oracle."""
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

import k25ref
from k25ref import engine, mla
from k25ref.errors import PromptError
from k25ref.kernels import mla_blocked
from k25ref.make_tiny import make_tiny, preset
from k25ref.model import PREFILL_CHUNK
from conftest import rel_err

K25_YARN_64 = {"type": "yarn", "factor": 64.0, "original_max_position_embeddings": 64, "beta_fast": 32.0,
               "beta_slow": 1.0, "mscale": 1.0, "mscale_all_dim": 1.0}


def long_hub(**text):
    """The tiny preset with K2.5's YaRN factor over an original context of 64, and 4096 positions."""
    hub = preset("tiny")
    hub["text_config"].update(max_position_embeddings=4096, rope_scaling=K25_YARN_64, **text)
    return hub


@pytest.fixture(scope="module")
def long_dir(tmp_path_factory):
    return make_tiny(str(tmp_path_factory.mktemp("long")), config=long_hub(), seed=7, shards=1, tokenizer=False)


@pytest.mark.parametrize("absorbed", [False, True])
@pytest.mark.parametrize("backend", ["numpy", "numba"])
def test_chunked_blocked_logits_equal_one_shot(tiny_dir, plain_dir, absorbed, backend, monkeypatch):
    """Chunk sizes 1, a non-divisor, a divisor and the whole prompt; key blocks 1, a non-divisor and more than
    the prompt; rel. error <= 1e-6 on the logits (float32 rounding alone)."""
    for path in (tiny_dir, plain_dir):
        model = k25ref.load_model(path)
        ids = np.arange(3, 3 + 24) * 7 % model.cfg.text.vocab_size
        ref = model.forward(ids, model.new_cache(), absorbed=absorbed, prefill_chunk=None, backend=engine.one_shot())
        monkeypatch.setattr(mla_blocked, "DECODE_ROWS", 0)         # the numba path's blocked kernel at every size
        for block in (1, 5, 64):
            monkeypatch.setattr(mla, "KEY_BLOCK", block)
            for chunk in (1, 5, 8, None):
                out = model.forward(ids, model.new_cache(), absorbed=absorbed, prefill_chunk=chunk, backend=backend)
                assert rel_err(out, ref) <= 1e-6, (path, block, chunk, rel_err(out, ref))


def test_media_rows_are_spliced_chunk_by_chunk(tiny_dir, rng):
    """Chunk boundaries inside an image's placeholders give the logits (and captured embeddings) of one pass."""
    model = k25ref.load_model(tiny_dir)
    grid = np.array([[1, 4, 4], [1, 2, 6]])                         # 4 + 3 media tokens
    pixels = rng.uniform(-1, 1, (16 + 12, 3, 14, 14)).astype(np.float32)
    pad = model.cfg.media_placeholder_token_id
    ids = np.array([5, 6] + [pad] * 4 + [7] + [pad] * 3 + [8, 9])
    ref_capture = {}
    ref = model.logits(ids, pixels, grid, capture=ref_capture, prefill_chunk=None)
    for chunk in (1, 3, 4):
        capture = {}
        out = model.logits(ids, pixels, grid, capture=capture, prefill_chunk=chunk)
        assert rel_err(out, ref) <= 1e-6
        assert np.array_equal(capture["embed"], ref_capture["embed"])
        assert np.array_equal(capture["layers.1.router_indices"], ref_capture["layers.1.router_indices"])


@pytest.mark.parametrize("chunk", [-1, 2.5, "8", True])
def test_a_bad_prefill_chunk_is_refused_everywhere(tiny_dir, chunk):
    model, ids = k25ref.load_model(tiny_dir), np.arange(1, 9)
    for call in (lambda: model.logits(ids, prefill_chunk=chunk), lambda: model.generate(ids, 2, prefill_chunk=chunk),
                 lambda: model.forward(ids, model.new_cache(), prefill_chunk=chunk)):
        with pytest.raises(PromptError, match="prefill_chunk must be a number of tokens"):
            call()


def test_media_that_do_not_fill_the_placeholders_are_refused_at_the_call(tiny_dir, rng):
    """generate checks placeholders against the media before returning its generator (no MoonViT run first)."""
    model = k25ref.load_model(tiny_dir)
    pad = model.cfg.media_placeholder_token_id
    pixels = rng.uniform(-1, 1, (16, 3, 14, 14)).astype(np.float32)   # one 4x4 image: 4 tokens
    for ids, pv, grid in (([5, pad, pad, pad, 6], None, None), ([5, pad, pad, pad, 6], pixels, np.array([[1, 4, 4]]))):
        with pytest.raises(PromptError, match=r"has 3 media placeholder tokens .* give (0|4) feature rows"):
            model.generate(np.array(ids), 2, pixel_values=pv, grid_thw=grid)


@pytest.mark.parametrize("backend, absorbed", [("numpy", False), ("numba", True)])
def test_decode_after_long_prefill_equals_full_forward(long_dir, backend, absorbed):
    """A 1500-token prompt (23x YaRN's original context) prefilled in chunks, then 4 tokens decoded one at a
    time: every decoded row equals the same row of one full forward pass."""
    model = k25ref.load_model(long_dir)
    ids = np.random.default_rng(1).integers(0, 700, 1504)
    full = model.logits(ids)
    cache = model.new_cache()
    rows = [model.forward(ids[:1500], cache, absorbed=absorbed, last_only=True, backend=backend)]
    rows += [model.forward(ids[t:t + 1], cache, absorbed=absorbed, backend=backend) for t in range(1500, 1504)]
    assert cache[0].length == 1504
    assert rel_err(np.concatenate(rows), full[1499:]) <= 1e-5


def test_prompt_beyond_the_context_is_refused_at_the_call(tiny_dir):
    model = k25ref.load_model(tiny_dir)                             # 256 positions
    n = model.cfg.text.max_position_embeddings
    with pytest.raises(PromptError, match=rf"need {n + 1} positions, more than the model's context of {n}"):
        model.generate(np.ones(n - 9, np.int64), 10)                # no next(): refused before any work
    assert next(model.generate(np.ones(n - 10, np.int64), 10, stop_ids=())) >= 0
    with pytest.raises(PromptError, match=f"context of {n}"):
        model.logits(np.ones(n + 1, np.int64))
    cache = model.new_cache()
    model.forward(np.ones(n - 2, np.int64), cache)
    with pytest.raises(PromptError, match=f"after {n - 2} cached"):
        model.forward(np.ones(3, np.int64), cache)
    assert cache[0].length == n - 2                                 # refused before anything was appended


def test_media_larger_than_the_context_names_its_tokens(tiny_dir):
    model = k25ref.load_model(tiny_dir)
    with pytest.raises(PromptError, match=r"image/video chunk 2 needs 400 tokens, more than the model's context "
                                          r"of 256 positions: pass a smaller image"):
        model.check_context(410, 1, np.array([[1, 4, 4], [1, 40, 40]]))


def _cli(*args, stdin=None):
    return subprocess.run([sys.executable, "-m", "k25ref.cli", *args], input=stdin, capture_output=True, text=True,
                          timeout=300, env=dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path)))


def test_cli_too_long_prompt_is_one_line_and_exit_6():
    """The embedded model has 1024 positions: generate (text, media, chat template) refuses at once with exit 6;
    chat refuses that line alone, in one line, and the session goes on."""
    long_text = "ROMEO: " * 1200
    res = _cli("generate", "--raw", "--backend", "numpy", "-", stdin=long_text)
    assert res.returncode == 6 and res.stdout == "", res.stderr
    assert len(res.stderr.strip().splitlines()) == 1 and "context of 1024" in res.stderr
    res = _cli("generate", "-n", "1000", "hello")
    assert res.returncode == 6 and "max_new_tokens (1000)" in res.stderr and len(res.stderr.strip().splitlines()) == 1
    res = _cli("chat", "-n", "4", stdin=long_text + "\nWho art thou?\n/exit\n")   # chat: that line's error only
    errors = [line for line in res.stderr.splitlines() if line.startswith("k25ref: error:")]
    assert len(errors) == 1 and "context of 1024" in errors[0], res.stderr
    assert res.returncode == 0 and res.stdout.count(">>> ") == 3 and res.stdout.split(">>> ")[2].strip()


def test_cli_image_too_large_for_the_context(tmp_path):
    path = str(tmp_path / "big.png")
    Image.new("RGB", (1792, 1792), (200, 30, 30)).save(path)          # 128 x 128 patches: 4096 tokens
    res = _cli("generate", "--image", path, "what is this?")
    assert res.returncode == 6 and len(res.stderr.strip().splitlines()) == 1, res.stderr
    assert "image/video chunk 1 needs 4096 tokens" in res.stderr and "context of 1024" in res.stderr


def test_prefill_chunk_default_is_documented():
    doc = open(os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "docs", "long-context.md"),
               encoding="utf-8").read()
    assert f"prefill_chunk={PREFILL_CHUNK}" in doc and f"KEY_BLOCK = {mla.KEY_BLOCK}" in doc


@pytest.mark.oracle
def test_long_prompt_matches_the_oracle(tmp_path):
    """2500 tokens, 39x YaRN's original context of 64 (factor 64): k25ref's logits against transformers' at
    the project's own bar (k25ref_rel, 1e-5), chunked and blocked, both backends. All layers dense, so that no
    router near-tie among 2500 tokens can flip an expert choice."""
    torch = pytest.importorskip("torch")
    pytest.importorskip("transformers")
    pytest.importorskip("compressed_tensors")
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tools"))
    import make_goldens
    import oracle
    torch.set_num_threads(1)
    hub = make_goldens.with_vocab(long_hub(num_hidden_layers=2, first_k_dense_replace=2), 1024)
    ckpt = make_tiny(str(tmp_path / "ckpt"), config=hub, seed=5, shards=1, tokenizer=False)
    ref_model, model = oracle.load_oracle(ckpt), k25ref.load_model(ckpt)
    ids = np.random.default_rng(0).integers(0, 700, 2500)
    ref = oracle.oracle_logits(ref_model, ids)
    for backend, absorbed in (("numpy", False), ("numba", True)):
        out = model.forward(ids, model.new_cache(), absorbed=absorbed, backend=backend)
        assert rel_err(out, ref) <= make_goldens.TOLERANCES["k25ref_rel"], (backend, rel_err(out, ref))


def test_memory_budget_counts_the_context(long_dir):
    """A budget that holds the working set but not a 4000-position cache and its chunk is refused with the
    numbers; a larger one runs, and leaves the weight cache what the context does not take."""
    from k25ref.weights import context_bytes
    probe = k25ref.load_model(long_dir)
    cache, activations = context_bytes(probe.cfg, 4000, PREFILL_CHUNK)
    assert cache == 4000 * probe.cfg.text.num_hidden_layers * (32 + 8) * 4
    assert context_bytes(probe.cfg, 4000, 64)[1] < activations            # smaller chunks, less memory
    tight = k25ref.load_model(long_dir, memory_budget=probe.working_set + cache)
    with pytest.raises(PromptError, match=r"4000 positions need .* GiB of latent cache .* memory budget"):
        tight.generate(np.ones(3990, np.int64), 10)
    budget = probe.working_set + cache + activations + (1 << 20)
    roomy = k25ref.load_model(long_dir, memory_budget=budget)
    next(roomy.generate(np.ones(100, np.int64), 3900, stop_ids=()))
    assert roomy.cache.budget == 1 << 20
