"""Numerics at the edges: the longest tested context, extreme but finite weights, every bfloat16 and
float8 bit pattern, empty prompts, and the causal mask that never leaves a row with nothing to attend to.

Claims: no NaN or Inf anywhere for inputs inside the documented range; conversions bit-exact against
torch (when installed) and against the format's definition over every bit pattern; an empty prompt is a
PromptError, not an empty or NaN result.
"""
import os
import shutil

import numpy as np
import pytest
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st

import k25ref
from k25ref.checkpoint import F8_E4M3_TABLE, SafetensorsFile, bf16_to_f32, f32_to_bf16, to_float32
from k25ref.cli import main
from k25ref.errors import PromptError
from k25ref.make_tiny import make_tiny, write_safetensors
from k25ref.mla import LatentCache, causal_mask
from k25ref.nn import softmax
from tests.conftest import check_close

ALL_BF16 = np.arange(2**16, dtype=np.uint32).astype(np.uint16)
BF16_MAX = np.float32(3.3895313892515355e38)           # 0x7F7F
BF16_TINY = np.float32(2.0**-133)                      # 0x0001, the smallest subnormal


def all_finite(capture):
    return [k for k, v in capture.items() if not np.all(np.isfinite(np.asarray(v, np.float64)))]


# ----------------------------------------------------------------------------
# the longest tested context


def test_full_context_is_finite_and_cache_agrees(tiny_dir):
    """256 positions (the tiny preset's max_position_embeddings, 8x its YaRN original context): every
    intermediate finite, and the last 16 positions decoded one at a time from the latent cache match
    the full forward."""
    model = k25ref.load_model(tiny_dir)
    T = model.cfg.text.max_position_embeddings
    assert T == 256
    ids = (np.arange(T) * 7919) % model.cfg.text.vocab_size
    capture = {}
    full = model.logits(ids, capture=capture)
    assert np.all(np.isfinite(full)) and not all_finite(capture)
    cache = model.new_cache()
    model.forward(ids[:T - 16], cache, absorbed=True)
    stepped = np.stack([model.forward(ids[t:t + 1], cache, absorbed=True)[-1] for t in range(T - 16, T)])
    assert cache[0].length == T
    check_close(stepped, full[T - 16:], rtol=1e-4, atol=1e-4 * np.abs(full).max(), label="decoded vs full")


# ----------------------------------------------------------------------------
# extreme but finite weights


@pytest.fixture(scope="module")
def plain_single(tmp_path_factory):
    return make_tiny(str(tmp_path_factory.mktemp("num") / "base"), "tiny", seed=4, shards=1, tokenizer=False)


def rewritten(src, dst, change):
    """A copy of checkpoint `src` with every stored tensor passed through change(name, dtype, array)."""
    shutil.copytree(src, dst)
    for f in os.listdir(dst):
        if f.endswith(".safetensors"):
            path = os.path.join(dst, f)
            sf = SafetensorsFile(path)
            tensors = [(n, i.dtype, change(n, i.dtype, np.array(sf.tensor(n)))) for n, i in sf.infos.items()]
            del sf
            write_safetensors(path, tensors)
    return str(dst)


def scale_matrices(k):
    def change(name, dtype, a):
        if dtype == "BF16" and a.ndim == 2 and "norm" not in name:
            return f32_to_bf16(bf16_to_f32(a) * np.float32(k))
        return a
    return change


def bf16_max_embeddings(name, dtype, a):
    if name.endswith("embed_tokens.weight"):
        return np.where(np.arange(a.size).reshape(a.shape) % 2, np.uint16(0xFF7F), np.uint16(0x7F7F))
    return a


def subnormal_norms(name, dtype, a):
    if name.endswith("layernorm.weight") or name.endswith("model.norm.weight"):
        return np.ones_like(a) * np.uint16(0x0001)
    return a


@pytest.mark.parametrize("change", [scale_matrices(1e6), bf16_max_embeddings, subnormal_norms],
                         ids=["matrices_x1e6", "embeddings_at_bf16_max", "norm_weights_subnormal"])
def test_extreme_finite_weights_give_finite_logits(plain_single, tmp_path, change):
    """RMSNorm bounds what every layer sees, so huge matrices, embeddings at +-3.39e38 (mean of squares
    overflows to inf in float32, as in transformers, and the normalised row becomes 0) and subnormal norm
    weights all stay finite, through the dense layer, the router and the INT4 experts."""
    model = k25ref.load_model(rewritten(plain_single, tmp_path / "ck", change))
    capture = {}
    with np.errstate(over="ignore"):
        logits = model.logits(np.arange(1, 49), capture=capture)
    assert np.all(np.isfinite(logits)) and not all_finite(capture)
    with np.errstate(over="ignore"):
        tokens = list(model.generate([5, 6, 7], 4, stop_ids=()))
    assert len(tokens) == 4 and all(0 <= t < model.cfg.text.vocab_size for t in tokens)


# ----------------------------------------------------------------------------
# every bfloat16 and float8 bit pattern


def test_bf16_every_pattern_round_trips():
    """bf16 -> f32 -> bf16 is the identity on all 65536 patterns but NaNs, which become the quiet 0x7FC0;
    subnormals and the largest values included, no flush to zero."""
    f = bf16_to_f32(ALL_BF16)
    nan = np.isnan(f)
    assert nan.sum() == 2 * 127                                           # exponent 0xFF, mantissa != 0
    assert np.array_equal(f32_to_bf16(f)[~nan], ALL_BF16[~nan])
    assert np.all(f32_to_bf16(f)[nan] == 0x7FC0)
    assert f[0x0001] == BF16_TINY and f[0x8001] == -BF16_TINY and f[0x007F] > 0
    assert f[0x7F7F] == BF16_MAX and f[0xFF7F] == -BF16_MAX and np.isposinf(f[0x7F80]) and np.isneginf(f[0xFF80])
    assert np.array_equal(f.view(np.uint32) >> 16, ALL_BF16.astype(np.uint32))   # widening is a bit shift


def test_f32_to_bf16_rounds_to_nearest_even_at_the_edges():
    edges = np.array([0x7F7F7FFF, 0x7F7F8000, 0x7F7F8001, 0x7F7FFFFF,   # below / at / past the overflow tie
                      0x00008000, 0x00018000, 0x00007FFF, 0x00000001,   # subnormal ties (to even), tiny values
                      0x3F808000, 0x3F818000, 0x80000000, 0x7F800000], np.uint32).view(np.float32)
    want = np.array([0x7F7F, 0x7F80, 0x7F80, 0x7F80, 0x0000, 0x0002, 0x0000, 0x0000,
                     0x3F80, 0x3F82, 0x8000, 0x7F80], np.uint16)
    assert np.array_equal(f32_to_bf16(edges), want)


@settings(max_examples=200, deadline=None, derandomize=True, database=None)
@given(bits=st.integers(0, 2**32 - 1))
def test_f32_to_bf16_is_the_nearest_bf16(bits):
    """Checked against exact arithmetic: no bf16 is closer, and a tie goes to the even mantissa."""
    x = np.array([bits], np.uint32).view(np.float32)
    if np.isnan(x[0]):
        assert f32_to_bf16(x)[0] == 0x7FC0
        return
    b = int(f32_to_bf16(x)[0])
    err = abs(float(bf16_to_f32(np.array([b], np.uint16))[0]) - float(x[0]))
    for n in (b - 1, b + 1):
        other = float(bf16_to_f32(np.array([n & 0xFFFF], np.uint16))[0])
        if np.isfinite(other) and (n >> 15) == (b >> 15):
            d = abs(other - float(x[0]))
            assert err < d or (err == d and b % 2 == 0)


def test_conversions_match_torch_bit_for_bit():
    torch = pytest.importorskip("torch")
    f = torch.from_numpy(ALL_BF16.view(np.int16).copy()).view(torch.bfloat16).float().numpy()
    assert np.array_equal(bf16_to_f32(ALL_BF16).view(np.uint32), f.view(np.uint32))
    rng = np.random.default_rng(0)
    x = np.concatenate([rng.integers(0, 2**32, 200_000, dtype=np.uint64).astype(np.uint32),
                        (ALL_BF16.astype(np.uint32) << 16) | 0x8000,          # every tie
                        (ALL_BF16.astype(np.uint32) << 16) | 0x7FFF]).view(np.float32)
    ref = torch.from_numpy(x.copy()).to(torch.bfloat16).view(torch.int16).numpy().view(np.uint16)
    ours = f32_to_bf16(x)
    nan = np.isnan(x)
    assert np.array_equal(ours[~nan], ref[~nan])
    assert np.all(np.isnan(bf16_to_f32(ours[nan])))
    e4m3 = torch.from_numpy(np.arange(256, dtype=np.uint8)).view(torch.float8_e4m3fn).float().numpy()
    assert np.array_equal(np.isnan(F8_E4M3_TABLE), np.isnan(e4m3))
    assert np.array_equal(F8_E4M3_TABLE[~np.isnan(e4m3)], e4m3[~np.isnan(e4m3)])


def test_f8_e4m3_table_is_the_fn_variant():
    """No infinities, +-448 the largest, 2^-9 the smallest subnormal, NaN only at 0x7F and 0xFF."""
    t = F8_E4M3_TABLE
    assert not np.any(np.isinf(t)) and np.flatnonzero(np.isnan(t)).tolist() == [0x7F, 0xFF]
    assert np.nanmax(t) == 448 and np.nanmin(t) == -448 and t[1] == 2.0**-9 and t[0x80] == 0 and np.signbit(t[0x80])


def test_widening_is_exact_and_never_a_view():
    raw = np.array([0x0001, 0x7F7F, 0x8000], np.uint16)
    assert np.array_equal(to_float32(raw, "BF16"), bf16_to_f32(raw))
    h = np.array([6.0e-8, 65504.0, -0.0], np.float16)                   # F16 subnormal and max: exact
    assert np.array_equal(to_float32(h, "F16"), h.astype(np.float64).astype(np.float32))
    f = np.array([1.5, -2.0], np.float32)
    out = to_float32(f, "F32")
    assert np.array_equal(out, f) and not np.shares_memory(out, f)     # a cached weight never aliases a map
    with pytest.raises(TypeError):
        to_float32(np.zeros(2, np.int32), "I32")


# ----------------------------------------------------------------------------
# empty prompts


def test_empty_prompt_is_a_prompt_error(tiny_dir):
    model = k25ref.load_model(tiny_dir)
    for empty in ([], np.zeros(0, np.int64), np.zeros((1, 0), np.int64)):
        with pytest.raises(PromptError, match="non-empty"):
            model.logits(empty)
        with pytest.raises(PromptError, match="non-empty"):
            next(model.generate(empty, 3))


@pytest.mark.parametrize("prompt", ["", "   \n\t"])
def test_cli_empty_prompt_one_line(prompt):
    result = CliRunner().invoke(main, ["generate", prompt, "-n", "1"])
    assert result.exit_code == PromptError.exit_code == 6
    assert result.stderr.strip() == "k25ref: error: the prompt is empty"


def test_cli_empty_stdin_one_line():
    result = CliRunner().invoke(main, ["generate", "-", "-n", "1"], input=b"")
    assert result.exit_code == 6 and result.stderr.count("\n") == 1


# ----------------------------------------------------------------------------
# no all-masked attention row


@settings(max_examples=60, deadline=None, derandomize=True, database=None)
@given(chunks=st.lists(st.integers(1, 9), min_size=1, max_size=6))
def test_causal_rows_always_see_a_position(chunks):
    """However a sequence is fed (prefill, then chunks, then single tokens), the cache makes S >= T, so the
    mask's row t keeps position S-T+t (itself) visible and softmax never sees a row of -inf only."""
    cache = LatentCache(4, 2, capacity=2)
    for T in chunks:
        c_kv, _ = cache.append(np.ones((T, 4), np.float32), np.ones((T, 2), np.float32))
        S = c_kv.shape[0]
        assert S >= T
        mask = causal_mask(T, S)
        visible = mask == 0
        assert visible.any(axis=1).all() and visible[np.arange(T), S - T + np.arange(T)].all()
        p = softmax(np.zeros((T, S), np.float32) + mask)
        assert np.all(np.isfinite(p)) and np.allclose(p.sum(-1), 1)
        assert np.array_equal(p > 0, visible)


def test_causal_mask_refuses_more_tokens_than_positions():
    with pytest.raises(AssertionError):
        causal_mask(3, 2)
