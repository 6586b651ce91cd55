"""The Kimi tokenizer: byte-level BPE in tiktoken's file format, the Kimi pre-tokenisation regex, 256 special ids.

How text becomes ids (the hub's tokenization_kimi.py `encode`, which calls tiktoken's CoreBPE):

    1. cut the text into <= 400,000-char chunks, and cut any run of > 25,000 whitespace or
       non-whitespace chars inside a chunk                                          [split_long_runs]
    2. in each chunk, special-token text ("[BOS]", "<|im_end|>", ...) becomes its id    (allowed_special)
    3. the text between special tokens is cut into pre-tokens by PAT_STR                [PRE_TOKEN_RE]
    4. each pre-token's UTF-8 bytes are merged: repeatedly join the adjacent pair whose
       concatenation has the lowest rank in tiktoken.model, leftmost on ties         [bpe_merge_reference]

Ids: 0 .. n_base-1 are the BPE ranks of tiktoken.model (each rank is its token's id); n_base ..
n_base+255 are the special tokens. Their names come from tokenizer_config.json's
`added_tokens_decoder`; every unnamed id is `<|reserved_token_{id}|>`. For Kimi K2.5 n_base = 163,584
and the vocabulary has 163,840 ids [k25-facts §4.1, §4.3].

Decisions, stated once:
  * `decode` replaces bytes that are not valid UTF-8 with U+FFFD (errors="replace", as the original's
    tiktoken `decode` does); `decode_bytes` returns the exact bytes.
  * A `str` holding a lone surrogate (U+D800..U+DFFF) has no UTF-8 encoding. tiktoken silently swaps
    it for U+FFFD; here `encode` raises PromptError naming its position, so decode(encode(s)) == s
    holds for every text `encode` accepts.
  * The long-text cuts (split_long_runs) never fall inside a special token's text: where the original
    would cut one in two (and encode its halves as plain text), the cut moves to the token's start.
  * Special-token names must be unambiguous: if one name were a prefix of another, tiktoken's choice
    would depend on hash order. Here the longer name wins.
  * Known gap: PAT_STR's letter, number and Han classes come from the `regex` module's Unicode tables,
    tiktoken's from Rust's. On every character assigned in Unicode 14 (Python 3.11's unicodedata)
    the ids are identical (checked char by char and by the tests); characters assigned later
    (4,699 code points with regex 2026.5 and tiktoken 0.14, e.g. U+088F) can pre-tokenize differently.

Same as: tokenization_kimi.py TikTokenTokenizer.encode/decode; tiktoken.Encoding(name, pat_str,
mergeable_ranks, special_tokens).encode(text, allowed_special="all").
"""

import base64
import binascii
import bisect
import heapq
import json
import operator
import re
from pathlib import Path

import regex

from k25ref.errors import ConfigError, PromptError
from k25ref.files import FileProblem, read_bytes

# ----------------------------------------------------------------------------
# constants of the Kimi tokenizer

# the pre-tokenisation pattern, one alternative per line [k25-facts §4.2]. `&&` is set intersection
# ("letters or marks, but not Han"), which Python's `re` cannot parse: regex.V1 can.
PAT_STR = "|".join([
    r"""[\p{Han}]+""",
    r"""[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}&&[^\p{Han}]]*[\p{Ll}\p{Lm}\p{Lo}\p{M}&&[^\p{Han}]]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?""",
    r"""[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}&&[^\p{Han}]]+[\p{Ll}\p{Lm}\p{Lo}\p{M}&&[^\p{Han}]]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?""",
    r"""\p{N}{1,3}""",
    r""" ?[^\s\p{L}\p{N}]+[\r\n]*""",
    r"""\s*[\r\n]+""",
    r"""\s+(?!\S)""",
    r"""\s+""",
])
PRE_TOKEN_RE = regex.compile(PAT_STR, regex.V1)

MAX_ENCODE_CHARS = 400_000   # the original feeds tiktoken at most this many chars at a time
MAX_RUN_CHARS = 25_000       # ... and cuts longer whitespace / non-whitespace runs (tiktoken issue #195)
NUM_SPECIAL_TOKENS = 256     # special ids n_base .. n_base+255 (K2.5: 163584 .. 163839)

# the named K2.5 special tokens, as offsets from n_base [k25-facts §4.3]; the rest are reserved
K25_SPECIAL_TOKENS = {
    0: "[BOS]", 1: "[EOS]", 2: "<|im_end|>", 3: "<|im_user|>", 4: "<|im_assistant|>",
    6: "<|start_header_id|>", 7: "<|end_header_id|>", 9: "[EOT]", 10: "<|im_system|>",
    11: "<|tool_calls_section_begin|>", 12: "<|tool_calls_section_end|>", 13: "<|tool_call_begin|>",
    14: "<|tool_call_argument_begin|>", 15: "<|tool_call_end|>", 17: "<|im_middle|>",
    18: "<|media_begin|>", 19: "<|media_content|>", 20: "<|media_end|>", 21: "<|media_pad|>",
    22: "<think>", 23: "</think>", 254: "[UNK]", 255: "[PAD]",
}

BUNDLED_DIR = Path(__file__).parent / "assets" / "tokenizer"   # a 4,096-id tokenizer trained on Shakespeare

_LONE_SURROGATE = re.compile("[\ud800-\udfff]")
_DECIMAL = re.compile("[0-9]{1,9}")   # an id or rank: plain ASCII digits (str.isdigit also takes '²', '٣')
# exactly the chars for which str.isspace() is true (the original's test for whitespace runs)
_SPACE = "[\t-\r\x1c- \x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]"
_NON_SPACE = "[^" + _SPACE[1:]
_CACHE_SIZE = 100_000        # pre-tokens remembered by encode; the cache is emptied when full


# ----------------------------------------------------------------------------
# the two BPE merge loops: the readable one, and the one encode uses

def bpe_merge_reference(piece: bytes, ranks: dict) -> list:  # bytes (n,) -> ids (<= n,)
    """Byte-pair merge as tiktoken does it, written to be read.

        if piece is itself a token: ids = [ranks[piece]]       (tiktoken looks the whole piece up first)
        parts = the single bytes of piece
        repeat: among adjacent pairs, take the one whose concatenation has the lowest rank
                (the leftmost on ties) and join it; stop when no concatenation is in ranks
        ids   = [ranks[part] for part in parts]

    The rank of the *joined bytes* decides, not a list of merge rules, so any ranks table works
    as long as every single byte is in it. The whole-piece lookup matters only for a token that
    the merges cannot reach (b"aaa" when b"aa" is not a token): tiktoken returns it anyway.
    O(n^2) per piece: fine for words, slow for 25,000 'a's.
    Same as: tiktoken src/lib.rs CoreBPE._encode_native (encoder.get(piece), then byte_pair_encode).
    """
    if piece in ranks:
        return [ranks[piece]]
    parts = [piece[i:i + 1] for i in range(len(piece))]
    while len(parts) > 1:
        best_rank, best_i = None, None
        for i in range(len(parts) - 1):
            rank = ranks.get(parts[i] + parts[i + 1])
            if rank is not None and (best_rank is None or rank < best_rank):
                best_rank, best_i = rank, i
        if best_i is None:
            break
        parts[best_i:best_i + 2] = [parts[best_i] + parts[best_i + 1]]
    return [ranks[part] for part in parts]


def bpe_merge(piece: bytes, ranks: dict) -> list:  # bytes (n,) -> ids (<= n,)
    """The same merges as bpe_merge_reference, in O(n log n): a heap of candidate pairs.

    Parts are kept as a linked list of start offsets (nxt[i] = where the part starting at i ends).
    The heap holds (rank, start, end) for adjacent pairs; popping gives the lowest rank and, on
    ties, the smallest start -- the leftmost pair, as in the reference. A popped pair whose parts
    have changed since it was pushed is stale and skipped. After a merge only the two pairs that
    touch the new part are new, so each merge costs O(log n) instead of a rescan.
    """
    whole = ranks.get(piece)
    if whole is not None:                      # the whole-piece lookup; most pre-tokens end here
        return [whole]
    n = len(piece)
    nxt = list(range(1, n + 1))                # nxt[i]: end of the part that starts at i
    prv = list(range(-1, n - 1))               # prv[i]: start of the part before the one at i
    alive = [True] * n                         # alive[i]: a part starts at i
    heap = [(ranks[piece[i:i + 2]], i, i + 2) for i in range(n - 1) if piece[i:i + 2] in ranks]
    heapq.heapify(heap)
    while heap:
        _, i, end = heapq.heappop(heap)
        if not alive[i] or nxt[i] >= n or nxt[nxt[i]] != end:
            continue                           # stale: one of the two parts was merged away
        alive[nxt[i]] = False
        nxt[i] = end
        if end < n:
            prv[end] = i
        for start, stop in ((prv[i], end), (i, nxt[end] if end < n else -1)):
            if start >= 0 and stop > 0 and piece[start:stop] in ranks:
                heapq.heappush(heap, (ranks[piece[start:stop]], start, stop))
    ids, i = [], 0
    while i < n:
        ids.append(ranks[piece[i:nxt[i]]])
        i = nxt[i]
    return ids


# ----------------------------------------------------------------------------
# the original's cutting of very long texts

def split_long_runs(text: str, max_chars: int = MAX_ENCODE_CHARS, max_run: int = MAX_RUN_CHARS, keep=None):
    """Yield pieces of `text`, as tokenization_kimi.py cuts it before handing it to tiktoken.

    First <= max_chars chunks; then, inside each chunk, a run of consecutive whitespace (or of
    non-whitespace) chars longer than max_run is cut after every max_run chars: a run starting at
    s is cut at s + max_run, s + 2*max_run, ... ("whitespace" is str.isspace, as there).
    The pieces concatenate to `text`. The cuts change tokens only for texts with such runs.
    `keep` (a compiled regex, the special tokens): a cut inside one of its matches moves to the match's
    start, so a special token is never cut in two (the hub would encode its halves as plain text).
    """
    # only runs of > max_run chars matter; the lookbehinds make each match start where its run starts
    long_run = re.compile(f"(?<!{_SPACE}){_SPACE}{{{max_run + 1},}}|(?<!{_NON_SPACE}){_NON_SPACE}{{{max_run + 1},}}")
    cuts = []
    for start in range(0, len(text), max_chars):
        cuts += [start] if start else []
        for run in long_run.finditer(text[start:start + max_chars]):
            cuts += range(start + run.start() + max_run, start + run.end(), max_run)
    if keep is not None and cuts:
        spans = [m.span() for m in keep.finditer(text)]                  # sorted, not overlapping
        starts = [begin for begin, _ in spans]
        inside = ((cut, spans[bisect.bisect_left(starts, cut) - 1]) for cut in cuts)
        cuts = sorted({begin if begin < cut < end else cut for cut, (begin, end) in inside} if spans else set(cuts))
    piece_start = 0
    for cut in cuts + [len(text)]:
        if cut > piece_start:
            yield text[piece_start:cut]
            piece_start = cut


# ----------------------------------------------------------------------------
# reading the hub files

def read_tiktoken_model(path) -> dict:  # file -> {token bytes: rank}
    """Read tiktoken.model: one `base64(token bytes) rank` line per token; blank lines are skipped.

    Checked, naming file and line: two fields, valid base64, an integer rank, no token or rank
    twice, ranks exactly 0..n-1 (a rank is its token's id), and all 256 single bytes present
    (byte-level BPE must be able to spell any byte).
    """
    path = Path(path)
    try:
        lines = read_bytes(path, "BPE ranks").decode("ascii").splitlines()
    except FileProblem as e:
        raise ConfigError(f"{path}: {e.detail}") from None
    except UnicodeDecodeError as e:
        raise ConfigError(f"{path}: not an ASCII tiktoken file (byte {e.start})") from None
    ranks, line_of_rank = {}, {}
    for lineno, line in enumerate(lines, 1):
        if not line.strip():
            continue
        where = f"{path}:{lineno}"
        fields = line.split()
        if len(fields) != 2 or not _DECIMAL.fullmatch(fields[1]):
            raise ConfigError(f"{where}: expected 'base64-token rank' (rank: ASCII digits, at most 9), "
                              f"got {line[:80]!r}")
        try:
            token = base64.b64decode(fields[0], validate=True)
        except (binascii.Error, ValueError):
            raise ConfigError(f"{where}: {fields[0][:40]!r} is not valid base64") from None
        rank = int(fields[1])
        if not token:
            raise ConfigError(f"{where}: empty token")
        if token in ranks:
            raise ConfigError(f"{where}: token {token!r} already has rank {ranks[token]}")
        if rank in line_of_rank:
            raise ConfigError(f"{where}: rank {rank} already used on line {line_of_rank[rank]}")
        ranks[token], line_of_rank[rank] = rank, lineno
    if not ranks:
        raise ConfigError(f"{path}: no tokens")
    if max(line_of_rank) != len(ranks) - 1:
        missing = min(set(range(len(ranks))) - set(line_of_rank))
        raise ConfigError(f"{path}: ranks must be 0..{len(ranks) - 1} without gaps; rank {missing} is missing")
    for b in range(256):
        if bytes([b]) not in ranks:
            raise ConfigError(f"{path}: the single byte 0x{b:02x} has no rank; byte-level BPE needs all 256")
    return ranks


def read_tokenizer_config(path) -> dict:  # file -> the JSON object
    """Read tokenizer_config.json (hub format); errors name the file and, for bad JSON, the line."""
    path = Path(path)
    try:
        config = json.loads(read_bytes(path, "tokenizer config").decode("utf-8"))
    except FileProblem as e:
        raise ConfigError(f"{path}: {e.detail}") from None
    except UnicodeDecodeError as e:
        raise ConfigError(f"{path}: not UTF-8 (byte {e.start})") from None
    except json.JSONDecodeError as e:
        raise ConfigError(f"{path}:{e.lineno}: malformed JSON: {e.msg} (column {e.colno})") from None
    except (ValueError, RecursionError) as e:        # integers over 4300 digits; nesting deeper than the stack
        raise ConfigError(f"{path}: malformed JSON ({str(e)[:100]})") from None
    if not isinstance(config, dict):
        raise ConfigError(f"{path}: expected a JSON object, got {type(config).__name__}")
    return config


def special_tokens_from_config(config: dict, n_base: int, path="tokenizer_config.json") -> dict:
    """{name: id} for the 256 special ids n_base..n_base+255, as the original builds them.

    Ids listed in `added_tokens_decoder` ({"163584": {"content": "[BOS]", ...}, ...}) keep their
    names; every other id is `<|reserved_token_{id}|>`. A listed id outside the special block
    is an error: the K2.5 tokenizer has exactly 256 special ids [k25-facts §4.1].
    """
    added = config.get("added_tokens_decoder", {})
    if not isinstance(added, dict):
        raise ConfigError(f"{path}: added_tokens_decoder must be an object {{id: {{content: ...}}}}")
    names = {}
    for key, entry in added.items():
        content = entry.get("content") if isinstance(entry, dict) else None
        if not _DECIMAL.fullmatch(key) or not isinstance(content, str) or not content:
            raise ConfigError(f"{path}: added_tokens_decoder[{key[:40]!r}] needs an id of ASCII digits (at most 9) "
                              "and a non-empty 'content' string")
        token_id = int(key)
        if not n_base <= token_id < n_base + NUM_SPECIAL_TOKENS:
            raise ConfigError(f"{path}: added_tokens_decoder id {token_id} ({content!r}) is outside the special "
                              f"ids {n_base}..{n_base + NUM_SPECIAL_TOKENS - 1} that follow the BPE ranks")
        names[token_id] = content
    specials = {names.get(i, f"<|reserved_token_{i}|>"): i for i in range(n_base, n_base + NUM_SPECIAL_TOKENS)}
    if len(specials) != NUM_SPECIAL_TOKENS:
        raise ConfigError(f"{path}: added_tokens_decoder gives two special ids the same name")
    return specials


def _token_name(config: dict, key: str, default: str, path) -> str:
    """bos_token / eos_token: a string, or an AddedToken object {"content": ...} in older files."""
    value = config.get(key, default)
    if isinstance(value, dict):
        value = value.get("content")
    if not isinstance(value, str):
        raise ConfigError(f"{path}: {key} must be a string or {{\"content\": string}}, got {value!r}")
    return value


# ----------------------------------------------------------------------------
# the tokenizer

class Tokenizer:
    """Text <-> ids for Kimi K2.5 (or any tiktoken-format byte-level BPE with the Kimi regex).

    ranks:          {token bytes: rank}, ranks 0..n_base-1, every single byte present
    special_tokens: {name: id}, ids n_base..n_base+S-1
    """

    def __init__(self, ranks: dict, special_tokens: dict, bos_token: str = "[BOS]", eos_token: str = "[EOS]"):
        n_base = len(ranks)
        if sorted(ranks.values()) != list(range(n_base)) or any(bytes([b]) not in ranks for b in range(256)):
            raise ConfigError("BPE ranks must be 0..n-1 and include all 256 single bytes")
        if sorted(special_tokens.values()) != list(range(n_base, n_base + len(special_tokens))):
            last = n_base + len(special_tokens) - 1
            raise ConfigError(f"special token ids must be {n_base}..{last}, right after the ranks")
        for name in (bos_token, eos_token):
            if name not in special_tokens:
                raise ConfigError(f"bos/eos token {name!r} is not a special token")
        self.ranks = ranks
        self.n_base = n_base
        self.special_tokens = dict(special_tokens)
        self.bos_token, self.eos_token = bos_token, eos_token
        self._id_bytes = [b""] * (n_base + len(special_tokens))     # id -> bytes, for decode
        for token, rank in ranks.items():
            self._id_bytes[rank] = token
        for name, token_id in special_tokens.items():
            self._id_bytes[token_id] = name.encode("utf-8")
        self._id_special = {token_id: name for name, token_id in special_tokens.items()}
        self._special_re = self._special_pattern(special_tokens)
        self._cache = {}                                            # pre-token bytes -> ids

    @classmethod
    def from_pretrained(cls, directory) -> "Tokenizer":
        """Load a hub-layout tokenizer folder: tiktoken.model + tokenizer_config.json."""
        directory = Path(directory)
        if not directory.is_dir():
            raise ConfigError(f"{directory}: not a tokenizer folder (expected tiktoken.model + tokenizer_config.json)")
        ranks = read_tiktoken_model(directory / "tiktoken.model")
        config_path = directory / "tokenizer_config.json"
        config = read_tokenizer_config(config_path)
        specials = special_tokens_from_config(config, len(ranks), config_path)
        bos, eos = (_token_name(config, key, default, config_path) for key, default in
                    (("bos_token", "[BOS]"), ("eos_token", "[EOS]")))
        for key, name in (("bos_token", bos), ("eos_token", eos)):
            if name not in specials:
                raise ConfigError(f"{config_path}: {key} {name!r} is not in added_tokens_decoder")
        return cls(ranks, specials, bos_token=bos, eos_token=eos)

    @classmethod
    def bundled(cls) -> "Tokenizer":
        """The small tokenizer shipped in k25ref/assets/tokenizer: 3,840 ranks trained on
        tinyshakespeare (tools/train_tokenizer.py) + the 256 K2.5 special ids = 4,096 ids."""
        return cls.from_pretrained(BUNDLED_DIR)

    # -- sizes and named ids ---------------------------------------------------

    def require_vocabulary(self, model_vocab: int, where="the model") -> None:
        """A model may emit any id below its vocab_size: a smaller tokenizer could not decode some of them, so
        the pair is refused when loaded (ConfigError), not when such an id is first generated."""
        if self.vocab_size < model_vocab:
            raise ConfigError(f"{where}: the tokenizer has {self.vocab_size} ids but the model's vocab_size is "
                              f"{model_vocab}: ids {self.vocab_size}..{model_vocab - 1} could not be decoded")

    @property
    def vocab_size(self) -> int:
        return len(self._id_bytes)

    def special_id(self, name: str) -> int:
        """The id of a special token by name; ConfigError if this tokenizer has no such token."""
        if name not in self.special_tokens:
            raise ConfigError(f"this tokenizer has no special token {name!r} "
                              "(see added_tokens_decoder in tokenizer_config.json)")
        return self.special_tokens[name]

    @property
    def bos_id(self) -> int:
        return self.special_id(self.bos_token)

    @property
    def eos_id(self) -> int:
        return self.special_id(self.eos_token)

    @property
    def im_end_id(self) -> int:
        return self.special_id("<|im_end|>")

    @property
    def media_pad_id(self) -> int:
        return self.special_id("<|media_pad|>")

    @property
    def think_id(self) -> int:
        return self.special_id("<think>")

    @property
    def think_end_id(self) -> int:
        return self.special_id("</think>")

    @property
    def stop_ids(self) -> tuple:
        """Generation stops at the end of the assistant's turn (<|im_end|>) or at [EOS]."""
        return (self.im_end_id, self.eos_id)

    # -- encode ----------------------------------------------------------------

    def encode(self, text: str, allowed_special="all") -> list:  # str -> ids (N,)
        """Text -> ids, exactly as the original (tiktoken with allowed_special="all" by default).

        allowed_special: "all", or a collection of special-token names; special-token text not
        allowed is encoded as ordinary text (the original's allow_special_tokens=False path).
        """
        return self._encode(text, allowed_special, self._merge_cached)

    def encode_reference(self, text: str, allowed_special="all") -> list:  # str -> ids (N,)
        """`encode` with every pre-token merged by bpe_merge_reference and no cache: the readable
        specification that the tests hold `encode` to. Measured on held-out Shakespeare: about half
        the speed of a warm `encode`; far slower on long pieces (25,000 'a's: O(n^2) merges)."""
        return self._encode(text, allowed_special, lambda piece: bpe_merge_reference(piece, self.ranks))

    def _encode(self, text, allowed_special, merge):
        if not isinstance(text, str):
            raise PromptError(f"encode expects str, got {type(text).__name__}")
        surrogate = _LONE_SURROGATE.search(text)
        if surrogate:
            raise PromptError(f"text has a lone surrogate U+{ord(surrogate.group()):04X} at char {surrogate.start()}: "
                              "it has no UTF-8 bytes to tokenize")
        special_re = self._special_re if allowed_special == "all" else self._special_pattern(allowed_special)
        ids = []
        for piece in split_long_runs(text, keep=special_re):
            segments = special_re.split(piece) if special_re else [piece]   # text, special, text, ...
            for k, segment in enumerate(segments):
                if k % 2:
                    ids.append(self.special_tokens[segment])
                    continue
                for word in PRE_TOKEN_RE.findall(segment):
                    ids += merge(word.encode("utf-8"))
        return ids

    def _merge_cached(self, piece: bytes) -> list:
        ids = self._cache.get(piece)
        if ids is None:
            if len(self._cache) >= _CACHE_SIZE:
                self._cache.clear()
            ids = self._cache[piece] = bpe_merge(piece, self.ranks)
        return ids

    def _special_pattern(self, names):
        """A regex that finds any of `names` (longest first) as a captured group, or None."""
        unknown = set(names) - set(self.special_tokens)
        if unknown:
            raise PromptError(f"allowed_special names unknown special tokens: {sorted(unknown)[:5]}")
        if not names:
            return None
        alternatives = "|".join(regex.escape(name) for name in sorted(names, key=len, reverse=True))
        return regex.compile(f"({alternatives})")

    # -- decode ----------------------------------------------------------------

    def decode_bytes(self, ids) -> bytes:  # ids (N,) -> bytes
        """The exact bytes of the tokens; special tokens give their names' UTF-8."""
        parts = []
        for position, token_id in enumerate(ids):
            try:
                index = operator.index(token_id)          # int, or a NumPy integer
            except TypeError:
                raise PromptError(f"token id {token_id!r} at position {position} is not an integer") from None
            if not 0 <= index < len(self._id_bytes):
                raise PromptError(f"token id {index} at position {position} is outside the vocabulary "
                                  f"0..{len(self._id_bytes) - 1}")
            parts.append(self._id_bytes[index])
        return b"".join(parts)

    def decode(self, ids) -> str:  # ids (N,) -> str
        """Ids -> text. Bytes that are not valid UTF-8 (a token sequence cut inside a character)
        become U+FFFD, as in the original (errors="replace"); decode(encode(s)) == s always."""
        return self.decode_bytes(ids).decode("utf-8", errors="replace")

    def piece(self, token_id: int) -> str:
        """A readable form of one token: a special token's name, the token's text, or -- for bytes
        that are only part of a UTF-8 character -- \\xNN escapes (e.g. '\\xe4\\xbd')."""
        token = self.decode_bytes([token_id])
        if token_id in self._id_special:
            return self._id_special[token_id]
        return token.decode("utf-8", errors="backslashreplace")

    # -- chat ------------------------------------------------------------------

    def apply_chat_template(self, messages, tools=None, thinking=True, add_generation_prompt=True, tokenize=True):
        """Render a conversation with the K2.5 chat template (k25ref.chat.render) and encode it.

        Returns the ids, or the rendered string when tokenize=False. Special-token text in the
        rendering (<|im_user|>, <think>, ...) becomes special ids, as the original's encode does.
        """
        from k25ref import chat   # imported here: chat builds on the tokenizer's names, not the reverse

        text = chat.render(messages, tools=tools, thinking=thinking, add_generation_prompt=add_generation_prompt)
        return self.encode(text) if tokenize else text

