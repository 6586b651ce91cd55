"""A loaded Kimi K2.5 checkpoint: `load_model(path)` -> `Model` with `logits`, `forward` and a latent cache.

Loading reads config.json and every shard's header, and checks every tensor's presence, dtype and shape
against the config before returning, so a bad checkpoint fails at once with a message that names file and
tensor, and no half-loaded model is ever handed out. Tensor bytes are read later, when first used.
"""
import os

import numpy as np

from k25ref import decoder, multimodal, projector
from k25ref.checkpoint import Checkpoint
from k25ref.config import KimiK25Config, load_config
from k25ref.errors import PromptError
from k25ref.sampling import check_logits, sample
from k25ref.streaming import IOStats, Prefetcher, Reader, WeightCache
from k25ref.weights import Weights, validate, working_set


class Model:
    """Kimi K2.5 over one checkpoint folder. No tensor is read until used."""

    def __init__(self, path, cfg: KimiK25Config, ckpt: Checkpoint, memory_budget=None):
        self.path, self.cfg, self.ckpt = str(path), cfg, ckpt
        # the budget less the working set of one forward pass (weights.working_set) holds cached weights
        self.working_set = working_set(ckpt, cfg)
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

    def new_cache(self):
        """Empty per-layer latent caches (c_kv, k_rope) for incremental decoding."""
        return decoder.new_cache(self.cfg.text)

    def embed(self, input_ids):  # (T,) -> (T, D)
        return self.weights.embedding_rows(self.check_ids(input_ids))

    def vision_features(self, pixel_values, grid_thw, capture=None, backend="numpy"):  # -> (sum h*w/4, D)
        """MoonViT + projector: one row per merged 2x2 patch group (a video chunk's frames are pooled)."""
        return projector.vision_features(self.weights, self.cfg, pixel_values, grid_thw, capture, backend)

    def embed_prompt(self, input_ids, pixel_values=None, grid_thw=None, capture=None,
                     backend="numpy"):  # (T,) -> (T, D)
        """Token embeddings with image/video features scattered, in order, over the media placeholder ids.
        Placeholders without media (or the reverse) are a PromptError, never a silent wrong answer."""
        ids = self.check_ids(input_ids)
        h = self.weights.embedding_rows(ids)                                  # (T, D)
        feats = (self.vision_features(pixel_values, grid_thw, capture, backend) if pixel_values is not None
                 else np.zeros((0, self.cfg.text.hidden_size), np.float32))
        return multimodal.splice(h, ids, feats, self.cfg.media_placeholder_token_id)

    def forward(self, input_ids, cache, capture=None, absorbed=False, last_only=False, embeds=None, backend="numpy"):
        """(T,) -> (T, V): logits of the new tokens, continuing `cache` (which is extended in place).
        `embeds` (T, D) replaces the embedding lookup (a prompt with media: see embed_prompt)."""
        h = self.embed(input_ids) if embeds is None else embeds                # (T, D)
        if capture is not None:
            capture["embed"] = h
        return decoder.forward(h, self.weights, self.cfg.text, self.rope, cache, capture, absorbed, last_only, backend)

    def logits(self, input_ids, pixel_values=None, grid_thw=None, capture=None):  # (T,) -> (T, V) float32
        """Full-sequence logits from scratch, images and video chunks included. Pass a dict as `capture` to
        receive named intermediates: embed, layers.{i}.attn_out, layers.{i}.router_indices,
        layers.{i}.router_weights, layers.{i}.mlp_out, layers.{i}.hidden, final_norm (and vision.* with media)."""
        h = self.embed_prompt(input_ids, pixel_values, grid_thw, capture)
        out = self.forward(input_ids, self.new_cache(), capture, embeds=h)
        return check_logits(out, lambda: capture if capture is not None else self.trace(input_ids, pixel_values,
                                                                                        grid_thw))

    def trace(self, input_ids, pixel_values=None, grid_thw=None):
        """Every named intermediate of a full pass (see `logits`), without checking them."""
        capture = {}
        h = self.embed_prompt(input_ids, pixel_values, grid_thw, capture)
        self.forward(input_ids, self.new_cache(), capture, embeds=h)
        return capture

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
                 pixel_values=None, grid_thw=None, absorbed=True, backend="numpy"):
        """Yield new token ids one at a time: prefill the prompt, then decode with the latent cache.

        temperature 0 is greedy (reproduces transformers' greedy generate); otherwise seeded sampling with
        top-k then top-p. pixel_values/grid_thw (from k25ref.media) fill the prompt's media placeholders.
        Generation ends after max_new_tokens or at a stop id, which is not yielded;
        stop_ids=None means the checkpoint's end-of-turn/eos ids, an empty sequence never stops early.
        """
        if (not 0 <= temperature < np.inf or not 0 < top_p <= 1 or top_k < 0 or max_new_tokens < 0      # NaN fails too
                or not (seed is None or 0 <= seed)):
            raise PromptError("need a finite temperature >= 0, 0 < top_p <= 1, top_k >= 0, max_new_tokens >= 0 "
                              "and seed None or >= 0")
        stops = self.stop_ids if stop_ids is None else frozenset(int(i) for i in stop_ids)
        rng = np.random.default_rng(seed)
        cache, ids = self.new_cache(), self.check_ids(input_ids)
        embeds = self.embed_prompt(ids, pixel_values, grid_thw, backend=backend) if max_new_tokens else None
        seen = list(ids)
        for _ in range(max_new_tokens):
            logits = self.forward(ids, cache, absorbed=absorbed, last_only=True, embeds=embeds, backend=backend)[-1]
            check_logits(logits, lambda: self.trace(seen, pixel_values, grid_thw))
            token = sample(logits, temperature, top_k, top_p, rng)
            if token in stops:
                return
            yield token
            ids, embeds = np.array([token]), None
            seen.append(token)


def default_model_path():
    """Kimi-K2.5-nano, shipped inside the package with its tokenizer (what `k25ref generate` runs): the real
    architecture at 6.4 M parameters, trained on Shakespeare and synthetic shapes (docs/nano.md)."""
    return os.path.join(os.path.dirname(__file__), "assets", "nano")


def load_model(path, memory_budget=None, progress=False):
    """Open a released-layout checkpoint folder (config.json + safetensors shards) -> Model.

    memory_budget: bytes the model may hold (None: keep every weight it reads): what is left after the
        working set of one forward pass (`Model.working_set`, from the tensor sizes) caches weights. The
        interpreter and libraries the process already holds are not counted. Nothing is read before it is
        needed either way.
    progress: show a progress bar while shard headers are read and checked.
    """
    cfg = load_config(path)
    ckpt = Checkpoint(path, progress)
    validate(ckpt, cfg)
    return Model(path, cfg, ckpt, memory_budget)
