"""The released checkpoint's tensor names, shapes and dtypes, in one table, and typed access to them.

`expected_tensors(cfg)` is the single source of truth for what a K2.5 checkpoint holds: the loader
validates against it (headers only, before any data is read), `make-tiny` writes exactly it, and
`inspect` counts it. Names are the released ones (`language_model.model.layers.N...`, `vision_tower...`,
`mm_projector...`), derived from the config, never from literals like 61.

`Weights` hands out weights by concept (embedding rows, a layer's MLA weights, one routed expert, ...),
read on first use: BF16 widened exactly to float32, INT4 experts kept packed. The cache and the reader live in
k25ref/streaming.py.
"""
from dataclasses import dataclass, replace
from functools import cached_property

import numpy as np

from k25ref.checkpoint import fail, to_float32
from k25ref.config import KimiK25Config
from k25ref.int4 import Int4Weight
from k25ref.mla import KEY_BLOCK, MLAWeights
from k25ref.nn import Bf16Weight, widened_matmul
from k25ref.streaming import IOStats, Reader, WeightCache

TEXT = "language_model.model."
LM_HEAD = "language_model.lm_head.weight"
FLOAT = ("BF16", "F16", "F32")          # dtypes accepted for floating weights (the release uses BF16)
MATRICES = ("q_a_proj.weight", "q_b_proj.weight", "q_proj.weight", "kv_a_proj_with_mqa.weight", "o_proj.weight",
            "gate_proj.weight", "up_proj.weight", "down_proj.weight")   # what a forward pass takes via matrix()
HEAD_BLOCK = 64 << 20                   # bytes (as float32) of one block of an output head read block by block
EMBED_GAP = 32 << 10                    # bytes: embedding rows this close are read in one call


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


def int4_problems(ckpt, cfg: KimiK25Config):
    """Yield (path, code, detail, tensor) for every INT4 weight_shape whose values disagree with the config.
    Reads 8 bytes per INT4 matrix: for `inspect`; loading checks each expert when it is first used."""
    expected = expected_tensors(cfg)
    for name in expected:
        if name.endswith("weight_shape") and name in ckpt:
            prefix = name[: -len("weight_shape")]
            want = [expected[f"{prefix}weight_packed"][1][0], expected[f"{prefix}weight_scale"][1][1] * cfg.quant.group_size]
            got = np.asarray(ckpt.raw(name)).tolist()
            if got != want:
                yield (ckpt.file_of(name), "int4_shape", f"weight_shape {got} but config needs {want}", name)


# ----------------------------------------------------------------------------
# typed access through the budgeted cache


def expert_bytes(ckpt, cfg: KimiK25Config, prefix):
    """Bytes routed expert `prefix` takes in the cache: packed codes + float32 scales (float32 if unquantized)."""
    names = ("gate_proj", "up_proj", "down_proj")
    if cfg.quant is None:
        return sum(ckpt.info(f"{prefix}{n}.weight").f32_nbytes for n in names)
    return sum(ckpt.info(f"{prefix}{n}.weight_packed").nbytes + ckpt.info(f"{prefix}{n}.weight_scale").f32_nbytes
               for n in names)


def working_set(ckpt, cfg: KimiK25Config):
    """Bytes a forward pass may hold outside the weight cache, at most (what a memory budget must leave free):

        the dense weights of the largest layer, as cached   a layer in use can be evicted by the prefetch of the next
      + the largest of them as float32                      widened for one product (NumPy), or read and widened
      + top-k routed experts, or one expert as float32      stacked for the kernel / dequantized by the reference
      + one block of the output head                        HEAD_BLOCK, with its stored copy
    Cached sizes: BF16 matrices stay as stored (Weights.matrix), everything else is float32. Activations (a
    few rows of width D per token) are not counted.
    """
    t, expected = cfg.text, expected_tensors(cfg)
    dense = [n for n in expected if n.startswith(f"{TEXT}layers.") and ".mlp.experts." not in n]
    f32 = {n: ckpt.info(n).f32_nbytes for n in dense}
    cached = {n: ckpt.info(n).nbytes if n.endswith(MATRICES) and ckpt.info(n).dtype == "BF16" else f32[n]
              for n in dense}
    per_layer = [sum(v for n, v in cached.items() if n.startswith(layer_prefix(i))) for i in range(t.num_hidden_layers)]
    moe_layers, experts = [i for i in range(t.num_hidden_layers) if t.is_moe_layer(i)], 0
    if moe_layers:
        one = expert_bytes(ckpt, cfg, f"{layer_prefix(moe_layers[0])}mlp.experts.0.")
        dequantized = 3 * t.moe_intermediate_size * t.hidden_size * 4
        experts = max(t.num_experts_per_tok * one, dequantized)
    head = 2 * min(HEAD_BLOCK, 4 * t.vocab_size * t.hidden_size)
    return max(per_layer) + max(f32.values()) + experts + head


def context_bytes(cfg: KimiK25Config, context, chunk):  # -> (latent cache bytes, activation bytes)
    """What a forward pass holds besides weights, for `context` positions run `chunk` tokens at a time:

        latent cache    context * L * (Ckv + Dr) * 4                 float32, sized once for the whole context
        activations     one chunk of R = min(chunk, context) rows:
                          attention  H*R*(2B + Ckv + Dn + Dr + 2Dv) + B*H*(Dn + Dv)   scores and their exp for
                                     a key block of B (mla.KEY_BLOCK), absorbed query, accumulator (H*R*Ckv
                                     when absorbed: counted as the larger), one block's expanded keys/values
                          rows       R*(6D + Cq + 2H*(Dn + Dr) + Ckv + Dr + H*Dv + 3F)  residual stream and its
                                     norms, projections, the widest FFN's gate/up/product (F: dense, or top-k
                                     experts' sum), + V for the logits row
    An estimate from the shapes (tools/bench.py --long prints the measured peak RSS beside it); it grows with
    the context only through the cache, and with the chunk linearly."""
    t = cfg.text
    H, D, Ckv, Dr, Dn, Dv = (t.num_attention_heads, t.hidden_size, t.kv_lora_rank, t.qk_rope_head_dim,
                             t.qk_nope_head_dim, t.v_head_dim)
    R, B = min(chunk or context, context), min(KEY_BLOCK, context)
    F = max(t.intermediate_size, t.num_experts_per_tok * t.moe_intermediate_size)
    attention = H * R * (2 * B + max(Ckv, Dv) + Dn + Dr + 2 * Dv) + B * H * (Dn + Dv)
    rows = R * (6 * D + (t.q_lora_rank or 0) + 2 * H * (Dn + Dr) + Ckv + Dr + H * Dv + 3 * F) + t.vocab_size
    return context * t.num_hidden_layers * (Ckv + Dr) * 4, 4 * (attention + rows)


class ExpertStack:
    """The routed INT4 experts of one layer when every weight is kept (no memory budget): six stacked arrays,
    packed codes and scales of gate, up and down, entry e = expert e, filled as experts are first read (the
    cached Int4Weights are views of their entries, so nothing is held twice; entries never filled stay
    untouched zero pages, which take no memory). It is the form the MoE kernel indexes with global expert
    ids: nothing is gathered per token, and the kernel indexes stacked arrays faster than lists of arrays
    (one decoded token's call, one thread: 3.3x faster at tools/bench.py's tiny shapes, 1.6x at small)."""

    def __init__(self, E):
        self.arrays, self.held = None, np.zeros(E, bool)                   # (E, O, I/8) / (E, O, I/G) x 3

    def put(self, e, expert):  # (gate, up, down) Int4Weight -> the same, as views of entry e
        if self.arrays is None:
            self.arrays = tuple(np.zeros((len(self.held), *a.shape), a.dtype)
                                for w in expert for a in (w.packed, w.scale))
        for j, w in enumerate(expert):
            self.arrays[2 * j][e], self.arrays[2 * j + 1][e] = w.packed, w.scale
        self.held[e] = True
        return tuple(replace(w, packed=self.arrays[2 * j][e], scale=self.arrays[2 * j + 1][e])
                     for j, w in enumerate(expert))


@dataclass(frozen=True)
class LayerWeights:
    """What decoder layer i reads besides its routed experts, in the form a forward pass takes it."""
    input_layernorm: np.ndarray             # (D,)
    attention: MLAWeights
    post_attention_layernorm: np.ndarray    # (D,)
    mlp: tuple                              # (gate_proj, up_proj, down_proj): the dense FFN, or the shared expert(s)
    router: tuple | None = None             # (gate (E, D), e_score_correction_bias (E,)) on MoE layers


class Weights:
    """Weights of one checkpoint by concept, read on first use (pread) and kept in `cache`.

    Small tensors are float32 (BF16 widened exactly); in a forward pass the big BF16 matrices stay as stored
    (`matrix`), half the bytes; routed experts stay packed INT4 (`Int4Weight`) and are dequantized where they
    are used, so a cached expert costs ~1/7 of its float32 size.
    """

    def __init__(self, ckpt, cfg: KimiK25Config, cache: WeightCache, reader: Reader = None, prefetcher=None):
        self.ckpt, self.cfg, self.cache = ckpt, cfg, cache
        self.reader = reader if reader is not None else Reader(ckpt, IOStats())
        self.expected, self.prefetcher = expected_tensors(cfg), prefetcher
        self._held = {}

    def f32(self, name):
        """One floating tensor, widened exactly to float32 (cached)."""
        info = self.ckpt.info(name)
        return self.cache.get(name, lambda: to_float32(self.reader.read(name), info.dtype), info.f32_nbytes)

    def optional(self, name, ops=None):
        return self.matrix(name, ops) if name in self.expected else None

    def matrix(self, name, ops=None):
        """A big matrix. In a forward pass (`ops`: the model's engine.Ops) a BF16 one is cached as stored and
        handed out as a Bf16Weight: multiplied by the bf16 kernel (ops.bf16_matmul), or, for the reference under
        a budget, widened one product at a time, so the cache and a layer in use hold half the bytes of float32.
        Otherwise (no ops, other dtypes, or the reference with no budget, where widening on every token would
        only repeat work): float32, cached."""
        info = self.ckpt.info(name)
        matmul = ops and (ops.bf16_matmul or (widened_matmul if self.cache.budget is not None else None))
        if not matmul or info.dtype != "BF16":
            return self.f32(name)
        raw = self.cache.get((name, "stored"), lambda: self.reader.read(name), info.nbytes)
        return Bf16Weight(raw, matmul)

    def held(self, key, build):
        """build(), made once and kept when every weight is kept (no budget): a layer's weights in the form a
        forward pass takes them, or a kernel's table of them, so a decoded token does not assemble them again.
        Under a budget what they hold may be evicted, so they are built on every call."""
        if self.cache.budget is not None:
            return build()
        if key not in self._held:
            self._held[key] = build()
        return self._held[key]

    def embedding_rows(self, ids):  # (T,) -> (T, D): only the rows used are read
        """Each distinct row once; rows at most EMBED_GAP bytes apart in one read (a prompt's ids, one read
        each, cost a twentieth of a 128-token prompt on tools/bench.py's tiny)."""
        name = f"{TEXT}embed_tokens.weight"
        info = self.ckpt.info(name)
        rows, where = np.unique(np.asarray(ids, np.int64), return_inverse=True)
        gap = max(1, EMBED_GAP // (info.nbytes // info.shape[0]))
        runs = np.split(rows, np.nonzero(np.diff(rows) > gap)[0] + 1)
        raw = np.concatenate([self.reader.read_rows(name, run[0], run[-1] + 1)[run - run[0]] for run in runs])
        return to_float32(raw, info.dtype)[where.reshape(-1)]

    def head_blocks(self, stored):  # -> iterator of (rows, D) blocks of the output head, top to bottom
        """The lm_head as float32 (or as stored, for the bf16 kernel). Cached whole when it takes at most a
        quarter of the budget; otherwise read in blocks of HEAD_BLOCK bytes (as float32) on every call
        (K2.5's head is 2.35 GB as bf16)."""
        t = self.cfg.text
        name = f"{TEXT}embed_tokens.weight" if t.tie_word_embeddings else LM_HEAD
        info, V = self.ckpt.info(name), t.vocab_size
        size = info.nbytes if stored else info.f32_nbytes
        convert = (lambda raw: raw) if stored else (lambda raw: to_float32(raw, info.dtype))
        if self.cache.budget is None or size <= self.cache.budget // 4:
            yield self.cache.get((name, stored), lambda: convert(self.reader.read(name)), size)
            return
        rows = max(1, HEAD_BLOCK // (4 * t.hidden_size))
        for a in range(0, V, rows):
            yield convert(self.reader.read_rows(name, a, min(a + rows, V)))

    def head_dtype(self):
        t = self.cfg.text
        return self.ckpt.info(f"{TEXT}embed_tokens.weight" if t.tie_word_embeddings else LM_HEAD).dtype

    def attention(self, i, ops=None):  # -> MLAWeights (see matrix() for ops; held: made once)
        p = f"{layer_prefix(i)}self_attn."

        def build():
            kw = {m[:-7]: self.optional(f"{p}{m}", ops) for m in MATRICES[:5]}
            kw.update({n: self.optional(f"{p}{n}.weight") for n in ("kv_a_layernorm", "kv_b_proj", "q_a_layernorm")})
            kw.update({f"{n}_bias": self.optional(f"{p}{n}.bias")
                       for n in ("q_a_proj", "kv_a_proj_with_mqa", "o_proj")})
            return MLAWeights(**kw)
        return self.held((p, ops and ops.bf16_matmul), build)

    def mlp(self, prefix, ops=None):  # -> (gate_proj, up_proj, down_proj) (see matrix() for ops; held: made once)
        names = ("gate_proj", "up_proj", "down_proj")
        return self.held((prefix, ops and ops.bf16_matmul), lambda: tuple(self.matrix(f"{prefix}{n}.weight", ops)
                                                                           for n in names))

    def layer(self, i, ops=None):  # -> LayerWeights (see matrix() for ops; held: made once)
        """Layer i's dense weights in one bundle, looked up once: a decoded token does no name lookups."""
        p, moe = layer_prefix(i), self.cfg.text.is_moe_layer(i)
        return self.held((p, "layer", ops and ops.bf16_matmul), lambda: LayerWeights(
            self.f32(f"{p}input_layernorm.weight"), self.attention(i, ops),
            self.f32(f"{p}post_attention_layernorm.weight"),
            self.mlp(f"{p}mlp.shared_experts." if moe else f"{p}mlp.", ops), self.router(i) if moe else None))

    def router(self, i):  # -> (E, D), (E,)
        p = f"{layer_prefix(i)}mlp.gate."
        return self.f32(f"{p}weight"), self.f32(f"{p}e_score_correction_bias")

    def dense_names(self, i):
        """The non-expert tensors of layer i (what a decoded token reads in full)."""
        p = layer_prefix(i)
        return [n for n in self.expected if n.startswith(p) and ".mlp.experts." not in n and
                not n.endswith(("weight_packed", "weight_scale", "weight_shape"))]

    def prefetch_layer(self, i, ops=None):
        """Start reading layer i's dense weights in the background (no-op without a prefetcher)."""
        if self.prefetcher is not None and 0 <= i < self.cfg.text.num_hidden_layers:
            names = self.dense_names(i)
            self.prefetcher.later(lambda: [self.matrix(n, ops) if n.endswith(MATRICES) else self.f32(n)
                                           for n in names])

    def expert(self, i, e):  # -> (gate_proj, up_proj, down_proj): Int4Weight each (or float32 if unquantized)
        prefix = f"{layer_prefix(i)}mlp.experts.{e}."
        if self.cfg.quant is None:
            return self.mlp(prefix)
        names = ("gate_proj", "up_proj", "down_proj")
        read = lambda: tuple(self.int4(f"{prefix}{n}.") for n in names)      # noqa: E731
        if self.cache.budget is None:                                         # every expert kept: in the stack
            return self.cache.get(prefix, lambda: self.expert_stack(i).put(e, read()), self.expert_nbytes, spare=True)
        return self.cache.get(prefix, read, self.expert_nbytes, spare=True)

    def expert_stack(self, i):  # -> ExpertStack of layer i (INT4 experts, no budget)
        return self.held(("experts", i), lambda: ExpertStack(self.cfg.text.n_routed_experts))

    @cached_property
    def expert_nbytes(self):
        """Bytes of one cached routed expert (all have the same shapes: validated on load)."""
        t = self.cfg.text
        first = next(i for i in range(t.num_hidden_layers) if t.is_moe_layer(i))
        return expert_bytes(self.ckpt, self.cfg, f"{layer_prefix(first)}mlp.experts.0.")

    def expert_chunks(self, used):  # (C,) sorted expert ids -> list of (c,) id arrays, in order
        """Under a budget, a layer's chosen experts are read and run a token's worth (top-k) at a time, so a
        long prompt, which can choose every expert, never holds more than that outside the cache."""
        if self.cache.budget is None:
            return [used]
        k = self.cfg.text.num_experts_per_tok
        return [used[a:a + k] for a in range(0, len(used), k)]

    def load_experts(self, i, experts, known=0):
        """Count cache hits/misses of layer i's chosen experts and read the missing ones, concurrently when
        a prefetcher is present, before the layer uses them one by one. `known`: how many more were chosen
        that the caller knows to be cached (counted as hits, not looked up)."""
        self.reader.stats.expert(i, True, known)
        for e in experts:
            self.reader.stats.expert(i, f"{layer_prefix(i)}mlp.experts.{e}." in self.cache)
        load = [lambda e=e: self.expert(i, e) for e in experts]
        if self.prefetcher is not None:
            self.prefetcher.all(load)
        else:
            for fn in load:
                fn()

    def int4(self, prefix):
        """The stored triplet of one INT4 matrix, checked for agreement (weight_shape vs config, finite scales)."""
        shape_name, scale_name = f"{prefix}weight_shape", f"{prefix}weight_scale"
        O = self.expected[f"{prefix}weight_packed"][1][0]
        I = self.expected[scale_name][1][1] * self.cfg.quant.group_size
        stored = tuple(int(v) for v in self.reader.read(shape_name))
        if stored != (O, I):
            fail(self.ckpt.file_of(shape_name), "int4_shape", f"weight_shape {list(stored)} but config needs {[O, I]}",
                 shape_name)
        dtype = self.ckpt.info(scale_name).dtype                              # q * scale is rounded to it
        scale = to_float32(self.reader.read(scale_name), dtype)
        if not np.all(np.isfinite(scale)):
            fail(self.ckpt.file_of(scale_name), "int4_scale", "scales contain NaN or Inf", scale_name)
        return Int4Weight(self.reader.read(f"{prefix}weight_packed"), scale, (O, I), dtype)
