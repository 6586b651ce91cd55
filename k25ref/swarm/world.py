"""The simulated world the agents search: entities, tools, latencies, failures and a shared rate limit.

Every random draw is keyed by *what is asked*, never by *when* or *by whom*:

    rng(call) = default_rng([world_seed, stable_hash(task_id, tool, canonical_args, attempt, purpose)])

so the answer to `lookup("Orvane", "founded")` is the same for every policy, every concurrency cap K
and every interleaving; only the timing (latency, 429s, retries) depends on the schedule. This is
what lets the tests compare a single agent and a swarm on *identical* worlds [swarm-facts §5.1].

Tools (all return JSON text, like a real tool server):

    search(query, page)      one page of P names (or documents) and `total_pages`     paginated enumeration
    lookup(entity, attribute) one table cell, or NOT_FOUND (permanent, keyed)           the wide fan-out
    hop(key)                 the next key of a chain, or the chain's answer at its end  a strict serial chain
    fetch(doc_id)            a long document with `FACT item = value` lines inside       context pressure

Latency is a lognormal with a heavy tail (x10 with probability p_tail); an attempt may also hang
(never return: the caller's tool timeout ends it) or fail transiently (the caller retries with a
keyed backoff). A token bucket of R admissions per tick is shared by all agents: the single-API-key
bottleneck that turns wide fan-out into 429 cascades (kimi-cli #2368).
"""
from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass, field

import numpy as np

from k25ref.errors import ConfigError

WORLD_TOOLS = ("search", "lookup", "hop", "fetch")


# ----------------------------------------------------------------------------
# keyed randomness


def canonical(obj) -> str:
    """One spelling per value: sorted keys, no spaces. Equal calls have equal canonical text."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def stable_hash(*parts) -> int:
    """A 64-bit hash of JSON-able parts that is the same in every process (Python's hash() is salted)."""
    digest = hashlib.blake2b(canonical(parts).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little")


def keyed_rng(seed: int, *parts) -> np.random.Generator:
    """A generator that depends only on the seed and the parts (the identity of a question)."""
    return np.random.default_rng([seed, stable_hash(*parts)])


# ----------------------------------------------------------------------------
# configuration


@dataclass(frozen=True)
class ToolLatency:
    """Ticks one attempt of a tool takes: ceil(lognormal(ln median, sigma)), x10 with prob p_tail."""
    median: float
    sigma: float = 0.5
    p_tail: float = 0.03


@dataclass(frozen=True)
class WorldConfig:
    """How the simulated web behaves. Defaults: a mildly unreliable, rate-limited search API."""
    latency: dict = field(default_factory=lambda: {
        "search": ToolLatency(3.0), "lookup": ToolLatency(2.0), "hop": ToolLatency(2.0),
        "fetch": ToolLatency(6.0, 0.4)})
    p_transient: float = 0.02      # an attempt fails with ERROR_TRANSIENT; retried with backoff
    p_hang: float = 0.003          # an attempt never returns; the caller's tool timeout ends it
    p_not_found: float = 0.004     # a lookup cell is permanently NOT_FOUND (never retried)
    rate_limit: int = 8            # R: admissions per tick, shared by every agent; 0 = unlimited
    backoff_base: int = 2          # transient retry waits base * 2^attempt + keyed jitter ticks

    def __post_init__(self):
        for name in ("p_transient", "p_hang", "p_not_found"):
            p = getattr(self, name)
            if not 0.0 <= p < 1.0:
                raise ConfigError(f"WorldConfig.{name} must be in [0, 1), got {p!r}")
        if self.rate_limit < 0 or self.backoff_base < 1:
            raise ConfigError("WorldConfig: rate_limit must be >= 0 and backoff_base >= 1")
        missing = [t for t in WORLD_TOOLS if t not in self.latency]
        if missing:
            raise ConfigError(f"WorldConfig.latency has no entry for tools {missing}")


@dataclass(frozen=True)
class FaultPlan:
    """Scripted faults for tests, keyed by call identity `(tool, canonical_args)`.

    fail:    {call: n}  the first n attempts fail transiently
    hang:    {call: n}  the first n attempts hang
    corrupt: {(agent_name, step): mode}  that agent's output at that step (1-based) is mangled;
             mode "truncate" drops the tail (section end included), as max_tokens does;
             mode "crash" fails the model call: the agent ends with status "error"
    """
    fail: dict = field(default_factory=dict)
    hang: dict = field(default_factory=dict)
    corrupt: dict = field(default_factory=dict)


@dataclass(frozen=True)
class Attempt:
    """What one attempt of one call will do: its kind ('ok' | 'transient' | 'hang') and duration."""
    kind: str
    ticks: int


# ----------------------------------------------------------------------------
# the world's content

_SYLLABLES = ("al", "bar", "cor", "dun", "el", "fen", "gal", "hol", "ir", "jas", "kel", "lor", "mar",
              "nor", "or", "pel", "quin", "ros", "sel", "tor", "ul", "val", "wen", "yar", "zel")
_REGIONS = ("north", "south", "east", "west", "coast", "hills", "plain", "delta")
ATTRIBUTE_METRICS = {"founded": ("exact_match", None), "population": ("number_near", 0.05),
                     "area": ("number_near", 0.05), "region": ("exact_match", None),
                     "rank": ("exact_match", None)}


def _names(rng: np.random.Generator, n: int, prefix: str = "") -> list[str]:
    """n distinct capitalised names built from syllables, in a keyed order."""
    out, seen = [], set()
    while len(out) < n:
        k = int(rng.integers(2, 4))
        name = prefix + "".join(_SYLLABLES[int(i)] for i in rng.integers(0, len(_SYLLABLES), k)).capitalize()
        if name not in seen:
            seen.add(name)
            out.append(name)
    return out


def _attribute_value(rng: np.random.Generator, attribute: str):
    """The true value of one cell; the kind of value decides its metric (ATTRIBUTE_METRICS)."""
    if attribute == "founded":
        return int(rng.integers(1000, 2020))
    if attribute == "population":
        return int(rng.integers(1_000, 2_000_000))
    if attribute == "area":
        return round(float(rng.uniform(1.0, 900.0)), 1)
    if attribute == "region":
        return _REGIONS[int(rng.integers(0, len(_REGIONS)))]
    if attribute == "rank":
        return int(rng.integers(1, 500))
    raise ConfigError(f"unknown attribute {attribute!r}; known: {sorted(ATTRIBUTE_METRICS)}")


class World:
    """The ground truth for one task, plus the behaviour (latency, faults) of its tools.

    Content is built lazily from keyed draws, so a world is cheap: only what is asked is generated.
    `answer()` is a pure function of the call; `attempt()` a pure function of (call, attempt).
    """

    def __init__(self, task, config: WorldConfig | None = None, faults: FaultPlan | None = None):
        self.task, self.config, self.faults = task, config or WorldConfig(), faults or FaultPlan()
        self.seed, spec = int(task.world_seed), task.spec
        self.page_size = int(spec.get("page_size", 8))
        rng = keyed_rng(self.seed, task.instance_id, "catalog")
        if task.family in ("wide", "read"):
            n = int(spec["n_entities"] if task.family == "wide" else spec["n_docs"])
            self.catalog = _names(rng, n, prefix="" if task.family == "wide" else "doc-")
        else:
            self.catalog = []
        if task.family in ("deep", "mixed"):
            self.chains = {}
            lengths = spec["chain_lengths"]
            keys = _names(rng, sum(lengths) + len(lengths), prefix="k-")
            for L in lengths:           # chain: start -> k1 -> ... -> k_L, answer stored at k_L
                chain, keys = keys[:L + 1], keys[L + 1:]
                self.chains[chain[0]] = chain
            self.next_key = {a: b for chain in self.chains.values() for a, b in zip(chain, chain[1:])}
            self.chain_end = {chain[-1]: start for start, chain in self.chains.items()}

    # -- ground truth -------------------------------------------------------

    def cell(self, entity: str, attribute: str):
        """The true value of (entity, attribute), NOT_FOUND or not."""
        return _attribute_value(keyed_rng(self.seed, self.task.instance_id, "cell", entity, attribute), attribute)

    def not_found(self, entity: str, attribute: str) -> bool:
        rng = keyed_rng(self.seed, self.task.instance_id, "not_found", entity, attribute)
        return bool(rng.random() < self.config.p_not_found)

    def chain_answer(self, start: str) -> str:
        rng = keyed_rng(self.seed, self.task.instance_id, "answer", start)
        return _names(rng, 1)[0]

    def doc_facts(self, doc: str) -> list[tuple[str, str]]:
        """The (item, value) facts a document states; every document has facts_per_doc of them."""
        rng = keyed_rng(self.seed, self.task.instance_id, "facts", doc)
        items = _names(rng, int(self.task.spec["facts_per_doc"]), prefix=doc[4:] + "-")
        return [(item, str(int(rng.integers(10, 1000)))) for item in items]

    def doc_tokens(self, doc: str) -> int:
        lo, hi = self.task.spec["doc_tokens"]
        return int(keyed_rng(self.seed, self.task.instance_id, "doc_tokens", doc).integers(lo, hi + 1))

    # -- tool answers: pure functions of the call ----------------------------

    def answer(self, tool: str, args: dict) -> tuple[str, str]:
        """(status, JSON text) for a successful attempt; status is 'ok', 'not_found' or 'bad_args'."""
        try:
            if tool == "search":
                return self._search(str(args["query"]), int(args.get("page", 1)))
            if tool == "lookup":
                return self._lookup(str(args["entity"]), str(args["attribute"]))
            if tool == "hop":
                return self._hop(str(args["key"]))
            if tool == "fetch":
                return self._fetch(str(args["doc_id"]))
        except (KeyError, TypeError, ValueError) as e:
            return "bad_args", canonical({"error": f"{tool}: bad arguments {canonical(args)} ({e!r})"})
        return "bad_args", canonical({"error": f"unknown tool {tool!r}"})

    def _search(self, query: str, page: int):
        P = self.page_size
        subject = str(self.task.spec.get("subject", ""))
        matches = self.catalog if subject and query.strip().lower() == subject.lower() else []
        total = max(1, math.ceil(len(matches) / P))
        hits = matches[(page - 1) * P: page * P] if page >= 1 else []
        if self.task.family == "read":
            hits = [{"doc_id": d, "tokens": self.doc_tokens(d)} for d in hits]
        return "ok", canonical({"query": query, "page": page, "total_pages": total, "results": hits})

    def _lookup(self, entity: str, attribute: str):
        if entity not in self.catalog or attribute not in self.task.spec.get("attributes", ()) \
                or self.not_found(entity, attribute):
            return "not_found", canonical({"entity": entity, "attribute": attribute, "value": "NOT_FOUND"})
        return "ok", canonical({"entity": entity, "attribute": attribute, "value": self.cell(entity, attribute)})

    def _hop(self, key: str):
        if key in self.chain_end:
            return "ok", canonical({"key": key, "answer": self.chain_answer(self.chain_end[key])})
        if key in self.next_key:
            return "ok", canonical({"key": key, "next": self.next_key[key]})
        return "not_found", canonical({"key": key, "next": "NOT_FOUND"})

    def _fetch(self, doc: str):
        if doc not in self.catalog:
            return "not_found", canonical({"doc_id": doc, "text": "NOT_FOUND"})
        facts = self.doc_facts(doc)
        filler_words = max(0, self.doc_tokens(doc) - 8 * len(facts))
        filler = (" ".join(_SYLLABLES) + " ") * (filler_words // len(_SYLLABLES) + 1)
        lines, cut = [], len(filler) // (len(facts) + 1)
        for i, (item, value) in enumerate(facts):     # facts spread through the text
            lines.append(filler[i * cut:(i + 1) * cut])
            lines.append(f"FACT {item} = {value}")
        lines.append(filler[len(facts) * cut:])
        return "ok", canonical({"doc_id": doc, "text": "\n".join(lines)})

    # -- tool behaviour: pure functions of (call, attempt) --------------------

    def attempt(self, tool: str, args: dict, attempt: int) -> Attempt:
        """Whether attempt number `attempt` (0-based) of this call succeeds, fails or hangs, and its ticks."""
        key = (tool, canonical(args))
        cfg, lat = self.config, self.config.latency[tool]
        rng = keyed_rng(self.seed, self.task.instance_id, "attempt", tool, canonical(args), attempt)
        u_fail, u_hang, u_tail = rng.random(3)
        ticks = max(1, math.ceil(rng.lognormal(math.log(lat.median), lat.sigma)))
        if u_tail < lat.p_tail:
            ticks *= 10
        if attempt < self.faults.hang.get(key, 0) or u_hang < cfg.p_hang:
            return Attempt("hang", ticks)
        if attempt < self.faults.fail.get(key, 0) or u_fail < cfg.p_transient:
            return Attempt("transient", ticks)
        return Attempt("ok", ticks)

    def backoff(self, tool: str, args: dict, attempt: int) -> int:
        """Ticks to wait before retry `attempt + 1`: base * 2^attempt plus keyed jitter in [0, base)."""
        base = self.config.backoff_base
        jitter = int(keyed_rng(self.seed, self.task.instance_id, "backoff", tool, canonical(args), attempt)
                     .integers(0, base))
        return base * 2 ** attempt + jitter

    def retry_after(self, tool: str, args: dict, n_429: int) -> int:
        """Ticks a 429 asks the caller to wait: 1 + keyed jitter in [0, 3)."""
        return 1 + int(keyed_rng(self.seed, self.task.instance_id, "429", tool, canonical(args), n_429)
                       .integers(0, 3))


class RateLimiter:
    """A shared token bucket: at most R admissions in any one tick, first come first served.

    The scheduler asks in event order (time, seq), which is deterministic, so the 429 count is too.
    """

    def __init__(self, per_tick: int):
        self.per_tick, self.used = per_tick, {}

    def admit(self, tick: int) -> bool:
        if self.per_tick == 0:
            return True
        n = self.used.get(tick, 0)
        if n >= self.per_tick:
            return False
        self.used[tick] = n + 1
        return True
