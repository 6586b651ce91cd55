"""The BPE trainer: its merge order by hand, incremental counts == recounting, and a trained
tokenizer that loads, round-trips and compresses held-out Shakespeare."""

import json
import time
from collections import Counter
from pathlib import Path

from k25ref.bpe_train import count_words, merge_word, train_bpe, train_tokenizer
from k25ref.tokenizer import K25_SPECIAL_TOKENS, Tokenizer, read_tiktoken_model

DATA = Path(__file__).resolve().parents[1] / "data" / "tinyshakespeare"


def train_by_recounting(text, n_ranks):
    """The trainer's definition, run the slow way: recount every pair before every merge."""
    token_bytes = [bytes([b]) for b in range(256)]
    ids_of = {t: i for i, t in enumerate(token_bytes)}
    counts = count_words(text)
    words, freqs = [list(w) for w in counts], list(counts.values())
    while len(token_bytes) < n_ranks:
        pairs = Counter()
        for word, f in zip(words, freqs):
            for pair in zip(word, word[1:]):
                pairs[pair] += f
        if not pairs:
            break
        a, b = min(pairs, key=lambda p: (-pairs[p], token_bytes[p[0]], token_bytes[p[1]]))
        joined = token_bytes[a] + token_bytes[b]
        if joined not in ids_of:
            ids_of[joined] = len(token_bytes)
            token_bytes.append(joined)
        words = [merge_word(word, a, b, ids_of[joined]) for word in words]
    return {t: r for r, t in enumerate(token_bytes)}


def test_merge_word_is_left_to_right_and_non_overlapping():
    assert merge_word([1, 1, 1], 1, 1, 9) == [9, 1]
    assert merge_word([1, 2, 1, 2, 3], 1, 2, 9) == [9, 9, 3]
    assert merge_word([2, 1], 1, 2, 9) == [2, 1]


def test_most_frequent_pair_first_then_ties_by_bytes():
    # pre-tokens "xy", " xy" x2, " ab": (x, y) occurs 3 times
    assert train_bpe("xy xy xy ab", 257) == {**{bytes([b]): b for b in range(256)}, b"xy": 256}
    # "ab", " cd": every pair occurs once; ties go to the smallest (left bytes, right bytes)
    ranks = train_bpe("ab cd", 259)
    assert [t for t, r in sorted(ranks.items(), key=lambda kv: kv[1])][256:] == [b" c", b" cd", b"ab"]


def test_single_bytes_keep_their_byte_values_and_training_stops_when_pairs_run_out():
    ranks = train_bpe("abab", 1000)
    assert all(ranks[bytes([b])] == b for b in range(256))
    assert ranks == {**{bytes([b]): b for b in range(256)}, b"ab": 256, b"abab": 257}


def test_incremental_counts_equal_recounting():
    text = (DATA / "train.txt").read_text(encoding="utf-8")[:20_000] + " naïve 中文中文 😀😀 don't\r\n\t\t"
    assert train_bpe(text, 256 + 300) == train_by_recounting(text, 256 + 300)


def test_trained_folder_loads_round_trips_and_compresses(tmp_path):
    train = (DATA / "train.txt").read_text(encoding="utf-8")[:100_000]
    held = (DATA / "heldout.txt").read_text(encoding="utf-8")
    start = time.perf_counter()
    train_tokenizer(train, vocab_size=768, out_dir=tmp_path)
    assert time.perf_counter() - start < 10
    tok = Tokenizer.from_pretrained(tmp_path)
    assert (tok.n_base, tok.vocab_size) == (512, 768)
    ids = tok.encode(held)
    assert tok.decode(ids) == held
    bytes_per_token = len(held.encode("utf-8")) / len(ids)
    assert bytes_per_token > 1.8            # bytes alone give 1.0; measured 1.92 for these 256 merges


def test_config_puts_k25_specials_at_their_offsets(tmp_path):
    train_tokenizer("to be or not to be", vocab_size=256 + 256 + 3, out_dir=tmp_path)
    config = json.loads((tmp_path / "tokenizer_config.json").read_text())
    n_base = len(read_tiktoken_model(tmp_path / "tiktoken.model"))
    assert n_base == 259
    names = {int(k) - n_base: v["content"] for k, v in config["added_tokens_decoder"].items()}
    assert names == K25_SPECIAL_TOKENS
    assert (names[0], names[1], names[2], names[21], names[22], names[23], names[254], names[255]) == (
        "[BOS]", "[EOS]", "<|im_end|>", "<|media_pad|>", "<think>", "</think>", "[UNK]", "[PAD]")
    tok = Tokenizer.from_pretrained(tmp_path)
    assert tok.special_tokens[f"<|reserved_token_{n_base + 5}|>"] == n_base + 5


def test_bundled_tokenizer_is_the_shakespeare_one():
    """k25ref/assets/tokenizer: 3,840 ranks trained on train.txt + 256 specials, small files."""
    folder = Path(__file__).resolve().parents[1] / "k25ref" / "assets" / "tokenizer"
    assert all((folder / name).stat().st_size < 100_000 for name in ("tiktoken.model", "tokenizer_config.json"))
    tok = Tokenizer.bundled()
    assert (tok.n_base, tok.vocab_size) == (3840, 4096)
    assert tok.encode(" the") == [tok.ranks[b" the"]]


def test_bundled_tokenizer_is_reproducible(tmp_path):
    """Retraining on train.txt gives the shipped tiktoken.model byte for byte (deterministic ties)."""
    train_tokenizer((DATA / "train.txt").read_text(encoding="utf-8"), vocab_size=4096, out_dir=tmp_path)
    shipped = Path(__file__).resolve().parents[1] / "k25ref" / "assets" / "tokenizer"
    for name in ("tiktoken.model", "tokenizer_config.json"):
        assert (tmp_path / name).read_bytes() == (shipped / name).read_bytes()
