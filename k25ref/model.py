"""A loaded Kimi K2.5 checkpoint: `load_model(path)` -> `Model` with `logits`, `forward` and a latent cache.

Loading reads config.json and every shard's header, and checks every tensor's presence, dtype and shape
against the config before returning, so a bad checkpoint fails at once with a message that names file and
tensor, and no half-loaded model is ever handed out. Tensor bytes are read later, when first used.
"""
import os

import numpy as np

from k25ref import decoder, engine, multimodal, projector
from k25ref.checkpoint import Checkpoint
from k25ref.config import KimiK25Config, load_config
from k25ref.errors import PromptError
from k25ref.progress import bar as progress_bar
from k25ref.sampling import check_logits, sample
from k25ref.streaming import IOStats, Prefetcher, Reader, WeightCache
from k25ref.weights import Weights, context_bytes, validate, working_set

PREFILL_CHUNK = 512     # prompt tokens per pass through the layers (Model.forward): docs/long-context.md


class Model:
    """Kimi K2.5 over one checkpoint folder. No tensor is read until used. `ops`: the code every pass runs,
    chosen once from `backend` (k25ref.engine: the Numba kernels or the NumPy reference)."""

    def __init__(self, path, cfg: KimiK25Config, ckpt: Checkpoint, memory_budget=None, backend="auto"):
        self.path, self.cfg, self.ckpt = str(path), cfg, ckpt
        self.ops = engine.ops(backend)
        # the budget less the working set of one forward pass (weights.working_set) holds cached weights
        self.working_set, self.memory_budget = working_set(ckpt, cfg), memory_budget
        self.cache = WeightCache(None if memory_budget is None else max(0, memory_budget - self.working_set))
        self.stats = IOStats()
        prefetcher = Prefetcher() if memory_budget is not None else None
        self.weights = Weights(ckpt, cfg, self.cache, Reader(ckpt, self.stats), prefetcher)
        self.rope = decoder.Rope(cfg.text)

    def check_ids(self, input_ids):  # -> (T,) int64
        """A 1-D, non-empty sequence of ids inside the vocabulary, or a PromptError saying what is wrong."""
        ids = np.asarray(input_ids)
        if ids.ndim != 1 or ids.size == 0:
            raise PromptError(f"input_ids must be a non-empty 1-D sequence, got shape {ids.shape}")
        if not np.issubdtype(ids.dtype, np.integer):
            raise PromptError(f"input_ids must be integers, got dtype {ids.dtype}")
        V = self.cfg.text.vocab_size
        bad = ids[(ids < 0) | (ids >= V)]
        if bad.size:
            raise PromptError(f"token id {int(bad[0])} is outside the vocabulary [0, {V})")
        return ids.astype(np.int64)

    def new_cache(self, capacity=64):
        """Empty per-layer latent caches (c_kv, k_rope) for incremental decoding, room for `capacity` positions."""
        return decoder.new_cache(self.cfg.text, capacity)

    def reserve(self, context, prefill_chunk=PREFILL_CHUNK):
        """Under a memory budget: leave the weight cache what remains of it after the working set, a latent
        cache for `context` positions and one chunk's activations (weights.context_bytes). A budget that holds
        the working set but not the rest is a PromptError with the numbers, before any work; one below the
        working set only turns the weight cache off, as it always did. Without a budget, nothing to do."""
        if self.memory_budget is None:
            return
        cache, activations = context_bytes(self.cfg, context, prefill_chunk)
        free = self.memory_budget - self.working_set - cache - activations
        if free < 0 <= self.memory_budget - self.working_set:
            gib = lambda n: f"{n / 2**30:.2f} GiB"                                   # noqa: E731
            raise PromptError(f"{context} positions need {gib(cache)} of latent cache + {gib(activations)} of "
                              f"activations (chunks of {prefill_chunk}) + a {gib(self.working_set)} working set, more "
                              f"than the memory budget of {gib(self.memory_budget)}: raise it, lower the prefill "
                              f"chunk or shorten the prompt")
        self.cache.budget = max(0, free)

    def ops_for(self, backend=None):  # -> engine.Ops
        """The model's bundle, or for one call another one (a name, as load_model takes, or an engine.Ops)."""
        return self.ops if backend is None else engine.ops(backend)

    def vision_features(self, pixel_values, grid_thw, capture=None, backend=None):  # -> (sum h*w/4, D)
        """MoonViT + projector: one row per merged 2x2 patch group (a video chunk's frames are pooled)."""
        ops = self.ops_for(backend)
        ops.prepare()
        return projector.vision_features(self.weights, self.cfg, pixel_values, grid_thw, capture, ops.vision)

    def check_context(self, prompt_tokens, max_new_tokens=0, grid_thw=None, start=0):
        """PromptError, before any work, unless positions start .. start + prompt_tokens + max_new_tokens - 1
        lie inside the context window (max_position_embeddings), and each image / video chunk fits alone."""
        n = self.cfg.text.max_position_embeddings
        for i, k in enumerate(multimodal.media_token_counts(grid_thw) if grid_thw is not None else []):
            if k > n:
                raise PromptError(f"image/video chunk {i + 1} needs {k} tokens, more than the model's context of "
                                  f"{n} positions: pass a smaller image or video (media.preprocess_image's "
                                  f"in_patch_limit, preprocess_video's in_patch_limit_each_frame cap the patches)")
        need = start + prompt_tokens + max_new_tokens
        if need > n:
            what = f"the prompt ({prompt_tokens} tokens)" + (f" after {start} cached" if start else "")
            raise PromptError(f"{what} plus max_new_tokens ({max_new_tokens}) need {need} positions, more than "
                              f"the model's context of {n} (max_position_embeddings): shorten the prompt or ask "
                              f"fewer tokens")

    def forward(self, input_ids, cache, capture=None, absorbed=False, last_only=False, backend=None,
                features=None, prefill_chunk=PREFILL_CHUNK, progress=False):
        """(T,) -> (T, V): logits of the new tokens, continuing `cache` (which is extended in place).

        The tokens go through the layers `prefill_chunk` at a time (None or 0: all at once): each chunk appends
        its latents to the cache and attends to everything before it, so a prompt's activations and attention
        scores take memory for one chunk, not for T tokens. The logits are the same (tests/test_long_context.py).
        `features` (M, D): media rows for the prompt's M placeholder ids (media_features), spliced chunk by
        chunk. `progress`: a bar over the chunks on stderr when there are several and stderr is a terminal.
        `backend`: None runs the model's ops; a name or an engine.Ops runs those for this call (see ops_for)."""
        ids = self.check_ids(input_ids)
        ops = self.ops_for(backend)
        ops.prepare()
        T, start = len(ids), cache[0].length
        check_chunk(prefill_chunk)
        self.check_context(T, start=start)
        media = self.cfg.media_placeholder_token_id
        if features is not None:
            before = np.concatenate([[0], np.cumsum(ids == media)])               # (T+1,) media rows before t
            multimodal.check_rows(before[-1], len(features), media)
        C, out, parts = prefill_chunk or T, [], []
        bar = progress_bar(total=T, desc="prompt", unit="tok") if progress and T > C else None
        for a in range(0, T, C):
            b = min(a + C, T)
            if features is not None:
                h = multimodal.splice(self.weights.embedding_rows(ids[a:b]), ids[a:b],
                                      features[before[a]:before[b]], media)
            else:
                h = self.weights.embedding_rows(ids[a:b])
            part = None if capture is None else {"embed": h}
            with ops.decoder_threads():
                logits = decoder.forward(h, self.weights, self.cfg.text, self.rope, cache, ops, part, absorbed,
                                         last_only, logits=not last_only or b == T)
            out += [] if logits is None else [logits]
            parts += [] if part is None else [part]
            if bar is not None:
                bar.update(b - a)
        if bar is not None:
            bar.close()
        if capture is not None:
            capture.update({k: np.concatenate([p[k] for p in parts]) for k in parts[0]})
        return np.concatenate(out) if len(out) > 1 else out[0]

    def logits(self, input_ids, pixel_values=None, grid_thw=None, capture=None, prefill_chunk=PREFILL_CHUNK,
               backend=None):
        """Full-sequence logits (T, V) float32 from scratch, images and video chunks included, the prompt run
        in chunks of `prefill_chunk` tokens (see forward). Pass a dict as `capture` to receive named
        intermediates: embed, layers.{i}.attn_out, layers.{i}.router_indices, layers.{i}.router_weights,
        layers.{i}.mlp_out, layers.{i}.hidden, final_norm (and vision.* with media). `backend`: see forward."""
        ids = self.check_ids(input_ids)
        self.check_context(len(ids), grid_thw=grid_thw)
        self.reserve(len(ids), prefill_chunk)
        features = self.media_features(pixel_values, grid_thw, capture, backend)
        out = self.forward(ids, self.new_cache(len(ids)), capture, features=features, prefill_chunk=prefill_chunk,
                           backend=backend)
        return check_logits(out, lambda: capture if capture is not None else
                            self.trace(ids, pixel_values, grid_thw, backend))

    def trace(self, input_ids, pixel_values=None, grid_thw=None, backend=None):
        """Every named intermediate of a full pass (see `logits`), without checking them."""
        capture = {}
        self.forward(input_ids, self.new_cache(len(input_ids)), capture, backend=backend,
                     features=self.media_features(pixel_values, grid_thw, capture, backend))
        return capture

    def media_features(self, pixel_values, grid_thw, capture=None, backend=None):  # -> (M, D)
        """vision_features of the prompt's media, or no rows when there is none."""
        if pixel_values is None:
            return np.zeros((0, self.cfg.text.hidden_size), np.float32)
        return self.vision_features(pixel_values, grid_thw, capture, backend)

    @property
    def stop_ids(self):
        """End of turn (<|im_end|>, from tokenizer_config.json when shipped) and the config's eos id."""
        ids = {self.cfg.eos_token_id}
        path = os.path.join(self.path, "tokenizer_config.json")
        if os.path.exists(path):
            from k25ref.tokenizer import read_tokenizer_config   # size-capped, special files refused
            decoder_map = read_tokenizer_config(path).get("added_tokens_decoder", {})
            ids |= {int(i) for i, t in (decoder_map.items() if isinstance(decoder_map, dict) else ())
                    if isinstance(t, dict) and t.get("content") in ("<|im_end|>", "[EOS]") and i.isascii()
                    and i.isdigit() and len(i) <= 9}
        return frozenset(ids)

    def generate(self, input_ids, max_new_tokens, temperature=0.0, top_p=1.0, top_k=0, seed=None, stop_ids=None,
                 pixel_values=None, grid_thw=None, absorbed=True, backend=None, prefill_chunk=PREFILL_CHUNK,
                 progress=False):
        """Yield new token ids one at a time: prefill the prompt (in chunks of `prefill_chunk` tokens, see
        forward), then decode with the latent cache.

        temperature 0 is greedy (reproduces transformers' greedy generate); otherwise seeded sampling with
        top-k then top-p. pixel_values/grid_thw (from k25ref.media) fill the prompt's media placeholders.
        Generation ends after max_new_tokens or at a stop id, which is not yielded;
        stop_ids=None means the checkpoint's end-of-turn/eos ids, an empty sequence never stops early.
        Bad arguments, media that do not fill the placeholders, and a prompt plus max_new_tokens longer than the
        context raise PromptError at the call, before any work. `progress`: a bar over the prompt's chunks (see forward).
        `backend`: None runs the model's ops (see forward).
        """
        if (not 0 <= temperature < np.inf or not 0 < top_p <= 1 or top_k < 0 or max_new_tokens < 0      # NaN fails too
                or not (seed is None or 0 <= seed)):
            raise PromptError("need a finite temperature >= 0, 0 < top_p <= 1, top_k >= 0, max_new_tokens >= 0 "
                              "and seed None or >= 0")
        check_chunk(prefill_chunk)
        ops = self.ops_for(backend)
        ids = self.check_ids(input_ids)
        self.check_context(len(ids), max_new_tokens, grid_thw)
        media = self.cfg.media_placeholder_token_id
        multimodal.check_rows(int((ids == media).sum()),
                              0 if pixel_values is None else multimodal.count_media_tokens(grid_thw), media)
        self.reserve(len(ids) + max_new_tokens, prefill_chunk)
        stops = self.stop_ids if stop_ids is None else frozenset(int(i) for i in stop_ids)
        return self._generate(ids, max_new_tokens, temperature, top_p, top_k, np.random.default_rng(seed), stops,
                              pixel_values, grid_thw, absorbed, ops, prefill_chunk, progress)

    def _generate(self, ids, max_new_tokens, temperature, top_p, top_k, rng, stops, pixel_values, grid_thw,
                  absorbed, ops, prefill_chunk, progress):
        cache, seen = self.new_cache(len(ids) + max_new_tokens), list(ids)
        features = self.media_features(pixel_values, grid_thw, backend=ops) if max_new_tokens else None
        for _ in range(max_new_tokens):
            logits = self.forward(ids, cache, absorbed=absorbed, last_only=True, features=features, backend=ops,
                                  prefill_chunk=prefill_chunk, progress=progress)[-1]
            check_logits(logits, lambda: self.trace(seen, pixel_values, grid_thw, ops))
            token = sample(logits, temperature, top_k, top_p, rng)
            if token in stops:
                return
            yield token
            ids, features = np.array([token]), None
            seen.append(token)


def check_chunk(prefill_chunk):
    """PromptError unless prefill_chunk is a whole number of tokens >= 1, or 0 / None (the prompt at once)."""
    whole = isinstance(prefill_chunk, (int, np.integer)) and not isinstance(prefill_chunk, bool)
    if prefill_chunk is not None and not (whole and prefill_chunk >= 0):
        raise PromptError(f"prefill_chunk must be a number of tokens >= 1 (0 or None: the whole prompt at once), "
                          f"got {prefill_chunk!r}")


def default_model_path():
    """Kimi-K2.5-nano, shipped inside the package with its tokenizer (what `k25ref generate` runs): the real
    architecture at 6.4 M parameters, trained on Shakespeare and synthetic shapes (docs/nano.md)."""
    return os.path.join(os.path.dirname(__file__), "assets", "nano")


def load_model(path, memory_budget=None, progress=False, backend="auto"):
    """Open a released-layout checkpoint folder (config.json + safetensors shards) -> Model.

    memory_budget: bytes the model may hold (None: keep every weight it reads): what is left after the
        working set of one forward pass (`Model.working_set`, from the tensor sizes) caches weights. The
        interpreter and libraries the process already holds are not counted. Nothing is read before it is
        needed either way.
    progress: show a progress bar while shard headers are read and checked.
    backend: the code every pass runs, chosen here once (k25ref.engine): "auto" (the default; the
        K25REF_BACKEND environment variable replaces it) is "numba", the compiled kernels, unless
        NUMBA_DISABLE_JIT=1, then "numpy", the plain reference. Both give the same tokens; the kernels
        compile on first use (announced on the "k25ref" logger), then load from numba's cache. A name
        outside these three is a ConfigError.
    """
    ops = engine.ops(backend)                                             # a bad name fails before any reading
    cfg = load_config(path)
    ckpt = Checkpoint(path, progress)
    validate(ckpt, cfg)
    return Model(path, cfg, ckpt, memory_budget, ops)
