"""The Kimi tokenizer: known answers, errors, and ids identical to tiktoken on generated text.

Two vocabularies are checked: the bundled Shakespeare tokenizer (ASCII-heavy merges) and one
trained here on a generated multilingual corpus (merges inside CJK, emoji and combining-mark
UTF-8 sequences). The oracle is tiktoken.Encoding built from the same tiktoken.model and PAT_STR.

Characters are drawn from those assigned in Python's unicodedata (Unicode 14 for Python 3.11):
newer characters are classified by the `regex` module but not by tiktoken's Rust regex tables,
so their pre-tokens can differ (see the k25ref.tokenizer module docstring).
"""

import functools
import os
import random
import sys
import types
import unicodedata

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import k25ref
from k25ref.bpe_train import train_tokenizer
from k25ref.errors import ConfigError, PromptError
from k25ref.tokenizer import (
    PAT_STR, PRE_TOKEN_RE, Tokenizer, bpe_merge, bpe_merge_reference, read_tiktoken_model, split_long_runs,
)

FUZZ_EXAMPLES = int(os.environ.get("K25REF_FUZZ_EXAMPLES", "400"))
N_GENERATED = 10_000
FUZZ = settings(max_examples=FUZZ_EXAMPLES, derandomize=True, database=None, deadline=None,
                suppress_health_check=[HealthCheck.too_slow])

# ----------------------------------------------------------------------------
# generated text

FRAGMENTS = [
    # words, case, contractions
    "Hello", " world", "the", " The", "THE", "camelCase", "HTTPServer", "don't", " DON'T", "It's", " we'LL",
    "she'd", " they're", "'ve", "I'M", "'s", "O'Neil", "naïve", "Ünïcödé", "ǅemal", "ſtraße",
    # digits and punctuation
    "0", "12", "1234567890", " 3.14159", "1,000,000", "!", "?!", "...", " --", "—", "«quote»", "$(x)", "#!/bin",
    # whitespace runs
    " ", "  ", "     ", "\t", "\t\t", "\n", "\r\n", "\r\n\r\n", "\n\n\n", " \n ", "\v", "\f", "\x1c", "\x85",
    "\xa0", "\u2028", "\u3000", "\u2003\u2003",
    # CJK, kana, hangul, and characters whose script extensions include Han
    "中文", "你好世界", "混合", "日本語", "の", "カタカナ", "한국어", "。", "、", "「引用」", "々", "〇", "㐀", "𠀀", "豈",
    # emoji: plain, skin tone, ZWJ family, flag, variation selector
    "😀", "👍🏽", "👨‍👩‍👧", "🇯🇵", "❤️", "🤖 ",
    # combining marks and other scripts
    "e\u0301", "a\u0308\u0323", "नमस्ते", "ภาษาไทย", "مرحبا", "שָׁלוֹם", "Ελληνικά", "русский", "ü\u0304",
    # special-token text (parsed as special ids) and near misses (plain text)
    "[BOS]", "[EOS]", "<|im_end|>", "<think>", "</think>", "<|media_pad|>", "<|reserved_token_3850|>", "[PAD]",
    "<|im_", "[BO", "<think", "|>", "<|",
]

ASSIGNED = [chr(c) for c in range(0x110000)
            if unicodedata.category(chr(c)) not in ("Cn", "Cs")]   # assigned in Unicode 14, no surrogates


def generated_text(rng: random.Random) -> str:
    """1..12 fragments, some replaced by random assigned chars or runs of one char."""
    parts = []
    for _ in range(rng.randint(1, 12)):
        kind = rng.random()
        if kind < 0.6:
            parts.append(rng.choice(FRAGMENTS))
        elif kind < 0.85:
            parts.append("".join(rng.choice(ASSIGNED) for _ in range(rng.randint(1, 4))))
        else:
            parts.append(rng.choice(" \ta1'\n中😀") * rng.randint(2, 40))
    return "".join(parts)


def generated_corpus(n: int, seed: int) -> list:
    rng = random.Random(seed)
    return [generated_text(rng) for _ in range(n)]


# ----------------------------------------------------------------------------
# fixtures

@pytest.fixture(scope="module")
def shakespeare():
    return Tokenizer.bundled()


@pytest.fixture(scope="module")
def multilingual(tmp_path_factory):
    """A 1,024-id tokenizer trained on generated multilingual text: merges inside multi-byte chars."""
    out = tmp_path_factory.mktemp("multilingual")
    train_tokenizer("".join(generated_corpus(4000, seed=7)), vocab_size=1024, out_dir=out)
    return Tokenizer.from_pretrained(out)


@functools.lru_cache(maxsize=None)
def tiktoken_of(tok):
    """The oracle: tiktoken.Encoding from the same ranks, special tokens and PAT_STR (built once)."""
    tiktoken = pytest.importorskip("tiktoken")
    return tiktoken.Encoding("k25ref-test", pat_str=PAT_STR, mergeable_ranks=tok.ranks,
                             special_tokens=tok.special_tokens)


# ----------------------------------------------------------------------------
# the merge rule, by hand

def byte_ranks(*merged):
    """All 256 single bytes (rank = byte value), then `merged` tokens at ranks 256, 257, ..."""
    ranks = {bytes([b]): b for b in range(256)}
    ranks.update({token: 256 + i for i, token in enumerate(merged)})
    return ranks


@pytest.mark.parametrize("merge", [bpe_merge_reference, bpe_merge])
def test_lowest_rank_merges_first_not_leftmost(merge):
    assert merge(b"abc", byte_ranks(b"ab", b"bc")) == [256, ord("c")]
    assert merge(b"abc", byte_ranks(b"bc", b"ab")) == [ord("a"), 256]
    # "abc" is reached through "ab" + "c"; the rank of the joined bytes is all that counts
    assert merge(b"abcb", byte_ranks(b"ab", b"bc", b"abc")) == [258, ord("b")]


@pytest.mark.parametrize("merge", [bpe_merge_reference, bpe_merge])
def test_equal_ranks_merge_leftmost_first(merge):
    assert merge(b"aaa", byte_ranks(b"aa")) == [256, ord("a")]
    assert merge(b"aaaaa", byte_ranks(b"aa", b"aaaa")) == [257, ord("a")]


@pytest.mark.fuzz
@FUZZ
@given(piece=st.binary(min_size=1, max_size=40).map(lambda b: bytes(x % 4 + 97 for x in b)),
       tokens=st.lists(st.binary(min_size=2, max_size=5).map(lambda b: bytes(x % 4 + 97 for x in b)),
                       unique=True, max_size=30))
def test_fast_merge_equals_reference_and_tiktoken(piece, tokens):
    """Adversarial vocabularies over 'abcd' (ties, tokens unreachable by merges, long runs)."""
    tiktoken = pytest.importorskip("tiktoken")
    ranks = byte_ranks(*tokens)
    expected = bpe_merge_reference(piece, ranks)
    assert bpe_merge(piece, ranks) == expected
    enc = tiktoken.Encoding("merge-test", pat_str=r"[\s\S]+", mergeable_ranks=ranks, special_tokens={})
    assert enc._encode_single_piece(piece) == expected


# ----------------------------------------------------------------------------
# pre-tokens and special tokens

@pytest.mark.parametrize("text, pieces", [
    ("中文English混合", ["中文", "English", "混合"]),                  # [k25-facts §4.2], splintr's example
    ("Hello, world!", ["Hello", ",", " world", "!"]),
    ("1234567890", ["123", "456", "789", "0"]),
    ("I'm DON'T HTTPServer", ["I'm", " DON'T", " HTTPServer"]),
    ("a  \r\n\n  b", ["a", "  \r\n\n", " ", " b"]),
])
def test_pre_tokens(text, pieces):
    assert PRE_TOKEN_RE.findall(text) == pieces


def test_special_ids_follow_the_k25_layout(shakespeare):
    tok, n = shakespeare, shakespeare.n_base
    assert (n, tok.vocab_size) == (3840, 4096)
    assert (tok.bos_id, tok.eos_id, tok.im_end_id) == (n, n + 1, n + 2)
    assert (tok.media_pad_id, tok.think_id, tok.think_end_id) == (n + 21, n + 22, n + 23)
    assert tok.special_tokens["[UNK]"] == n + 254 and tok.special_tokens["[PAD]"] == n + 255
    assert tok.special_tokens[f"<|reserved_token_{n + 5}|>"] == n + 5
    assert tok.stop_ids == (n + 2, n + 1)


def test_special_token_text_is_parsed(shakespeare):
    tok = shakespeare
    ids = tok.encode("[BOS]hi<|im_end|><think>")
    assert ids[0] == tok.bos_id and ids[-2:] == [tok.im_end_id, tok.think_id]
    assert tok.decode(ids[1:-2]) == "hi"
    plain = tok.encode("<think>", allowed_special=())
    assert tok.think_id not in plain and tok.decode(plain) == "<think>"
    only_think = tok.encode("[BOS]<think>", allowed_special={"<think>"})
    assert only_think[-1] == tok.think_id and tok.bos_id not in only_think
    with pytest.raises(PromptError, match="unknown special"):
        tok.encode("x", allowed_special={"<|nope|>"})


def test_allowed_special_subset_matches_tiktoken(shakespeare):
    enc = tiktoken_of(shakespeare)
    text = "[BOS]a<think>b</think><|im_end|>[EOS]"
    for allowed in ({"<think>"}, {"[EOS]", "</think>"}, set()):
        assert shakespeare.encode(text, allowed_special=allowed) == enc.encode(
            text, allowed_special=allowed, disallowed_special=())


# ----------------------------------------------------------------------------
# identical to tiktoken, round trip, reference == fast, on generated text

@pytest.mark.fuzz
def test_generated_corpus_matches_tiktoken(shakespeare, multilingual):
    """10,000 generated strings, both vocabularies: tiktoken's ids, exact round trip, reference path."""
    texts = generated_corpus(N_GENERATED, seed=2024)
    for tok in (shakespeare, multilingual):
        enc = tiktoken_of(tok)
        for text in texts:
            ids = tok.encode(text)
            assert ids == enc.encode(text, allowed_special="all"), text
            assert tok.decode(ids) == text
        for text in texts[:2000]:
            assert tok.encode_reference(text) == tok.encode(text), text


@pytest.mark.fuzz
@FUZZ
@given(text=st.text(st.characters(exclude_categories=("Cs", "Cn")), max_size=40))
def test_any_text_matches_tiktoken(shakespeare, multilingual, text):
    for tok in (shakespeare, multilingual):
        ids = tok.encode(text)
        assert ids == tiktoken_of(tok).encode(text, allowed_special="all")
        assert ids == tok.encode_reference(text)
        assert tok.decode(ids) == text


@pytest.mark.fuzz
@FUZZ
@given(parts=st.lists(st.sampled_from(FRAGMENTS), max_size=12))
def test_fragment_mixtures_match_tiktoken(multilingual, parts):
    text = "".join(parts)
    ids = multilingual.encode(text)
    assert ids == tiktoken_of(multilingual).encode(text, allowed_special="all")
    assert multilingual.decode(ids) == text


def test_multilingual_vocab_merges_inside_characters(multilingual):
    """The fixture is only useful if it really merges multi-byte sequences (CJK, emoji)."""
    non_ascii = [t for t in multilingual.ranks if len(t) > 1 and max(t) >= 0x80]
    assert len(non_ascii) > 50


def test_shakespeare_fast_path_equals_reference_and_compresses(shakespeare):
    held = (k25ref_root() / "data" / "tinyshakespeare" / "heldout.txt").read_text(encoding="utf-8")
    part = held[:20_000]
    ids = shakespeare.encode(part)
    assert ids == shakespeare.encode_reference(part)
    assert len(held.encode("utf-8")) / len(shakespeare.encode(held)) > 3.0    # measured: 3.20 bytes/token


def k25ref_root():
    from pathlib import Path
    return Path(__file__).resolve().parents[1]


# ----------------------------------------------------------------------------
# long texts: the original's cuts

def runs_cut_by_definition(text, max_chars, max_run):
    """The cut rule spelled out char by char: within each max_chars chunk, a run of same-class
    (str.isspace) chars is cut before its (max_run+1)-th, (2*max_run+1)-th, ... char."""
    pieces = []
    for start in range(0, len(text), max_chars):
        chunk, piece, run = text[start:start + max_chars], "", 0
        for i, char in enumerate(chunk):
            same = i > 0 and char.isspace() == chunk[i - 1].isspace()
            run = run + 1 if same else 1
            if run > max_run and (run - 1) % max_run == 0:
                pieces.append(piece)
                piece = ""
            piece += char
        pieces.append(piece)
    return pieces


@pytest.mark.fuzz
@FUZZ
@given(text=st.text(st.sampled_from(" \t\x1c\u3000ab1中"), min_size=1, max_size=60),
       max_chars=st.integers(1, 30), max_run=st.integers(1, 6))
def test_split_long_runs(text, max_chars, max_run):
    pieces = list(split_long_runs(text, max_chars, max_run))
    assert pieces == runs_cut_by_definition(text, max_chars, max_run)
    assert "".join(pieces) == text


@pytest.mark.parametrize("text", [" " * 30_000 + "x", "a" * 30_001])
def test_long_runs_are_cut_like_the_original(multilingual, text):
    """The multilingual vocabulary has tokens of up to 40 spaces or 'a's, so the cut shows in the ids."""
    enc = tiktoken_of(multilingual)
    ids = multilingual.encode(text)
    assert ids == [t for piece in split_long_runs(text) for t in enc.encode(piece, allowed_special="all")]
    assert ids != enc.encode(text)           # one tiktoken call over the whole run merges across the cut
    assert multilingual.decode(ids) == text


# ----------------------------------------------------------------------------
# decode, pieces, errors

def test_decode_replaces_broken_utf8_and_decode_bytes_is_exact(shakespeare):
    ids = shakespeare.encode("中")                # three byte tokens: e4 b8 ad
    assert shakespeare.decode_bytes(ids[:2]) == "中".encode("utf-8")[:2]
    assert shakespeare.decode(ids[:2]) == "\ufffd"
    assert shakespeare.piece(ids[0]) == "\\xe4"
    assert shakespeare.piece(shakespeare.encode(" the")[0]) == " the"
    assert shakespeare.piece(shakespeare.think_id) == "<think>"


@pytest.mark.parametrize("bad, message", [
    ([1, -1], "token id -1 at position 1"), ([4096], "token id 4096 at position 0"),
    ([1.5], "1.5 at position 0 is not an integer"), (["a"], "'a' at position 0 is not an integer"),
])
def test_decode_rejects_bad_ids(shakespeare, bad, message):
    with pytest.raises(PromptError, match=message):
        shakespeare.decode(bad)


def test_encode_rejects_lone_surrogates_and_non_str(shakespeare):
    with pytest.raises(PromptError, match="lone surrogate U\\+D800 at char 2"):
        shakespeare.encode("ab\ud800c")
    with pytest.raises(PromptError, match="expects str"):
        shakespeare.encode(b"bytes")


def write_folder(path, model_lines, config_text='{"added_tokens_decoder": {}}'):
    path.mkdir(parents=True, exist_ok=True)
    (path / "tiktoken.model").write_text("".join(line + "\n" for line in model_lines))
    (path / "tokenizer_config.json").write_text(config_text)
    return path


def byte_lines():
    import base64
    return [f"{base64.b64encode(bytes([b])).decode()} {b}" for b in range(256)]


NAMED = '{"added_tokens_decoder": {"256": {"content": "[BOS]"}, "257": {"content": "[EOS]"}}}'


def test_minimal_folder_loads(tmp_path):
    tok = Tokenizer.from_pretrained(write_folder(tmp_path, byte_lines(), NAMED))
    assert (tok.vocab_size, tok.bos_id, tok.eos_id) == (512, 256, 257)
    assert tok.encode("hi") == [104, 105]
    with pytest.raises(ConfigError, match="no special token '<think>'"):
        tok.think_id


@pytest.mark.parametrize("lines, config, message", [
    (byte_lines()[:3] + ["not-a-line"] + byte_lines()[3:], NAMED, r"tiktoken.model:4: expected"),
    (byte_lines() + ["@@@@ 256"], NAMED, r"tiktoken.model:257: '@@@@' is not valid base64"),
    (byte_lines() + ["YQ== 256"], NAMED, r"tiktoken.model:257: token b'a' already has rank 97"),
    (byte_lines() + ["YWI= 255"], NAMED, r"tiktoken.model:257: rank 255 already used on line 256"),
    (byte_lines() + ["YWI= 300"], NAMED, r"rank 256 is missing"),
    (byte_lines()[1:] + ["YWI= 0"], NAMED, r"single byte 0x00 has no rank"),
    (byte_lines(), '{"added_tokens_decoder": {\n  "256": }', r"tokenizer_config.json:2: malformed JSON"),
    (byte_lines(), '{"added_tokens_decoder": {"12": {"content": "[BOS]"}}}', r"id 12 \('\[BOS\]'\) is outside"),
    (byte_lines(), '{"added_tokens_decoder": {"600": {"content": "[BOS]"}}}', r"id 600 .* is outside"),
    (byte_lines(), '{"added_tokens_decoder": {"256": {"content": "[BOS]"}, "257": {"content": "[BOS]"}}}',
     "same name"),
    (byte_lines(), '{"added_tokens_decoder": {"256": {"content": "[BOS]"}}}', r"eos_token '\[EOS\]' is not"),
    (byte_lines(), '{"bos_token": {"content": "<s>"}, "added_tokens_decoder": {"257": {"content": "[EOS]"}}}',
     r"bos_token '<s>' is not"),
])
def test_malformed_files_name_file_and_line(tmp_path, lines, config, message):
    with pytest.raises(ConfigError, match=message):
        Tokenizer.from_pretrained(write_folder(tmp_path, lines, config))


def test_missing_files(tmp_path):
    with pytest.raises(ConfigError, match="not a tokenizer folder"):
        Tokenizer.from_pretrained(tmp_path / "nowhere")
    with pytest.raises(ConfigError, match="tiktoken.model: cannot read"):
        Tokenizer.from_pretrained(tmp_path)
    write_folder(tmp_path, byte_lines())
    (tmp_path / "tokenizer_config.json").unlink()
    with pytest.raises(ConfigError, match="tokenizer_config.json: cannot read"):
        Tokenizer.from_pretrained(tmp_path)


def test_real_kimi_file_size_is_not_assumed(tmp_path):
    """n_base comes from the file: a 300-rank file puts [BOS] at 300."""
    import base64
    lines = byte_lines() + [f"{base64.b64encode(bytes([97, b])).decode()} {256 + b}" for b in range(44)]
    config = '{"added_tokens_decoder": {"300": {"content": "[BOS]"}, "301": {"content": "[EOS]"}}}'
    tok = Tokenizer.from_pretrained(write_folder(tmp_path, lines, config))
    assert (tok.n_base, tok.bos_id, tok.vocab_size) == (300, 300, 556)
    assert len(read_tiktoken_model(tmp_path / "tiktoken.model")) == 300


# ----------------------------------------------------------------------------
# chat template hook

def test_apply_chat_template_renders_then_encodes(shakespeare, monkeypatch):
    seen = {}

    def render(messages, tools=None, thinking=True, add_generation_prompt=True):
        seen.update(messages=messages, tools=tools, thinking=thinking, add_generation_prompt=add_generation_prompt)
        user = messages[0]["content"]
        return f"<|im_user|>user<|im_middle|>{user}<|im_end|><|im_assistant|>assistant<|im_middle|><think>"

    fake_chat = types.ModuleType("k25ref.chat")
    fake_chat.render = render
    monkeypatch.setitem(sys.modules, "k25ref.chat", fake_chat)
    monkeypatch.setattr(k25ref, "chat", fake_chat, raising=False)
    messages = [{"role": "user", "content": "Good morrow"}]
    text = shakespeare.apply_chat_template(messages, thinking=False, tokenize=False)
    assert text.startswith("<|im_user|>") and seen["thinking"] is False and seen["add_generation_prompt"] is True
    ids = shakespeare.apply_chat_template(messages, tools=[{"name": "f"}])
    assert ids == shakespeare.encode(text) and seen["tools"] == [{"name": "f"}]
    assert ids[0] == shakespeare.special_tokens["<|im_user|>"] and ids[-1] == shakespeare.think_id
