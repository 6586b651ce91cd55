"""The text decoder: embedding -> L pre-norm layers (MLA, then dense SwiGLU or MoE) -> final norm -> lm_head.

    h   = embed(ids)                                                         (T, D)
    for each layer i:
        h = h + MLA(RMSNorm(h))                                              [DSV2 §2.1]
        h = h + (SwiGLU if i < first_k_dense_replace else MoE)(RMSNorm(h))   [DSV3 §2.1.2]
    logits = RMSNorm(h) @ lm_head^T                                          (T, V)

No batch dimension: one sequence at a time. Same as transformers DeepseekV3Model / DeepseekV3ForCausalLM.
The hot operations (attention, router, routed experts, norms, BF16 products) run what `ops` holds: the bundle
the model chose once (k25ref.engine), the NumPy reference or the kernels.
"""
from functools import partial

import numpy as np

from k25ref.config import TextConfig
from k25ref.mla import LatentCache, mla
from k25ref.moe import expert_ffn
from k25ref.nn import Bf16Weight, linear, swiglu
from k25ref.rope import cos_sin, inv_frequencies, softmax_scale
from k25ref.weights import TEXT, LayerWeights, Weights


class Rope:
    """Frequencies and softmax scale of one config, computed once."""

    def __init__(self, cfg: TextConfig):
        self.inv_freq, self.factor = inv_frequencies(cfg.rope, cfg.qk_rope_head_dim)
        self.scale = softmax_scale(cfg.rope, cfg.qk_head_dim)

    def at(self, start, T):  # -> (T, Dr/2), (T, Dr/2) for positions start..start+T-1
        return cos_sin(np.arange(start, start + T), self.inv_freq, self.factor)


def new_cache(cfg: TextConfig, capacity=64):
    """One empty latent cache per layer, with room for `capacity` positions before it grows."""
    return [LatentCache(cfg.kv_lora_rank, cfg.qk_rope_head_dim, capacity) for _ in range(cfg.num_hidden_layers)]


def head(h, W: Weights, ops):  # (T, D) -> (T, V)
    """The output head: float32 blocks, or the stored BF16 head through ops.bf16_matmul (the bf16 kernel)."""
    stored = ops.bf16_matmul is not None and W.head_dtype() == "BF16"
    blocks = [linear(h, Bf16Weight(block, ops.bf16_matmul) if stored else block)          # (T, rows) each
              for block in W.head_blocks(stored)]
    return blocks[0] if len(blocks) == 1 else np.concatenate(blocks, axis=1)


def ffn(i, x, W: Weights, w: LayerWeights, cfg: TextConfig, ops, capture=None):  # (T, D) -> (T, D)
    """The feed-forward half of layer i: dense SwiGLU, or routed experts + shared expert."""
    if w.router is None:
        return swiglu(x, *w.mlp)
    idx, g = ops.route(x, *w.router, cfg)                                     # (T, A), (T, A)
    if capture is not None:
        capture[f"layers.{i}.router_indices"], capture[f"layers.{i}.router_weights"] = idx, g
    return ops.routed_experts(i, x, idx, g, W) + expert_ffn(x, *w.mlp)


def layer(i, h, W: Weights, cfg: TextConfig, ops, cos, sin, scale, cache, capture=None,
          absorbed=False):  # (T, D) -> (T, D)
    """One pre-norm decoder layer."""
    w = W.layer(i, ops)
    a = mla(ops.rms_norm(h, w.input_layernorm, cfg.rms_norm_eps), w.attention, cfg, cos, sin, scale, cache,
            absorbed, partial(ops.attend, absorbed=absorbed), ops.rms_norm, ops.rope)              # (T, D)
    h = h + a
    m = ffn(i, ops.rms_norm(h, w.post_attention_layernorm, cfg.rms_norm_eps), W, w, cfg, ops, capture)
    if capture is not None:
        capture[f"layers.{i}.attn_out"], capture[f"layers.{i}.mlp_out"] = a, m
        capture[f"layers.{i}.hidden"] = h + m
    return h + m


def forward(h, W: Weights, cfg: TextConfig, rope: Rope, cache, ops, capture=None, absorbed=False, last_only=False,
            logits=True):
    """(T, D) -> (T, V): run all layers on the new tokens' embeddings (positions continue the cache) with the
    operations of `ops` (k25ref.engine), return logits (only the last row's, as (1, V), with last_only -- all
    that generation needs; None without `logits`: a prompt chunk that only fills the cache)."""
    T, start = h.shape[0], cache[0].length
    cos, sin = rope.at(start, T)
    for i in range(cfg.num_hidden_layers):
        W.prefetch_layer(i + 1, ops)                                          # read ahead while layer i runs
        h = layer(i, h, W, cfg, ops, cos, sin, rope.scale, cache[i], capture, absorbed)
    h = ops.rms_norm(h, W.f32(f"{TEXT}norm.weight"), cfg.rms_norm_eps)      # (T, D)
    if capture is not None:
        capture["final_norm"] = h
    if not logits:
        return None
    return head(h[-1:] if last_only else h, W, ops)                         # (T, V)
