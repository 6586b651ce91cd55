"""The released checkpoint's tensor names, shapes and dtypes, in one table, and typed access to them.

`expected_tensors(cfg)` is the single source of truth for what a K2.5 checkpoint holds: the loader
validates against it (headers only, before any data is read), `make-tiny` writes exactly it, and
`inspect` counts it. Names are the released ones (`language_model.model.layers.N...`, `vision_tower...`,
`mm_projector...`), derived from the config, never from literals like 61.

`Weights` hands out float32 arrays by concept (embedding, a layer's MLA weights, one routed expert, ...):
BF16 is widened exactly, INT4 experts are dequantized when the router first picks them. A `WeightCache`
keeps converted arrays inside a byte budget (least recently used first out).
"""
from collections import OrderedDict

import numpy as np

from k25ref.checkpoint import fail, to_float32
from k25ref.config import KimiK25Config
from k25ref.int4 import Int4Weight, dequantize
from k25ref.mla import MLAWeights

TEXT = "language_model.model."
LM_HEAD = "language_model.lm_head.weight"
FLOAT = ("BF16", "F16", "F32")          # dtypes accepted for floating weights (the release uses BF16)


def layer_prefix(i):
    return f"{TEXT}layers.{i}."


def _mlp_entries(prefix, D, F):
    return {f"{prefix}gate_proj.weight": (FLOAT, (F, D)), f"{prefix}up_proj.weight": (FLOAT, (F, D)),
            f"{prefix}down_proj.weight": (FLOAT, (D, F))}


def _int4_entries(prefix, O, I, G):
    """weight_packed / weight_scale / weight_shape of one INT4 matrix (packing along the input dim)."""
    return {f"{prefix}weight_packed": (("I32",), (O, -(-I // 8))), f"{prefix}weight_scale": (FLOAT, (O, I // G)),
            f"{prefix}weight_shape": (("I32", "I64"), (2,))}


def _attention_entries(p, t):
    H, D, Ckv, Dr = t.num_attention_heads, t.hidden_size, t.kv_lora_rank, t.qk_rope_head_dim
    e = {}
    if t.q_lora_rank is None:
        e[f"{p}q_proj.weight"] = (FLOAT, (H * t.qk_head_dim, D))
    else:
        e[f"{p}q_a_proj.weight"] = (FLOAT, (t.q_lora_rank, D))
        e[f"{p}q_a_layernorm.weight"] = (FLOAT, (t.q_lora_rank,))
        e[f"{p}q_b_proj.weight"] = (FLOAT, (H * t.qk_head_dim, t.q_lora_rank))
    e[f"{p}kv_a_proj_with_mqa.weight"] = (FLOAT, (Ckv + Dr, D))
    e[f"{p}kv_a_layernorm.weight"] = (FLOAT, (Ckv,))
    e[f"{p}kv_b_proj.weight"] = (FLOAT, (H * (t.qk_nope_head_dim + t.v_head_dim), Ckv))
    e[f"{p}o_proj.weight"] = (FLOAT, (D, H * t.v_head_dim))
    if t.attention_bias:
        if t.q_lora_rank is not None:
            e[f"{p}q_a_proj.bias"] = (FLOAT, (t.q_lora_rank,))
        e[f"{p}kv_a_proj_with_mqa.bias"] = (FLOAT, (Ckv + Dr,))
        e[f"{p}o_proj.bias"] = (FLOAT, (D,))
    return e


def _moe_entries(p, t, quant):
    D, F, E = t.hidden_size, t.moe_intermediate_size, t.n_routed_experts
    e = {f"{p}gate.weight": (FLOAT, (E, D)), f"{p}gate.e_score_correction_bias": (("F32",), (E,))}
    e.update(_mlp_entries(f"{p}shared_experts.", D, F * t.n_shared_experts))
    for x in range(E):
        q = f"{p}experts.{x}."
        if quant is None:
            e.update(_mlp_entries(q, D, F))
        else:
            for name, (O, I) in (("gate_proj", (F, D)), ("up_proj", (F, D)), ("down_proj", (D, F))):
                e.update(_int4_entries(f"{q}{name}.", O, I, quant.group_size))
    return e


def text_tensors(cfg: KimiK25Config):
    """name -> (allowed dtypes, shape) for the text decoder, in the release's order."""
    t = cfg.text
    e = {f"{TEXT}embed_tokens.weight": (FLOAT, (t.vocab_size, t.hidden_size))}
    for i in range(t.num_hidden_layers):
        p = layer_prefix(i)
        e[f"{p}input_layernorm.weight"] = (FLOAT, (t.hidden_size,))
        e.update(_attention_entries(f"{p}self_attn.", t))
        e[f"{p}post_attention_layernorm.weight"] = (FLOAT, (t.hidden_size,))
        if t.is_moe_layer(i):
            e.update(_moe_entries(f"{p}mlp.", t, cfg.quant))
        else:
            e.update(_mlp_entries(f"{p}mlp.", t.hidden_size, t.intermediate_size))
    e[f"{TEXT}norm.weight"] = (FLOAT, (t.hidden_size,))
    if not t.tie_word_embeddings:
        e[LM_HEAD] = (FLOAT, (t.vocab_size, t.hidden_size))
    return e


def vision_tensors(cfg: KimiK25Config):
    """name -> (allowed dtypes, shape) for MoonViT and the projector (empty without a vision_config)."""
    v = cfg.vision
    if v is None:
        return {}
    Dv, Fv, P = v.hidden_size, v.intermediate_size, v.patch_size
    e = {"vision_tower.patch_embed.proj.weight": (FLOAT, (Dv, 3, P, P)),
         "vision_tower.patch_embed.proj.bias": (FLOAT, (Dv,)),
         "vision_tower.patch_embed.pos_emb.weight": (FLOAT, (v.init_pos_emb_height, v.init_pos_emb_width, Dv))}
    for b in range(v.num_hidden_layers):
        p = f"vision_tower.encoder.blocks.{b}."
        for name, shape in (("norm0", (Dv,)), ("norm1", (Dv,))):
            e[f"{p}{name}.weight"], e[f"{p}{name}.bias"] = (FLOAT, shape), (FLOAT, shape)
        for name, (O, I) in (("wqkv", (3 * Dv, Dv)), ("wo", (Dv, Dv)), ("mlp.fc0", (Fv, Dv)), ("mlp.fc1", (Dv, Fv))):
            e[f"{p}{name}.weight"], e[f"{p}{name}.bias"] = (FLOAT, (O, I)), (FLOAT, (O,))
    e["vision_tower.encoder.final_layernorm.weight"] = (FLOAT, (Dv,))
    e["vision_tower.encoder.final_layernorm.bias"] = (FLOAT, (Dv,))
    M = 4 * Dv
    e["mm_projector.pre_norm.weight"], e["mm_projector.pre_norm.bias"] = (FLOAT, (Dv,)), (FLOAT, (Dv,))
    e["mm_projector.proj.0.weight"], e["mm_projector.proj.0.bias"] = (FLOAT, (M, M)), (FLOAT, (M,))
    e["mm_projector.proj.2.weight"] = (FLOAT, (cfg.text.hidden_size, M))
    e["mm_projector.proj.2.bias"] = (FLOAT, (cfg.text.hidden_size,))
    return e


def expected_tensors(cfg: KimiK25Config):
    """Every tensor of a released-layout checkpoint: name -> (allowed dtypes, shape)."""
    return {**text_tensors(cfg), **vision_tensors(cfg)}


def validate(ckpt, cfg: KimiK25Config):
    """Headers only: every expected tensor present with an allowed dtype and the right shape; nothing extra.

    Raises the first problem as a CheckpointError naming file and tensor (use `problems()` for all of them).
    """
    for message in problems(ckpt, cfg):
        fail(*message)


def problems(ckpt, cfg: KimiK25Config):
    """Yield (path, code, detail, tensor) for every disagreement between checkpoint and config."""
    expected = expected_tensors(cfg)
    for name, (dtypes, shape) in expected.items():
        if name not in ckpt:
            yield (ckpt.folder, "missing_tensor", "required by config.json but not in the checkpoint", name)
            continue
        info = ckpt.info(name)
        if info.dtype not in dtypes:
            yield (ckpt.file_of(name), "wrong_dtype", f"dtype {info.dtype}, expected one of {list(dtypes)}", name)
        elif tuple(info.shape) != tuple(shape):
            yield (ckpt.file_of(name), "wrong_shape", f"shape {list(info.shape)}, expected {list(shape)}", name)
    for name in ckpt.names():
        if name not in expected:
            yield (ckpt.file_of(name), "unexpected_tensor", "not part of the model config.json describes", name)


# ----------------------------------------------------------------------------
# typed access with a byte-budgeted cache


class WeightCache:
    """Least-recently-used store of converted float32 arrays, bounded by `budget` bytes (None: unbounded)."""

    def __init__(self, budget=None):
        self.budget, self.items, self.bytes = budget, OrderedDict(), 0
        self.hits = self.misses = self.bytes_loaded = 0

    def get(self, key, load):
        if key in self.items:
            self.hits += 1
            self.items.move_to_end(key)
            return self.items[key]
        self.misses += 1
        value = load()
        size = sum(a.nbytes for a in value) if isinstance(value, tuple) else value.nbytes
        self.bytes_loaded += size
        if self.budget is None or size <= self.budget:
            self.items[key] = value
            self.bytes += size
            while self.budget is not None and self.bytes > self.budget:
                _, old = self.items.popitem(last=False)
                self.bytes -= sum(a.nbytes for a in old) if isinstance(old, tuple) else old.nbytes
        return value


class Weights:
    """float32 weights of one checkpoint by concept; each array converted once and cached."""

    def __init__(self, ckpt, cfg: KimiK25Config, cache: WeightCache):
        self.ckpt, self.cfg, self.cache, self.expected = ckpt, cfg, cache, expected_tensors(cfg)

    def f32(self, name):
        """One floating tensor, widened exactly to float32 (cached)."""
        return self.cache.get(name, lambda: np.ascontiguousarray(self.ckpt.float32(name, self.expected[name][1])))

    def optional(self, name):
        return self.f32(name) if name in self.expected else None

    def embedding_rows(self, ids):  # (T,) -> (T, D): only the rows used are read
        name = f"{TEXT}embed_tokens.weight"
        return to_float32(np.asarray(self.ckpt.raw(name)[np.asarray(ids)]), self.ckpt.info(name).dtype)

    def lm_head(self):  # (V, D)
        t = self.cfg.text
        return self.f32(f"{TEXT}embed_tokens.weight" if t.tie_word_embeddings else LM_HEAD)

    def attention(self, i):
        p = f"{layer_prefix(i)}self_attn."
        names = ("kv_a_proj_with_mqa", "kv_a_layernorm", "kv_b_proj", "o_proj", "q_a_proj", "q_a_layernorm",
                 "q_b_proj", "q_proj")
        kw = {n: self.optional(f"{p}{n}.weight") for n in names}
        kw.update({f"{n}_bias": self.optional(f"{p}{n}.bias") for n in ("q_a_proj", "kv_a_proj_with_mqa", "o_proj")})
        return MLAWeights(**kw)

    def norm(self, name):  # input_layernorm / post_attention_layernorm of a layer, or the final norm
        return self.f32(name)

    def mlp(self, prefix):  # -> (gate_proj, up_proj, down_proj)
        return tuple(self.f32(f"{prefix}{n}.weight") for n in ("gate_proj", "up_proj", "down_proj"))

    def router(self, i):  # -> (E, D), (E,)
        p = f"{layer_prefix(i)}mlp.gate."
        return self.f32(f"{p}weight"), self.f32(f"{p}e_score_correction_bias")

    def expert(self, i, e):  # -> (gate_proj, up_proj, down_proj) float32, dequantized when INT4
        prefix = f"{layer_prefix(i)}mlp.experts.{e}."
        if self.cfg.quant is None:
            return self.mlp(prefix)
        return self.cache.get(prefix, lambda: tuple(dequantize(self.int4(f"{prefix}{n}."))
                                                    for n in ("gate_proj", "up_proj", "down_proj")))

    def int4(self, prefix):
        """The stored triplet of one INT4 matrix, checked for agreement (weight_shape vs config)."""
        shape_name = f"{prefix}weight_shape"
        O = self.expected[f"{prefix}weight_packed"][1][0]
        I = self.expected[f"{prefix}weight_scale"][1][1] * self.cfg.quant.group_size
        stored = tuple(int(v) for v in np.asarray(self.ckpt.raw(shape_name)))
        if stored != (O, I):
            fail(self.ckpt.file_of(shape_name), "int4_shape", f"weight_shape {list(stored)} but config needs {[O, I]}",
                 shape_name)
        scale = self.ckpt.float32(f"{prefix}weight_scale")
        if not np.all(np.isfinite(scale)):
            fail(self.ckpt.file_of(f"{prefix}weight_scale"), "int4_scale", "scales contain NaN or Inf",
                 f"{prefix}weight_scale")
        return Int4Weight(np.asarray(self.ckpt.raw(f"{prefix}weight_packed")), scale, (O, I))

