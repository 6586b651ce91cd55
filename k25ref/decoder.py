"""The text decoder: embedding -> L pre-norm layers (MLA, then dense SwiGLU or MoE) -> final norm -> lm_head.

    h   = embed(ids)                                                         (T, D)
    for each layer i:
        h = h + MLA(RMSNorm(h))                                              [DSV2 §2.1]
        h = h + (SwiGLU if i < first_k_dense_replace else MoE)(RMSNorm(h))   [DSV3 §2.1.2]
    logits = RMSNorm(h) @ lm_head^T                                          (T, V)

No batch dimension: one sequence at a time. Same as transformers DeepseekV3Model / DeepseekV3ForCausalLM.
"""
from functools import partial

import numpy as np

from k25ref.config import TextConfig
from k25ref.mla import LatentCache, mla
from k25ref.moe import expert_ffn, moe, route
from k25ref.nn import Bf16Weight, linear, rms_norm, swiglu
from k25ref.rope import cos_sin, inv_frequencies, softmax_scale
from k25ref.weights import TEXT, Weights, layer_prefix


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


def routed_experts(i, x, idx, g, W: Weights, backend):  # (T, D), (T, A), (T, A) -> (T, D)
    """The one place that picks the routed experts' code: the NumPy reference or the packed-INT4 kernel.
    Either way the chosen experts come through the budgeted cache, read concurrently when streaming, and
    under a budget a few at a time (`Weights.expert_chunks`): each chunk runs on its (token, slot) pairs."""
    chunks = W.expert_chunks(np.unique(idx))
    if len(chunks) == 1:
        return _run_experts(i, x, idx, g, chunks[0], W, backend)
    out = np.zeros_like(x)
    for chosen in chunks:
        t, a = np.nonzero(np.isin(idx, chosen))                               # (P,) pairs that chose the chunk
        np.add.at(out, t, _run_experts(i, x[t], idx[t, a][:, None], g[t, a][:, None], chosen, W, backend))
    return out


def _run_experts(i, x, idx, g, chosen, W: Weights, backend):  # (T, D), (T, A), (T, A), (C,) -> (T, D)
    W.load_experts(i, chosen)                                                 # read what was chosen, at once
    if backend == "numba" and W.cfg.quant is not None:
        from k25ref.kernels.int4_matvec import kernel_exact
        from k25ref.kernels.moe_experts import moe_experts, gather_experts
        experts = [W.expert(i, int(e)) for e in chosen]
        if all(kernel_exact(w) for ws in experts for w in ws):                # else the reference, exactly
            return moe_experts(x, np.searchsorted(chosen, idx), g, gather_experts(experts))
    return moe(x, idx, g, lambda e: W.expert(i, e), None)


def attend_fn(absorbed, backend):
    """The one place that picks MLA attention: None (mla() runs the blocked NumPy reference, naive or absorbed)
    or the same blocked attention with the online-softmax kernel."""
    if backend == "numba":
        from k25ref.kernels.mla_blocked import attend
        return partial(attend, absorbed=absorbed)
    return None


def head(h, W: Weights, backend):  # (T, D) -> (T, V)
    """The one place that picks the output head: the float32 reference, or the bf16 kernel on the stored head."""
    stored = backend == "numba" and W.head_dtype() == "BF16"
    return np.concatenate([linear(h, Bf16Weight(block, kernel=True) if stored else block)   # (T, rows)
                           for block in W.head_blocks(stored)], axis=1)


def ffn(i, x, W: Weights, cfg: TextConfig, capture=None, backend="numpy"):  # (T, D) -> (T, D)
    """The feed-forward half of layer i: dense SwiGLU, or routed experts + shared expert."""
    p = layer_prefix(i)
    if not cfg.is_moe_layer(i):
        return swiglu(x, *W.mlp(f"{p}mlp.", backend))
    idx, g = route(x, *W.router(i), cfg)                                      # (T, A), (T, A)
    if capture is not None:
        capture[f"layers.{i}.router_indices"], capture[f"layers.{i}.router_weights"] = idx, g
    return routed_experts(i, x, idx, g, W, backend) + expert_ffn(x, *W.mlp(f"{p}mlp.shared_experts.", backend))


def layer(i, h, W: Weights, cfg: TextConfig, cos, sin, scale, cache, capture=None, absorbed=False,
          backend="numpy"):  # (T, D) -> (T, D)
    """One pre-norm decoder layer."""
    p = layer_prefix(i)
    a = mla(rms_norm(h, W.f32(f"{p}input_layernorm.weight"), cfg.rms_norm_eps), W.attention(i, backend), cfg,
            cos, sin, scale, cache, absorbed, attend_fn(absorbed, backend))    # (T, D)
    h = h + a
    m = ffn(i, rms_norm(h, W.f32(f"{p}post_attention_layernorm.weight"), cfg.rms_norm_eps), W, cfg, capture, backend)
    if capture is not None:
        capture[f"layers.{i}.attn_out"], capture[f"layers.{i}.mlp_out"] = a, m
        capture[f"layers.{i}.hidden"] = h + m
    return h + m


def forward(h, W: Weights, cfg: TextConfig, rope: Rope, cache, capture=None, absorbed=False, last_only=False,
            backend="numpy", logits=True):
    """(T, D) -> (T, V): run all layers on the new tokens' embeddings (positions continue the cache), return
    logits (only the last row's, as (1, V), with last_only -- all that generation needs; None without
    `logits`: a prompt chunk that only fills the cache)."""
    T, start = h.shape[0], cache[0].length
    cos, sin = rope.at(start, T)
    for i in range(cfg.num_hidden_layers):
        W.prefetch_layer(i + 1, backend)                                              # read ahead while layer i runs
        h = layer(i, h, W, cfg, cos, sin, rope.scale, cache[i], capture, absorbed, backend)
    h = rms_norm(h, W.f32(f"{TEXT}norm.weight"), cfg.rms_norm_eps)          # (T, D)
    if capture is not None:
        capture["final_norm"] = h
    if not logits:
        return None
    return head(h[-1:] if last_only else h, W, backend)                                                 # (T, V)
