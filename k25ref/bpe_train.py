"""Train a byte-level BPE and write it as a hub-style Kimi tokenizer folder.

The algorithm (Sennrich et al.'s BPE on bytes, with GPT-2's pre-tokenisation idea):

    1. cut the corpus into pre-tokens with the Kimi regex and count each distinct one  ("words")
    2. spell every word as its UTF-8 bytes; ranks 0..255 are the single bytes, rank(bytes([b])) = b
    3. repeat until there are n_ranks tokens:
         pick the adjacent pair (a, b) with the highest count over all words (weighted by how often
         each word occurs); ties -> the smallest (bytes(a), bytes(b))
         give bytes(a) + bytes(b) the next rank, and join every (a, b) in every word, left to right

The pair counts are updated, not recounted: joining (a, b) only changes the words that contain it,
so for each such word we subtract its old pairs and add its new ones. A heap ordered by
(-count, bytes(a), bytes(b)) finds the best pair; entries whose count has changed since they were
pushed are skipped when popped (lazy deletion). That turns hours into seconds on Shakespeare.

Same as: tiktoken _educational.py bpe_train (which recounts every step), HF tokenizers' BpeTrainer.
"""

import base64
import heapq
import json
from collections import Counter
from pathlib import Path

from k25ref.tokenizer import K25_SPECIAL_TOKENS, NUM_SPECIAL_TOKENS, PRE_TOKEN_RE


def count_words(text: str) -> Counter:  # str -> {pre-token bytes: count}
    """Step 1: how often each pre-token occurs."""
    return Counter(word.encode("utf-8") for word in PRE_TOKEN_RE.findall(text))


def merge_word(word: list, a: int, b: int, new: int) -> list:  # ids (n,) -> ids (<= n,)
    """Join every non-overlapping (a, b) in `word`, left to right: [a, a, a] with (a, a) -> [aa, a]."""
    out, i = [], 0
    while i < len(word):
        if i + 1 < len(word) and word[i] == a and word[i + 1] == b:
            out.append(new)
            i += 2
        else:
            out.append(word[i])
            i += 1
    return out


def train_bpe(text: str, n_ranks: int) -> dict:  # corpus -> {token bytes: rank}, n_ranks entries
    """Steps 2-3: learn n_ranks - 256 merges. Stops early if no adjacent pair is left."""
    assert n_ranks >= 256, "byte-level BPE starts from the 256 single bytes"
    token_bytes = [bytes([b]) for b in range(256)]                  # id -> bytes; id == rank
    ids_of = {token: i for i, token in enumerate(token_bytes)}
    counts = count_words(text)
    words = [list(word) for word in counts]                         # each word as byte ids
    freqs = list(counts.values())
    pair_count, where = Counter(), {}                               # pair -> count, pair -> word indices
    for w, word in enumerate(words):
        for pair in zip(word, word[1:]):
            pair_count[pair] += freqs[w]
            where.setdefault(pair, set()).add(w)
    heap = [(-c, token_bytes[a], token_bytes[b], (a, b)) for (a, b), c in pair_count.items()]
    heapq.heapify(heap)
    while len(token_bytes) < n_ranks and heap:
        neg_count, left, right, pair = heapq.heappop(heap)
        if pair_count.get(pair, 0) != -neg_count:
            continue                                                # stale heap entry
        joined = left + right
        if joined not in ids_of:                                    # (ab, c) after (a, bc): same bytes, same id
            ids_of[joined] = len(token_bytes)
            token_bytes.append(joined)
        changed = _apply_merge(words, freqs, pair_count, where, pair, ids_of[joined])
        for p in changed:
            if pair_count[p] > 0:
                heapq.heappush(heap, (-pair_count[p], token_bytes[p[0]], token_bytes[p[1]], p))
    return {token: rank for rank, token in enumerate(token_bytes)}


def _apply_merge(words, freqs, pair_count, where, pair, new) -> set:
    """Join `pair` in every word that holds it, updating pair counts in place; return the changed pairs."""
    changed = set()
    for w in where.pop(pair):
        word, f = words[w], freqs[w]
        for p in zip(word, word[1:]):                               # the word's old pairs leave ...
            pair_count[p] -= f
            changed.add(p)
        word = words[w] = merge_word(word, *pair, new)
        for p in zip(word, word[1:]):                               # ... and its new pairs arrive
            pair_count[p] += f
            where.setdefault(p, set()).add(w)
            changed.add(p)
    for p in changed:
        if pair_count[p] == 0:
            del pair_count[p]
            where.pop(p, None)
    return changed


# ----------------------------------------------------------------------------
# writing the hub files

def write_tiktoken_model(ranks: dict, path) -> None:
    """One `base64(token bytes) rank` line per token, in rank order (tiktoken's format)."""
    lines = (f"{base64.b64encode(token).decode('ascii')} {rank}\n"
             for token, rank in sorted(ranks.items(), key=lambda item: item[1]))
    Path(path).write_text("".join(lines), encoding="ascii")


def write_tokenizer_config(path, n_base: int) -> None:
    """A hub-style tokenizer_config.json with the K2.5 special tokens at their offsets from n_base."""
    added = {str(n_base + offset): {"content": name, "lstrip": False, "normalized": False, "rstrip": False,
                                    "single_word": False, "special": True}
             for offset, name in sorted(K25_SPECIAL_TOKENS.items())}
    config = {
        "added_tokens_decoder": added,
        "additional_special_tokens": [name for name in K25_SPECIAL_TOKENS.values()
                                      if name not in ("[BOS]", "[EOS]", "[UNK]", "[PAD]")],
        "bos_token": "[BOS]", "eos_token": "[EOS]", "unk_token": "[UNK]", "pad_token": "[PAD]",
        "tokenizer_class": "TikTokenTokenizer",
    }
    Path(path).write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def train_tokenizer(text: str, vocab_size: int, out_dir) -> dict:  # corpus -> files in out_dir
    """Train vocab_size - 256 ranks and write tiktoken.model + tokenizer_config.json to out_dir.

    Returns the ranks. Load the result with k25ref.tokenizer.Tokenizer.from_pretrained(out_dir).
    """
    ranks = train_bpe(text, vocab_size - NUM_SPECIAL_TOKENS)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    write_tiktoken_model(ranks, out_dir / "tiktoken.model")
    write_tokenizer_config(out_dir / "tokenizer_config.json", n_base=len(ranks))
    return ranks
