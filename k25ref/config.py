"""Kimi K2.5 hyper-parameters: frozen dataclasses, read from a released `config.json` and validated.

The dimension glossary used in every shape comment of k25ref (docs/notation.md has the long form):

    T   new tokens in this call (1 when decoding)     S    positions attended (cache + new)
    D   model width            hidden_size   7168     V    vocabulary        vocab_size   163840
    H   attention heads        num_attention_heads 64 L    layers            num_hidden_layers 61
    Dn  no-rope q/k head dim   qk_nope_head_dim 128   Dr   rope q/k head dim qk_rope_head_dim 64
    Dv  value head dim         v_head_dim 128         Cq   query latent rank q_lora_rank 1536
    Ckv key/value latent rank  kv_lora_rank 512       E    routed experts    n_routed_experts 384
    A   experts per token      num_experts_per_tok 8  F    expert FFN width  moe_intermediate_size 2048
    Fd  dense FFN width        intermediate_size 18432  G  INT4 group size   group_size 32
    N   vision patches         P  patch size 14       Dvis vision width 1152

Defaults are the real model, so reading a class teaches the real numbers. `from_hf()` maps the hub's
key names (one table per class), ignores keys it does not use, and refuses impossible configs with a
ConfigError that names the field.
"""
from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, fields

from k25ref.errors import ConfigError
from k25ref.files import FileProblem, read_bytes


# ----------------------------------------------------------------------------
# field checks shared by every config class


def _check_types(obj, skip=()):
    """Every field must have its annotated type (bool is not an int here; an int is fine for a float)."""
    for f in fields(obj):
        if f.name not in skip:
            _check_one(type(obj).__name__, f.name, f.type, getattr(obj, f.name))


MAX_INT = 2**31 - 1          # no count, size or id of K2.5 comes near; larger ones only overflow arithmetic


def _finite(value):
    """A real number that is a finite float (huge ints overflow float(): they are not finite here)."""
    try:
        return not isinstance(value, bool) and isinstance(value, (int, float)) and math.isfinite(float(value))
    except OverflowError:
        return False


def _check_one(owner, name, kind, value):
    is_int = isinstance(value, int) and not isinstance(value, bool)
    if is_int and kind.startswith("int") and not -MAX_INT <= value <= MAX_INT:
        raise ConfigError(f"{owner}.{name}: {_short(value)} is outside [-2^31+1, 2^31-1]")
    is_num = _finite(value)
    ok = {"int": is_int, "float": is_num, "bool": isinstance(value, bool), "str": isinstance(value, str),
          "int | None": value is None or is_int, "float | None": value is None or is_num,
          "tuple": isinstance(value, tuple)}[kind]
    if not ok:
        raise ConfigError(f"{owner}.{name}: expected {kind}" + (" (finite)" if "float" in kind else "")
                          + f", got {_short(value)}")


def _short(value):
    """repr of a config value, cut to 60 characters (a 4000-digit integer is not a message)."""
    text = repr(value) if not isinstance(value, int) or abs(value) < 10**50 else f"an integer of {len(str(abs(value)))} digits"
    return text if len(text) <= 60 else text[:57] + "..."


def _require(cond, message):
    if not cond:
        raise ConfigError(message)


def _positive(obj, *names):
    for n in names:
        _require(getattr(obj, n) > 0, f"{type(obj).__name__}.{n} must be > 0, got {getattr(obj, n)!r}")


def _from_keys(cls, d, table, where):
    """Build `cls` from hub dict `d`: table maps field -> hub key; missing keys keep the class default."""
    if not isinstance(d, dict):
        raise ConfigError(f"{where}: expected a JSON object, got {type(d).__name__}")
    return _build(cls, {f: d[k] for f, k in table.items() if k in d and d[k] is not None}, where)


def _build(cls, kwargs, where):
    """cls(**kwargs), with any ConfigError prefixed by where it came from."""
    try:
        return cls(**kwargs)
    except ConfigError as e:
        raise ConfigError(f"{where}: {e}") from None


# ----------------------------------------------------------------------------
# RoPE / YaRN


@dataclass(frozen=True)
class RopeConfig:
    """Rotary embedding of the Dr rope dims, optionally YaRN-scaled [YaRN §3; DSV2 §2.1.3]."""
    theta: float = 50000.0                  # base                       (HF: rope_theta)
    type: str = "yarn"                      # "default" | "yarn"         (HF: rope_scaling.type / rope_type)
    factor: float = 64.0                    # context extension s        (HF: factor)
    original_max_position_embeddings: int = 4096  # L_orig               (HF: original_max_position_embeddings)
    beta_fast: float = 32.0                 # ramp bounds, in rotations  (HF: beta_fast, default 32)
    beta_slow: float = 1.0                  #                            (HF: beta_slow, default 1)
    mscale: float = 1.0                     # cos/sin scale numerator    (HF: mscale)
    mscale_all_dim: float = 1.0             # softmax-scale correction   (HF: mscale_all_dim)
    attention_factor: float | None = None   # explicit cos/sin scale     (HF: attention_factor)
    truncate: bool = True                   # floor/ceil the ramp bounds (HF: truncate)

    def __post_init__(self):
        _check_types(self)
        _require(self.type in ("default", "yarn"), f"RopeConfig.type: unsupported rope type {self.type!r}")
        _require(self.theta > 1, f"RopeConfig.theta (rope_theta) must be > 1 (frequencies theta^(-2i/d) must "
                 f"fall; log(theta) divides the YaRN ramp), got {self.theta!r}")
        if self.type == "yarn":
            _positive(self, "factor", "original_max_position_embeddings", "beta_fast", "beta_slow")
            for name in ("mscale", "mscale_all_dim"):   # YaRN's temperature 0.1 m ln(s) + 1 divides or squares
                m = 1.0 if self.factor <= 1 else 0.1 * getattr(self, name) * math.log(self.factor) + 1.0
                _require(m > 0, f"RopeConfig.{name}={getattr(self, name)!r} with factor={self.factor!r} gives "
                         f"YaRN temperature 0.1*{name}*ln(factor)+1 = {m:.4g}, which must be > 0")
            _require(self.attention_factor is None or self.attention_factor > 0,
                     f"RopeConfig.attention_factor must be > 0, got {self.attention_factor!r}")


def _rope_from_hf(text):
    """Old form `rope_scaling: {type: yarn, ...}` or new form `rope_parameters: {rope_type, rope_theta, ...}`."""
    params = text.get("rope_parameters") or text.get("rope_scaling") or {}
    if not isinstance(params, dict):
        raise ConfigError(f"text_config.rope_scaling: expected an object or null, got {params!r}")
    merged = dict(params)
    merged.setdefault("rope_theta", text.get("rope_theta", 10000.0))
    rope_type = merged.get("rope_type", merged.get("type", "default"))
    merged["type"] = rope_type
    if rope_type == "default":
        return _from_keys(RopeConfig, {"rope_theta": merged["rope_theta"], "type": "default"},
                          {"theta": "rope_theta", "type": "type"}, "text_config.rope")
    merged.setdefault("original_max_position_embeddings", text.get("max_position_embeddings"))
    longest, original = text.get("max_position_embeddings", 0), merged["original_max_position_embeddings"]
    if merged.get("factor") is None and original:                                    # transformers' fallback
        _require(all(type(v) is int and 0 < v <= MAX_INT for v in (longest, original)),
                 f"text_config: rope_scaling.factor is absent, and max_position_embeddings={_short(longest)} / "
                 f"original_max_position_embeddings={_short(original)} are not both integers in [1, 2^31-1]")
        merged["factor"] = longest / original
    # transformers leaves mscale/mscale_all_dim unset when absent; 0 means "not given" below.
    merged.setdefault("mscale", 0.0)
    merged.setdefault("mscale_all_dim", 0.0)
    table = {"theta": "rope_theta", "type": "type", "factor": "factor",
             "original_max_position_embeddings": "original_max_position_embeddings",
             "beta_fast": "beta_fast", "beta_slow": "beta_slow", "mscale": "mscale",
             "mscale_all_dim": "mscale_all_dim", "attention_factor": "attention_factor", "truncate": "truncate"}
    return _from_keys(RopeConfig, merged, table, "text_config.rope_scaling")


# ----------------------------------------------------------------------------
# INT4 quantization of the routed experts


@dataclass(frozen=True)
class QuantConfig:
    """compressed-tensors `pack-quantized`: symmetric INT4, one bf16 scale per G inputs [CT pack_quantized]."""
    num_bits: int = 4                       #                           (HF: weights.num_bits)
    group_size: int = 32                    # G                         (HF: weights.group_size)

    def __post_init__(self):
        _check_types(self)
        _require(self.num_bits == 4, f"QuantConfig.num_bits: only 4-bit packing is supported, got {self.num_bits}")
        _require(self.group_size > 0 and self.group_size % 8 == 0,
                 f"QuantConfig.group_size must be a positive multiple of 8, got {self.group_size}")


def _quant_from_hf(q):
    """Accept exactly the K2.5 scheme; anything else is an explicit error, never a silent misread."""
    if not isinstance(q, dict):
        raise ConfigError(f"quantization_config: expected an object, got {q!r}")
    method, fmt = q.get("quant_method"), q.get("format")
    _require(method == "compressed-tensors", f"quantization_config.quant_method: unsupported {method!r}")
    _require(fmt == "pack-quantized", f"quantization_config.format: unsupported {fmt!r} (need 'pack-quantized')")
    groups = q.get("config_groups")
    _require(isinstance(groups, dict) and len(groups) == 1,
             "quantization_config.config_groups: expected exactly one group")
    w = next(iter(groups.values())).get("weights") if isinstance(next(iter(groups.values())), dict) else None
    _require(isinstance(w, dict), "quantization_config.config_groups.*.weights: missing")
    _require(w.get("type", "int") == "int", f"quantization_config weights.type: unsupported {w.get('type')!r}")
    _require(w.get("strategy", "group") == "group",
             f"quantization_config weights.strategy: unsupported {w.get('strategy')!r}")
    _require(w.get("symmetric", True) is True, "quantization_config weights.symmetric: only symmetric is supported")
    return _from_keys(QuantConfig, w, {"num_bits": "num_bits", "group_size": "group_size"},
                      "quantization_config.weights")


# ----------------------------------------------------------------------------
# text decoder


@dataclass(frozen=True)
class TextConfig:
    """The DeepSeek-V3-style decoder of K2.5: MLA attention, 1 dense layer, then DeepSeekMoE [DSV3 §2]."""
    vocab_size: int = 163840                # V
    hidden_size: int = 7168                 # D
    intermediate_size: int = 18432          # Fd   dense SwiGLU width (first_k_dense_replace layers)
    moe_intermediate_size: int = 2048       # F    routed/shared expert width
    num_hidden_layers: int = 61             # L
    num_attention_heads: int = 64           # H
    q_lora_rank: int | None = 1536          # Cq   (None: a plain q_proj, no query latent)
    kv_lora_rank: int = 512                 # Ckv
    qk_nope_head_dim: int = 128             # Dn
    qk_rope_head_dim: int = 64              # Dr
    v_head_dim: int = 128                   # Dv
    n_routed_experts: int = 384             # E
    num_experts_per_tok: int = 8            # A
    n_shared_experts: int = 1               # shared expert width = F * n_shared_experts
    n_group: int = 1                        # expert groups for group-limited routing
    topk_group: int = 1                     # groups a token may pick from
    norm_topk_prob: bool = True             # renormalise the A chosen affinities
    routed_scaling_factor: float = 2.827    # multiplies the routing weights
    first_k_dense_replace: int = 1          # layers [0, k) are dense
    rms_norm_eps: float = 1e-5              # input/post-attention/final norms (q/kv latent norms: 1e-6)
    max_position_embeddings: int = 262144
    attention_bias: bool = False            # bias on q_a_proj (or q_proj), kv_a_proj_with_mqa, o_proj
    tie_word_embeddings: bool = False
    rope: RopeConfig = RopeConfig()

    def __post_init__(self):
        _check_types(self, skip=("rope",))
        _positive(self, "vocab_size", "hidden_size", "intermediate_size", "moe_intermediate_size",
                  "num_hidden_layers", "num_attention_heads", "kv_lora_rank", "qk_nope_head_dim",
                  "qk_rope_head_dim", "v_head_dim", "n_routed_experts", "num_experts_per_tok",
                  "n_shared_experts", "n_group", "topk_group", "rms_norm_eps")
        _require(self.q_lora_rank is None or self.q_lora_rank > 0, "TextConfig.q_lora_rank must be > 0 or null")
        _require(self.qk_rope_head_dim % 2 == 0, "TextConfig.qk_rope_head_dim must be even (RoPE rotates pairs)")
        _require(self.num_hidden_layers * self.n_routed_experts <= 2**17,
                 "TextConfig: num_hidden_layers x n_routed_experts exceeds the 2^17 expert matrices k25ref supports")
        _require(0 <= self.first_k_dense_replace <= self.num_hidden_layers,
                 "TextConfig.first_k_dense_replace must be in [0, num_hidden_layers]")
        _check_derived(self)
        if self.has_moe:
            E, g = self.n_routed_experts, self.n_group
            _require(E % g == 0, f"TextConfig.n_group={g} must divide n_routed_experts={E}")
            _require(E // g >= 2, "TextConfig: each expert group needs >= 2 experts (groups are scored by their top 2)")
            _require(self.topk_group <= g, f"TextConfig.topk_group={self.topk_group} exceeds n_group={g}")
            _require(self.num_experts_per_tok <= self.topk_group * (E // g),
                     f"TextConfig.num_experts_per_tok={self.num_experts_per_tok} exceeds the "
                     f"{self.topk_group * (E // g)} experts the chosen groups hold")

    @property
    def has_moe(self):
        return self.first_k_dense_replace < self.num_hidden_layers

    @property
    def qk_head_dim(self):  # Dn + Dr
        return self.qk_nope_head_dim + self.qk_rope_head_dim

    def is_moe_layer(self, i):
        return i >= self.first_k_dense_replace


def _check_derived(t):
    """Every quantity computed from the config -- RoPE frequencies and angles over every position, the YaRN
    cos/sin scale and correction range, the softmax scale -- must be a finite positive float32, or the config
    is refused naming the quantity and the fields it comes from (the field checks cannot see combinations)."""
    import numpy as np
    from k25ref import rope
    r = t.rope
    inv_freq = lambda: rope.inv_frequencies(r, t.qk_rope_head_dim)[0]        # noqa: E731  (may raise: checked below)
    derived = {
        "the RoPE inverse frequencies": inv_freq,
        "the RoPE angle at the last position": lambda: np.float32(t.max_position_embeddings - 1) * inv_freq(),
        "the cos/sin scale (attention_factor)": lambda: np.float32(rope.attention_factor(r)),
        "the softmax scale": lambda: np.float32(rope.softmax_scale(r, t.qk_head_dim)),
    }
    for what, compute in derived.items():
        try:
            with np.errstate(all="ignore"):
                value = np.asarray(compute())
            ok = np.isfinite(value).all() and (what.startswith("the RoPE angle") or (value > 0).all())
        except (OverflowError, ZeroDivisionError, ValueError):    # float ** 2 overflows, 0.0 ** -0.5 divides
            ok = False
        _require(ok, f"TextConfig: {what} is not a finite positive float32 for rope_theta={r.theta!r}, "
                 f"factor={r.factor!r}, beta_fast/beta_slow={r.beta_fast!r}/{r.beta_slow!r}, "
                 f"mscale/mscale_all_dim={r.mscale!r}/{r.mscale_all_dim!r}, max_position_embeddings="
                 f"{t.max_position_embeddings}, head dims {t.qk_nope_head_dim}+{t.qk_rope_head_dim}")


TEXT_KEYS = {f: f for f in (
    "vocab_size", "hidden_size", "intermediate_size", "moe_intermediate_size", "num_hidden_layers",
    "num_attention_heads", "q_lora_rank", "kv_lora_rank", "qk_nope_head_dim", "qk_rope_head_dim", "v_head_dim",
    "n_routed_experts", "num_experts_per_tok", "n_shared_experts", "n_group", "topk_group", "norm_topk_prob",
    "routed_scaling_factor", "first_k_dense_replace", "rms_norm_eps", "max_position_embeddings",
    "attention_bias", "tie_word_embeddings")}


def _text_from_hf(t):
    if not isinstance(t, dict):
        raise ConfigError(f"text_config: expected a JSON object, got {type(t).__name__}")
    mt = t.get("model_type", "deepseek_v3")
    _require(mt in ("kimi_k2", "deepseek_v3"), f"text_config.model_type: unsupported {mt!r}")
    _require(t.get("hidden_act", "silu") == "silu", f"text_config.hidden_act: only 'silu', got {t.get('hidden_act')!r}")
    _require(t.get("scoring_func", "sigmoid") == "sigmoid",
             f"text_config.scoring_func: only 'sigmoid', got {t.get('scoring_func')!r}")
    _require(t.get("topk_method", "noaux_tc") == "noaux_tc",
             f"text_config.topk_method: only 'noaux_tc', got {t.get('topk_method')!r}")
    _require(t.get("moe_layer_freq", 1) == 1, "text_config.moe_layer_freq: only 1 is supported")
    nkv = t.get("num_key_value_heads", t.get("num_attention_heads"))
    _require(nkv == t.get("num_attention_heads", nkv),
             "text_config.num_key_value_heads must equal num_attention_heads (MLA has no KV groups)")
    kw = {f: t[k] for f, k in TEXT_KEYS.items() if k in t and (t[k] is not None or f == "q_lora_rank")}
    return _build(TextConfig, dict(rope=_rope_from_hf(t), **kw), "text_config")


# ----------------------------------------------------------------------------
# MoonViT vision tower and projector


@dataclass(frozen=True)
class VisionConfig:
    """MoonViT-3D tower + patch-merger projector [Kimi-VL §2; K2.5 §MoonViT-3D]."""
    patch_size: int = 14                    # P
    init_pos_emb_height: int = 64           # learned 2-D position table rows
    init_pos_emb_width: int = 64            # learned 2-D position table columns
    init_pos_emb_time: int = 4              # frames per video chunk (temporal sin/cos table)
    hidden_size: int = 1152                 # Dvis   (hub: vt_hidden_size)
    num_hidden_layers: int = 27             #        (hub: vt_num_hidden_layers)
    num_attention_heads: int = 16           #        (hub: vt_num_attention_heads)
    intermediate_size: int = 4304           #        (hub: vt_intermediate_size)
    merge_kernel_size: tuple = (2, 2)       # 2x2 spatial merge before the projector
    rope_theta: float = 10000.0             # 2-D axial RoPE base
    layer_norm_eps: float = 1e-5            # tower LayerNorms (torch default)
    projector_ln_eps: float = 1e-5          #        (hub: projector_ln_eps)

    def __post_init__(self):
        _check_types(self)
        _positive(self, "patch_size", "init_pos_emb_height", "init_pos_emb_width", "init_pos_emb_time",
                  "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size")
        _require(self.hidden_size % self.num_attention_heads == 0,
                 f"VisionConfig.num_attention_heads={self.num_attention_heads} must divide "
                 f"hidden_size={self.hidden_size}")
        _require(self.head_dim % 4 == 0, f"VisionConfig head_dim={self.head_dim} must be a multiple of 4 (2-D RoPE)")
        _require(self.hidden_size % 2 == 0, "VisionConfig.hidden_size must be even (temporal sin/cos)")
        _require(tuple(self.merge_kernel_size) == (2, 2), "VisionConfig.merge_kernel_size: only [2, 2] is supported")

    @property
    def head_dim(self):
        return self.hidden_size // self.num_attention_heads


VISION_KEYS = {  # field -> (hub key, transformers-native key)
    "patch_size": ("patch_size", "patch_size"),
    "init_pos_emb_height": ("init_pos_emb_height", "pos_emb_height"),
    "init_pos_emb_width": ("init_pos_emb_width", "pos_emb_width"),
    "init_pos_emb_time": ("init_pos_emb_time", "pos_emb_time"),
    "hidden_size": ("vt_hidden_size", "hidden_size"),
    "num_hidden_layers": ("vt_num_hidden_layers", "num_hidden_layers"),
    "num_attention_heads": ("vt_num_attention_heads", "num_attention_heads"),
    "intermediate_size": ("vt_intermediate_size", "intermediate_size"),
    "merge_kernel_size": ("merge_kernel_size", "merge_kernel_size"),
    "projector_ln_eps": ("projector_ln_eps", "projector_ln_eps"),
}


def _vision_from_hf(v, top):
    """Hub `vt_*` keys win; transformers-native keys are the fallback."""
    if not isinstance(v, dict):
        raise ConfigError(f"vision_config: expected a JSON object, got {type(v).__name__}")
    act = v.get("hidden_act", "gelu_pytorch_tanh")
    _require(act in ("gelu_pytorch_tanh", "gelu_tanh"), f"vision_config.hidden_act: unsupported {act!r}")
    kw = {}
    for f, (hub, native) in VISION_KEYS.items():
        for key in (hub, native):
            if key in v and v[key] is not None:
                kw[f] = tuple(v[key]) if f == "merge_kernel_size" and isinstance(v[key], list) else v[key]
                break
    if "projector_ln_eps" not in kw and "projection_layer_norm_eps" in top:
        kw["projector_ln_eps"] = top["projection_layer_norm_eps"]
    return _build(VisionConfig, kw, "vision_config")


# ----------------------------------------------------------------------------
# the whole model


@dataclass(frozen=True)
class KimiK25Config:
    """Kimi K2.5 = text decoder + (optional) MoonViT tower and projector + INT4 routed experts."""
    text: TextConfig = TextConfig()
    vision: VisionConfig | None = VisionConfig()
    quant: QuantConfig | None = QuantConfig()
    media_placeholder_token_id: int = 163605  # <|media_pad|>   (hub key; transformers: image_token_id)
    bos_token_id: int = 163584
    eos_token_id: int = 163585

    def __post_init__(self):
        for name in ("media_placeholder_token_id", "bos_token_id", "eos_token_id"):
            _check_one("KimiK25Config", name, "int", getattr(self, name))
        if self.quant is not None and self.text.has_moe:
            G, D, F = self.quant.group_size, self.text.hidden_size, self.text.moe_intermediate_size
            _require(D % G == 0 and F % G == 0,
                     f"quantization group_size={G} must divide hidden_size={D} and moe_intermediate_size={F}")


def from_hf(d):
    """A released `config.json` dict -> KimiK25Config. A bare DeepSeek-V3 text config is accepted too."""
    if not isinstance(d, dict):
        raise ConfigError(f"config.json: expected a JSON object, got {type(d).__name__}")
    if d.get("model_type") == "kimi_k25":
        text_d = d.get("text_config")
        if text_d is None:
            raise ConfigError("config.json: model_type kimi_k25 needs a text_config")
    elif d.get("model_type") in ("kimi_k2", "deepseek_v3"):
        text_d = d
    else:
        raise ConfigError(f"config.json: unsupported model_type {d.get('model_type')!r}")
    text = _text_from_hf(text_d)
    vision = _vision_from_hf(d["vision_config"], d) if d.get("vision_config") is not None else None
    q = d.get("quantization_config", text_d.get("quantization_config") if isinstance(text_d, dict) else None)
    quant = _quant_from_hf(q) if q is not None else None
    top = {"media_placeholder_token_id": d.get("media_placeholder_token_id", d.get("image_token_id", 163605)),
           "bos_token_id": d.get("bos_token_id", text_d.get("bos_token_id", 163584)),
           "eos_token_id": d.get("eos_token_id", text_d.get("eos_token_id", 163585))}
    if isinstance(top["eos_token_id"], list) and top["eos_token_id"]:
        top["eos_token_id"] = top["eos_token_id"][0]
    return _build(KimiK25Config, dict(text=text, vision=vision, quant=quant, **top), "config.json")


def _not_json(name):
    """NaN, Infinity and -Infinity are not JSON numbers; Python's json would accept them."""
    raise ValueError(f"{name} is not a JSON number")


def load_config(path):
    """Read and validate `config.json` from a checkpoint folder (or the file itself)."""
    p = os.path.join(path, "config.json") if os.path.isdir(path) else path
    try:
        raw = read_bytes(p, "config")
    except FileProblem as e:
        raise ConfigError(f"{p}: {e.detail}") from None
    try:
        d = json.loads(raw.decode("utf-8"), parse_constant=_not_json)
    except (UnicodeDecodeError, ValueError, RecursionError) as e:   # ValueError: bad JSON, 5000-digit ints
        raise ConfigError(f"{p}: not valid UTF-8 JSON ({str(e)[:200]})") from None
    try:
        return from_hf(d)
    except ConfigError as e:
        raise ConfigError(f"{p}: {e}") from None
