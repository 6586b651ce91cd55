"""Export a released-layout checkpoint's text decoder to GGUF, in llama.cpp's `deepseek2` form.

The file is written by the `gguf` package (the format's own writer, from PyPI); this module only decides
what goes in it. Three things change on the way:

1. Names. The released names (`language_model.model.layers.N.self_attn.q_a_proj.weight`) lose their
   `language_model.` prefix and go through `gguf`'s own name map for DEEPSEEK2 (`blk.N.attn_q_a.weight`).
2. MLA in its absorbed form. llama.cpp attends in latent space with one KV head, so `kv_b_proj`
   (H*(Dn+Dv), Ckv) is split per head into  k_b = W_UK^T  (H, Ckv, Dn)  and  v_b = W_UV  (H, Dv, Ckv)
   -- the same W_UK / W_UV that k25ref's `mla.attend_absorbed` folds into the query and the output.
3. Routed experts stacked per layer, (E, F, D) / (E, D, F), in one of three forms:

       q4_0   the INT4 codes repacked, not requantized. A Q4_0 block is 32 weights:
                  d  (float16) | 16 bytes: byte j = u[j] | u[j+16] << 4,   w = (u - 8) * d
              compressed-tensors stores the same u = q + 8 with one bf16 scale per group of 32, so a
              block is the group with d = f16(scale). That is exact whenever the bf16 scale is a float16
              value (|scale| in [2^-17, 65504], or 0); the groups where it is not are counted and reported.
              Note: Q4_0 dequantizes to the exact product q * d, while compressed-tensors (and so
              k25ref) rounds bf16(q * scale): up to one bf16 ulp per weight on the same codes.
       bf16   bf16(q * scale): exactly the weights k25ref and transformers compute with
       f32    the same values widened

Dense matrices are written as f32 (exact), bf16 (exact: the stored bits) or f16 (rounded; the elements
that change are counted). Norms, biases, the router and its correction bias are always F32, as
llama.cpp's own converter writes them. The vision tower and projector are not exported: llama.cpp
keeps them in a separate mmproj file, and k25ref runs them itself.

Metadata comes from config.json (heads, ranks, head dims, experts, groups, sigmoid gating, normalised
top-k weights, routed scaling, leading dense layers, YaRN); the tokenizer from `tiktoken.model` with
llama.cpp's Kimi pre-tokenizer `kimi-k2` (a checkpoint without a tokenizer gets tokenizer model `none`
and only the vocabulary size). What `deepseek2` cannot express is refused (attention biases) or
reported as a note (see `llama_cpp_notes`).

Same as (facts, not code): llama.cpp conversion/deepseek.py DeepseekV2Model, src/models/deepseek2.cpp.
"""
import os
from dataclasses import dataclass, field

import numpy as np

from k25ref.checkpoint import Checkpoint, bf16_to_f32, f32_to_bf16, to_float32
from k25ref.config import KimiK25Config, load_config
from k25ref.errors import ConfigError, K25RefError
from k25ref.files import atomic_path, output_problem
from k25ref.int4 import dequantize, unpack
from k25ref.streaming import WeightCache
from k25ref.weights import LM_HEAD, TEXT, Weights, expected_tensors, layer_prefix, validate

EXPERT_TYPES = ("q4_0", "bf16", "f32")
DENSE_TYPES = ("f32", "bf16", "f16")
Q4_0_BLOCK = 32                         # weights per Q4_0 block
PRE_TOKENIZER = "kimi-k2"               # llama.cpp's name for the Kimi pre-tokenization regex


def _gguf():
    try:
        import gguf
    except ImportError:
        raise K25RefError("export-gguf needs the `gguf` package: pip install gguf") from None
    return gguf


@dataclass
class ExportReport:
    """What an export wrote, and every place it is not bit-exact."""
    path: str
    tensors: int = 0
    bytes: int = 0
    q4_0_groups: int = 0                # INT4 groups repacked to Q4_0
    q4_0_groups_lossy: int = 0          # ... whose bf16 scale is not a float16 value
    lossy_elements: dict = field(default_factory=dict)   # gguf tensor name -> elements that changed value
    notes: list = field(default_factory=list)            # what llama.cpp will compute differently


class Deferred:
    """A tensor the writer asks for only when it writes it (`tofile`), so one tensor is in memory at a time."""

    def __init__(self, shape, dtype, make):
        self.shape, self.dtype, self.make = tuple(shape), np.dtype(dtype), make
        self.nbytes = int(np.prod(self.shape)) * self.dtype.itemsize

    def tofile(self, f):
        arr = np.ascontiguousarray(self.make(), dtype=self.dtype)
        assert arr.shape == self.shape, (arr.shape, self.shape)
        arr.tofile(f)


# ----------------------------------------------------------------------------
# values: exact where the target type can hold them, counted where it cannot


def q4_0_blocks(packed, scale, shape, group_size):  # (O, I/8) int32, (O, I/G) f32 -> (O, I/32*18) uint8, lossy
    """INT4 codes and bf16 group scales -> Q4_0 bytes: per block d (f16) then byte j = u[j] | u[j+16] << 4.
    Returns the blocks and the number of groups whose scale float16 cannot hold exactly."""
    O, I = shape
    u = (unpack(packed, I).astype(np.int16) + 8).astype(np.uint8).reshape(O, I // Q4_0_BLOCK, Q4_0_BLOCK)
    with np.errstate(over="ignore"):
        d16 = scale.astype(np.float16)                                          # (O, I/G)
    lossy = int(np.count_nonzero(d16.astype(np.float32) != scale))
    d = np.repeat(d16, group_size // Q4_0_BLOCK, axis=1)                        # (O, I/32): a block per 32
    qs = u[..., :16] | (u[..., 16:] << np.uint8(4))                             # (O, I/32, 16)
    blocks = np.concatenate([d.view(np.uint8).reshape(O, I // Q4_0_BLOCK, 2), qs], axis=-1)
    return blocks.reshape(O, -1), lossy


def q4_0_values(blocks, shape):  # (O, I/32*18) uint8 -> (O, I) float32
    """What a Q4_0 tensor holds: (u - 8) * d, the exact product (the reading direction of q4_0_blocks)."""
    O, I = shape
    b = blocks.reshape(O, I // Q4_0_BLOCK, 18)
    d = b[..., :2].copy().view(np.float16).astype(np.float32)                   # (O, I/32, 1)
    u = np.concatenate([b[..., 2:] & 0xF, b[..., 2:] >> 4], axis=-1).astype(np.float32)
    return ((u - 8) * d).reshape(O, I)


def as_type(x, kind):  # float32 array -> (stored array, elements whose value changed)
    """float32 values in a GGUF float type: f32 as is, bf16 as its bits (uint16), f16 rounded."""
    if kind == "f32":
        return x, 0
    if kind == "bf16":
        bits = f32_to_bf16(x)
        return bits, int(np.count_nonzero(bf16_to_f32(bits) != x))
    with np.errstate(over="ignore"):
        y = x.astype(np.float16)
    return y, int(np.count_nonzero(y.astype(np.float32) != x))


GGML_TYPE = {"f32": "F32", "bf16": "BF16", "f16": "F16", "q4_0": "Q4_0"}
NUMPY_TYPE = {"f32": np.float32, "bf16": np.uint16, "f16": np.float16, "q4_0": np.uint8}


# ----------------------------------------------------------------------------
# tensors


class Exporter:
    """Walks a checkpoint's text decoder in GGUF order and adds each tensor to a writer as `Deferred`."""

    def __init__(self, ckpt, cfg: KimiK25Config, experts, dense, report: ExportReport):
        gguf = _gguf()
        self.gguf, self.ckpt, self.cfg, self.experts, self.dense, self.report = gguf, ckpt, cfg, experts, dense, report
        self.names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.DEEPSEEK2, cfg.text.num_hidden_layers)
        self.weights = Weights(ckpt, cfg, WeightCache(0))   # checked INT4 triplets; nothing kept

    def gguf_name(self, released):
        """Released name -> GGUF name, through gguf's own DEEPSEEK2 name map."""
        hf = "lm_head.weight" if released == LM_HEAD else released[len("language_model."):]
        hf = hf.replace("e_score_correction_bias", "e_score_correction.bias")
        name = self.names.get_name(hf, try_suffixes=(".weight", ".bias"))
        if name is None:
            raise K25RefError(f"{released}: gguf's deepseek2 name map has no entry for it")
        return name

    def add(self, writer, released, shape, kind, make):
        """Add one tensor; `make()` returns float32 values (or Q4_0 bytes) when the writer gets to it."""
        name = self.gguf_name(released)

        def stored():
            if kind == "q4_0":
                return make()
            arr, lossy = as_type(make(), kind)
            if lossy:
                self.report.lossy_elements[name] = lossy
            return arr

        if kind == "q4_0":
            shape = (*shape[:-1], shape[-1] // Q4_0_BLOCK * 18)
        tensor = Deferred(shape, NUMPY_TYPE[kind], stored)
        writer.add_tensor(name, tensor, raw_dtype=getattr(self.gguf.GGMLQuantizationType, GGML_TYPE[kind]))
        self.report.tensors += 1
        self.report.bytes += tensor.nbytes

    def f32(self, name):
        return to_float32(self.ckpt.raw(name), self.ckpt.info(name).dtype)

    def add_stored(self, writer, name):
        """A tensor as in the checkpoint: vectors, the router and its bias in F32; matrices in the dense type."""
        shape = self.ckpt.info(name).shape
        kind = "f32" if len(shape) == 1 or name.endswith("mlp.gate.weight") else self.dense
        self.add(writer, name, shape, kind, lambda: self.f32(name))

    def add_kv_b(self, writer, name):
        """kv_b_proj (H*(Dn+Dv), Ckv) -> k_b (H, Ckv, Dn) = W_UK^T per head, v_b (H, Dv, Ckv) = W_UV."""
        t = self.cfg.text
        H, Dn, Dv, C = t.num_attention_heads, t.qk_nope_head_dim, t.v_head_dim, t.kv_lora_rank
        per_head = lambda: self.f32(name).reshape(H, Dn + Dv, C)                # noqa: E731
        self.add(writer, name.replace("kv_b_proj", "k_b_proj"), (H, C, Dn), self.dense,
                 lambda: per_head()[:, :Dn].transpose(0, 2, 1))
        self.add(writer, name.replace("kv_b_proj", "v_b_proj"), (H, Dv, C), self.dense, lambda: per_head()[:, Dn:])

    def expert_values(self, i, e, proj):  # -> (O, I) float32: the weights k25ref computes with
        prefix = f"{layer_prefix(i)}mlp.experts.{e}.{proj}."
        if self.cfg.quant is None:
            return self.f32(f"{prefix}weight")
        return dequantize(self.weights.int4(prefix))

    def expert_q4_0(self, i, e, proj):  # -> (O, I/32*18) uint8
        w = self.weights.int4(f"{layer_prefix(i)}mlp.experts.{e}.{proj}.")
        blocks, lossy = q4_0_blocks(w.packed, w.scale, w.shape, w.group_size)
        self.report.q4_0_groups += w.scale.size
        self.report.q4_0_groups_lossy += lossy
        return blocks

    def add_experts(self, writer, i):
        """The routed experts of layer i stacked: gate/up (E, F, D), down (E, D, F)."""
        t = self.cfg.text
        E, D, F = t.n_routed_experts, t.hidden_size, t.moe_intermediate_size
        one = self.expert_q4_0 if self.experts == "q4_0" else self.expert_values
        for proj, shape in (("gate_proj", (F, D)), ("up_proj", (F, D)), ("down_proj", (D, F))):
            released = f"{layer_prefix(i)}mlp.experts.{proj}.weight"
            self.add(writer, released, (E, *shape), self.experts,
                     lambda proj=proj: np.stack([one(i, e, proj) for e in range(E)]))

    def add_all(self, writer):
        """Every text tensor in the release's order; a layer's routed experts at its first expert's place."""
        for name in (n for n in expected_tensors(self.cfg) if n.startswith("language_model.")):
            if ".mlp.experts." in name:
                if name.endswith((".experts.0.gate_proj.weight", ".experts.0.gate_proj.weight_packed")):
                    self.add_experts(writer, int(name[len(TEXT + "layers."):].split(".")[0]))
            elif name.endswith("kv_b_proj.weight"):
                self.add_kv_b(writer, name)
            else:
                self.add_stored(writer, name)


# ----------------------------------------------------------------------------
# metadata


def llama_cpp_notes(cfg: KimiK25Config):
    """Where llama.cpp's deepseek2 computes something other than the checkpoint's model (from its source)."""
    t, r = cfg.text, cfg.text.rope
    notes = ["q_a_layernorm / kv_a_layernorm: llama.cpp uses rms_norm_eps "
             f"({t.rms_norm_eps:g}) for them; transformers and k25ref use 1e-6"]
    if r.type == "yarn":
        if r.mscale and r.mscale_all_dim and r.mscale != r.mscale_all_dim and r.mscale_all_dim != 1:
            notes.append(f"YaRN mscale {r.mscale:g} != mscale_all_dim {r.mscale_all_dim:g}: llama.cpp assumes "
                         "mscale = mscale_all_dim (cos/sin factor 1)")
        elif r.mscale and r.mscale_all_dim and r.mscale != r.mscale_all_dim:
            notes.append(f"YaRN mscale {r.mscale:g} with mscale_all_dim 1: llama.cpp assumes mscale 1")
        if not r.mscale_all_dim:
            notes.append("YaRN without mscale_all_dim: llama.cpp still multiplies the softmax scale by "
                         "mscale(factor)^2, transformers does not")
        if (r.beta_fast, r.beta_slow) != (32.0, 1.0):
            notes.append(f"YaRN beta_fast/beta_slow {r.beta_fast:g}/{r.beta_slow:g}: llama.cpp's deepseek2 "
                         "ignores them and uses 32/1")
    return notes


def add_metadata(writer, cfg: KimiK25Config, name):
    """config.json -> deepseek2 keys (what llama.cpp's loader reads; MLA as one KV head)."""
    gguf, t = _gguf(), cfg.text
    writer.add_name(name)
    writer.add_context_length(t.max_position_embeddings)
    writer.add_embedding_length(t.hidden_size)
    writer.add_block_count(t.num_hidden_layers)
    writer.add_feed_forward_length(t.intermediate_size)
    writer.add_head_count(t.num_attention_heads)
    writer.add_head_count_kv(1)                               # absorbed MLA: one latent "head" shared by all
    writer.add_layer_norm_rms_eps(t.rms_norm_eps)
    writer.add_vocab_size(t.vocab_size)
    writer.add_leading_dense_block_count(t.first_k_dense_replace)
    writer.add_q_lora_rank(t.q_lora_rank or 0)                # 0: a plain q_proj (llama.cpp reads the key)
    writer.add_kv_lora_rank(t.kv_lora_rank)
    writer.add_key_length(t.kv_lora_rank + t.qk_rope_head_dim)
    writer.add_value_length(t.kv_lora_rank)
    writer.add_key_length_mla(t.qk_head_dim)
    writer.add_value_length_mla(t.v_head_dim)
    writer.add_expert_feed_forward_length(t.moe_intermediate_size)
    writer.add_expert_shared_count(t.n_shared_experts)
    if t.has_moe:
        writer.add_expert_count(t.n_routed_experts)
        writer.add_expert_used_count(t.num_experts_per_tok)
        limited = t.topk_group < t.n_group                    # all groups picked = no group limit at all
        writer.add_expert_group_count(t.n_group if limited else 1)
        writer.add_expert_group_used_count(t.topk_group if limited else 1)
        writer.add_expert_weights_scale(t.routed_scaling_factor)
        writer.add_expert_weights_norm(t.norm_topk_prob)
        writer.add_expert_gating_func(gguf.ExpertGatingFuncType.SIGMOID)
    writer.add_rope_dimension_count(t.qk_rope_head_dim)
    writer.add_rope_freq_base(t.rope.theta)
    r = t.rope
    if r.type == "yarn":
        writer.add_rope_scaling_type(gguf.RopeScalingType.YARN)
        writer.add_rope_scaling_factor(r.factor)
        writer.add_rope_scaling_orig_ctx_len(r.original_max_position_embeddings)
        writer.add_rope_scaling_yarn_beta_fast(r.beta_fast)
        writer.add_rope_scaling_yarn_beta_slow(r.beta_slow)
        if r.mscale_all_dim:
            writer.add_rope_scaling_yarn_log_mul(0.1 * r.mscale_all_dim)   # llama.cpp's deepseek2 convention
    else:
        writer.add_rope_scaling_type(gguf.RopeScalingType.NONE)


def bytes_to_unicode():
    """GPT-2's byte-level alphabet: each byte as a printable character (how `gpt2` GGUF vocabularies spell
    tokens): printable Latin-1 bytes stand for themselves, the other 68 take code points from 256 on."""
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    table, extra = {}, 0
    for b in range(256):
        if b in keep:
            table[b] = chr(b)
        else:
            table[b] = chr(256 + extra)
            extra += 1
    return table


def last_merge(token, rank, ranks):  # bytes, its rank -> (left, right) or None
    """The merge that makes `token`: byte-pair merging with only lower ranks ends in exactly two parts."""
    parts = [token[i:i + 1] for i in range(len(token))]
    while len(parts) > 2:
        best = min(((ranks.get(parts[i] + parts[i + 1], rank), i) for i in range(len(parts) - 1)))
        if best[0] >= rank:
            return None
        parts[best[1]:best[1] + 2] = [parts[best[1]] + parts[best[1] + 1]]
    return tuple(parts) if len(parts) == 2 else None


def add_tokenizer(writer, cfg: KimiK25Config, folder):
    """tiktoken.model -> a `gpt2` vocabulary with the `kimi-k2` pre-tokenizer, merges and special tokens."""
    gguf = _gguf()
    if not os.path.exists(os.path.join(folder, "tiktoken.model")):
        writer.add_tokenizer_model("none")                    # ids only: llama.cpp sizes the vocabulary from
        return                                                # the vocab_size key
    from k25ref.tokenizer import Tokenizer
    tok = Tokenizer.from_pretrained(folder)
    V = cfg.text.vocab_size
    if tok.vocab_size > V:
        raise ConfigError(f"{folder}: the tokenizer has {tok.vocab_size} ids but vocab_size is {V}")
    spell = bytes_to_unicode()
    text = lambda b: "".join(spell[c] for c in b)           # noqa: E731
    tokens = [f"[PAD{i}]" for i in range(V)]
    types = [gguf.TokenType.UNUSED] * V
    merges = []
    for token, rank in sorted(tok.ranks.items(), key=lambda kv: kv[1]):
        tokens[rank], types[rank] = text(token), gguf.TokenType.NORMAL
        pair = last_merge(token, rank, tok.ranks) if len(token) > 1 else None
        if pair:
            merges.append(f"{text(pair[0])} {text(pair[1])}")
    for name, i in tok.special_tokens.items():
        tokens[i], types[i] = name, gguf.TokenType.CONTROL
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(PRE_TOKENIZER)
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_token_merges(merges)
    writer.add_bos_token_id(tok.bos_id)
    writer.add_eos_token_id(tok.eos_id)


# ----------------------------------------------------------------------------
# the export


def check_exportable(cfg: KimiK25Config, experts, dense):
    """Refuse what llama.cpp's deepseek2 cannot hold, or a repack that cannot be exact, before writing."""
    t = cfg.text
    if experts not in EXPERT_TYPES:
        raise K25RefError(f"--experts must be one of {', '.join(EXPERT_TYPES)}, got {experts!r}")
    if dense not in DENSE_TYPES:
        raise K25RefError(f"--dense must be one of {', '.join(DENSE_TYPES)}, got {dense!r}")
    if t.attention_bias:
        raise ConfigError("attention_bias: llama.cpp's deepseek2 has no attention biases, so this checkpoint "
                          "cannot be exported faithfully")
    if experts == "q4_0" and t.has_moe:
        if cfg.quant is None:
            raise ConfigError("--experts q4_0 repacks INT4 codes, but this checkpoint's experts are not INT4 "
                              "(use bf16 or f32)")
        if cfg.quant.group_size % Q4_0_BLOCK:
            raise ConfigError(f"--experts q4_0 needs an INT4 group size that is a multiple of 32, "
                              f"got {cfg.quant.group_size}")


def default_experts(cfg: KimiK25Config):
    """q4_0 for INT4 experts (the released form, repacked), bf16 otherwise (the stored values)."""
    return "q4_0" if cfg.quant is not None else "bf16"


def export_gguf(folder, out, experts=None, dense="f32", overwrite=False, progress=False) -> ExportReport:
    """Write the text decoder of the checkpoint in `folder` to the GGUF file `out` (see the module doc).

    The file appears only when complete (written beside `out`, then renamed); `out` must end in .gguf, its folder
    must exist, and an existing `out` is an error unless overwrite=True."""
    gguf = _gguf()
    cfg = load_config(folder)
    experts = experts or default_experts(cfg)
    check_exportable(cfg, experts, dense)
    problem = output_problem(out, (".gguf",), overwrite)
    if problem:
        raise K25RefError(problem)
    ckpt = Checkpoint(folder, progress)
    validate(ckpt, cfg)
    report = ExportReport(path=str(out), notes=llama_cpp_notes(cfg))
    with atomic_path(out) as tmp:
        writer = gguf.GGUFWriter(tmp, gguf.MODEL_ARCH_NAMES[gguf.MODEL_ARCH.DEEPSEEK2])
        add_metadata(writer, cfg, os.path.basename(os.path.abspath(folder)))
        writer.add_file_type({"q4_0": gguf.LlamaFileType.MOSTLY_Q4_0, "bf16": gguf.LlamaFileType.MOSTLY_BF16,
                              "f32": gguf.LlamaFileType.ALL_F32}[experts if cfg.text.has_moe else "f32"])
        add_tokenizer(writer, cfg, folder)
        Exporter(ckpt, cfg, experts, dense, report).add_all(writer)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file(progress=progress)
        writer.close()
    return report


def format_report(r: ExportReport):
    """Lines for people: size, Q4_0 exactness, lossy tensors, llama.cpp notes."""
    lines = [f"wrote {r.path}: {r.tensors} tensors, {r.bytes / 2**20:.1f} MiB of tensor data"]
    if r.q4_0_groups:
        lines.append(f"Q4_0 experts: {r.q4_0_groups} groups repacked from INT4, "
                     f"{r.q4_0_groups_lossy} lose precision (bf16 scale not a float16 value)")
    for name, n in r.lossy_elements.items():
        lines.append(f"{name}: {n} values changed by the conversion")
    lines += [f"note: {n}" for n in r.notes]
    return lines
