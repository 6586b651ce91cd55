"""Write small checkpoints in exactly the released layout: hub config.json, original tensor names, BF16
tensors, INT4 routed experts (packed int32 + bf16 scales + weight_shape), float32 correction bias,
`model-000NN-of-000KK.safetensors` shards and `model.safetensors.index.json`.

Presets are hub-format config dicts. Random weights are scaled so activations stay O(1) through the layers,
and norm weights and biases are never the trivial ones/zeros, so a forgotten weight fails a test.
"""
import base64
import json
import os
import shutil
import struct

import numpy as np

from k25ref.checkpoint import DTYPES, f32_to_bf16
from k25ref.config import from_hf
from k25ref.errors import K25RefError
from k25ref.files import atomic_open, atomic_path
from k25ref.int4 import quantize
from k25ref.progress import bar
from k25ref.weights import TEXT, expected_tensors

N_SPECIAL = 256                     # reserved special ids after the base vocabulary
ASSETS = os.path.join(os.path.dirname(__file__), "assets")


def _quant_config(group_size=32):
    """The release's quantization_config (only routed experts are INT4)."""
    return {"quant_method": "compressed-tensors", "format": "pack-quantized", "quantization_status": "compressed",
            "kv_cache_scheme": None,
            "config_groups": {"group_0": {"targets": ["Linear"], "input_activations": None, "output_activations": None,
                                          "weights": {"type": "int", "num_bits": 4, "group_size": group_size,
                                                      "strategy": "group", "symmetric": True, "dynamic": False,
                                                      "actorder": None, "block_structure": None,
                                                      "observer": "minmax", "observer_kwargs": {}}}},
            "ignore": ["lm_head", "re:.*self_attn.*", "re:.*shared_experts.*",
                       "re:.*mlp\\.(gate|up|gate_up|down)_proj.*"]}


def _hub_config(text, vision, vocab, quant=True):
    """Assemble a hub-layout config.json; special ids sit right after the base vocabulary like the release."""
    base = vocab - N_SPECIAL
    text = {"model_type": "kimi_k2", "architectures": ["DeepseekV3ForCausalLM"], "vocab_size": vocab,
            "hidden_act": "silu", "scoring_func": "sigmoid", "topk_method": "noaux_tc", "moe_layer_freq": 1,
            "num_nextn_predict_layers": 0, "attention_dropout": 0.0, "tie_word_embeddings": False,
            "bos_token_id": base, "eos_token_id": base + 1, "pad_token_id": vocab - 1, **text}
    text.setdefault("num_key_value_heads", text["num_attention_heads"])
    if quant:
        text["quantization_config"] = _quant_config()
    d = {"architectures": ["KimiK25ForConditionalGeneration"], "model_type": "kimi_k25",
         "bos_token_id": base, "eos_token_id": base + 1, "pad_token_id": vocab - 1,
         "media_placeholder_token_id": base + 21, "tie_word_embeddings": False, "use_unified_vision_chunk": True,
         "video_placeholder": "<|kimi_k25_video_placeholder|>", "text_config": text}
    if vision is not None:
        d["vision_config"] = {"patch_size": 14, "merge_kernel_size": [2, 2], "merge_type": "sd2_tpool",
                              "pos_emb_type": "divided_fixed", "video_attn_type": "spatial_temporal",
                              "mm_projector_type": "patchmerger", "projector_hidden_act": "gelu",
                              "projector_ln_eps": 1e-5, "text_hidden_size": text["hidden_size"], **vision}
        d["vision_config"]["mm_hidden_size"] = vision["vt_hidden_size"]
    return d


YARN = {"type": "yarn", "factor": 4.0, "original_max_position_embeddings": 32, "beta_fast": 32.0, "beta_slow": 1.0,
        "mscale": 1.0, "mscale_all_dim": 1.0}
TINY_TEXT = dict(hidden_size=64, intermediate_size=96, moe_intermediate_size=32, num_hidden_layers=3,
                 num_attention_heads=4, q_lora_rank=32, kv_lora_rank=32, qk_nope_head_dim=16, qk_rope_head_dim=8,
                 v_head_dim=16, n_routed_experts=16, num_experts_per_tok=4, n_shared_experts=1, n_group=4,
                 topk_group=2, norm_topk_prob=True, routed_scaling_factor=2.5, first_k_dense_replace=1,
                 rms_norm_eps=1e-5, max_position_embeddings=256, rope_theta=50000.0, rope_scaling=YARN,
                 attention_bias=False)
TINY_VISION = dict(init_pos_emb_height=8, init_pos_emb_width=8, init_pos_emb_time=4, vt_hidden_size=32,
                   vt_num_hidden_layers=2, vt_num_attention_heads=2, vt_intermediate_size=64)
FULL_TEXT = dict(hidden_size=7168, intermediate_size=18432, moe_intermediate_size=2048, num_hidden_layers=61,
                 num_attention_heads=64, q_lora_rank=1536, kv_lora_rank=512, qk_nope_head_dim=128,
                 qk_rope_head_dim=64, v_head_dim=128, n_routed_experts=384, num_experts_per_tok=8,
                 n_shared_experts=1, n_group=1, topk_group=1, norm_topk_prob=True, routed_scaling_factor=2.827,
                 first_k_dense_replace=1, rms_norm_eps=1e-5, max_position_embeddings=262144, rope_theta=50000.0,
                 rope_scaling={"type": "yarn", "factor": 64.0, "original_max_position_embeddings": 4096,
                               "beta_fast": 32.0, "beta_slow": 1.0, "mscale": 1.0, "mscale_all_dim": 1.0},
                 attention_bias=False, aux_loss_alpha=0.001, seq_aux=True, ep_size=1, initializer_range=0.02)
FULL_VISION = dict(init_pos_emb_height=64, init_pos_emb_width=64, init_pos_emb_time=4, vt_hidden_size=1152,
                   vt_num_hidden_layers=27, vt_num_attention_heads=16, vt_intermediate_size=4304)

PRESETS = {
    # the default conformance shape: yarn, groups 4 / pick 2, one dense layer, INT4 experts, a vision tower
    "tiny": _hub_config(TINY_TEXT, TINY_VISION, 4096),
    # plain rope, no query latent, two dense layers, two shared experts, unnormalised weights, biases
    "tiny-plain": _hub_config({**TINY_TEXT, "rope_scaling": None, "q_lora_rank": None, "num_hidden_layers": 4,
                               "first_k_dense_replace": 2, "n_shared_experts": 2, "norm_topk_prob": False,
                               "n_group": 1, "topk_group": 1, "attention_bias": True, "routed_scaling_factor": 1.0},
                              None, 512),
    # many groups, few picked; yarn without mscale keys (transformers' attention-factor fallback)
    "tiny-groups": _hub_config({**TINY_TEXT, "n_routed_experts": 32, "num_experts_per_tok": 6, "n_group": 8,
                                "topk_group": 3, "num_hidden_layers": 2,
                                "rope_scaling": {"type": "yarn", "factor": 8.0, "original_max_position_embeddings": 16}},
                               None, 1024),
    # long prompts without the real weights: K2.5's RoPE/YaRN (head dim 64, theta 5e4, factor 64 over 4096) and
    # 262144 positions at a small width (docs/long-context.md)
    "k25-context": _hub_config({**TINY_TEXT, "hidden_size": 256, "intermediate_size": 512, "moe_intermediate_size": 128,
                                "num_hidden_layers": 2, "num_attention_heads": 16, "q_lora_rank": 128,
                                "kv_lora_rank": 128, "qk_nope_head_dim": 32, "v_head_dim": 32,
                                **{k: FULL_TEXT[k] for k in ("qk_rope_head_dim", "rope_theta", "rope_scaling",
                                                             "max_position_embeddings")}},
                               TINY_VISION, 4096),
    # the real Kimi K2.5 (for index-only inspection and the full-width synthetic maker)
    "full": _hub_config(FULL_TEXT, FULL_VISION, 163840),
}


def preset(name):
    """A fresh copy of a preset's hub config dict."""
    if name not in PRESETS:
        raise KeyError(f"unknown preset {name!r}; choose from {sorted(PRESETS)}")
    return json.loads(json.dumps(PRESETS[name]))


# ----------------------------------------------------------------------------
# random weights in stored form


def _stored_tensors(cfg, rng, scale_dtype="BF16"):
    """Yield (name, safetensors dtype, stored ndarray) for every expected tensor, INT4 triplets included, their
    scales stored as `scale_dtype` (K2.5: BF16; F16 and F32 test that dequantization follows the dtype)."""
    expected = expected_tensors(cfg)
    for name, (dtypes, shape) in expected.items():
        if name.endswith(("weight_scale", "weight_shape")):
            continue                                   # written with their weight_packed
        if name.endswith("weight_packed"):
            prefix = name[: -len("weight_packed")]
            O, I = shape[0], expected[f"{prefix}weight_scale"][1][1] * cfg.quant.group_size
            w = quantize(rng.standard_normal((O, I), dtype=np.float32) / np.float32(np.sqrt(I)), cfg.quant.group_size)
            yield name, "I32", w.packed
            yield f"{prefix}weight_scale", scale_dtype, stored_scales(w.scale, scale_dtype, rng)
            yield f"{prefix}weight_shape", "I32", np.array([O, I], np.int32)
        elif "F32" in dtypes and len(dtypes) == 1:       # e_score_correction_bias: float32 in the release
            yield name, "F32", (0.1 * rng.standard_normal(shape)).astype(np.float32)
        else:
            yield name, "BF16", f32_to_bf16(_random_float(name, shape, rng))


def stored_scales(scale, dtype, rng):  # (O, I/G) bf16-valued float32 -> stored array in `dtype`
    """BF16 as quantized; F16 and F32 nudged off the bf16 grid by up to 1/256, so that their products round
    differently from bf16 ones."""
    if dtype == "BF16":
        return f32_to_bf16(scale)
    nudged = scale * (1 + rng.uniform(0, 1 / 256, scale.shape)).astype(np.float32)
    return nudged.astype(np.float16 if dtype == "F16" else np.float32)


def init_scale(name, shape):  # -> (std, mean) of a random floating weight
    """Norms near 1, biases and position tables near 0 (never exactly), embeddings O(1), matrices 1/sqrt(fan_in)."""
    if name.endswith(("layernorm.weight", "norm.weight", "norm0.weight", "norm1.weight", "pre_norm.weight")):
        return 0.2, 1.0
    if name.endswith(".bias") or name.endswith("pos_emb.weight"):
        return 0.1, 0.0
    if name == f"{TEXT}embed_tokens.weight":
        return 1.0, 0.0
    return 1 / np.sqrt(np.prod(shape[1:])), 0.0


def _random_float(name, shape, rng):
    """init_scale's distribution. Norms, biases and position tables are drawn in float64, embeddings and matrices
    in float32 (that split fixes the byte stream the committed goldens were written from)."""
    std, mean = init_scale(name, shape)
    if name.endswith((".bias", "pos_emb.weight")) or mean:
        return (mean + std * rng.standard_normal(shape)).astype(np.float32)
    return rng.standard_normal(shape, dtype=np.float32) / np.float32(1 / std)


# ----------------------------------------------------------------------------
# files


def write_safetensors(path, tensors):
    """tensors: list of (name, dtype name, ndarray) -> one safetensors file (header padded to 8 bytes)."""
    write_shard(path, [(name, dtype, arr.shape, [arr]) for name, dtype, arr in tensors])


def write_shard(path, entries):
    """entries: (name, dtype name, shape, chunks) with chunks an iterable of arrays whose bytes, in order, are
    the tensor's data (little-endian). Lets large tensors be written block by block."""
    header, offset = {}, 0
    for name, dtype, shape, _ in entries:
        nbytes = int(np.prod(shape, dtype=np.int64)) * DTYPES[dtype][1]
        header[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    with atomic_open(path, "wb") as f:
        f.write(struct.pack("<Q", len(raw)))
        f.write(raw)
        for name, _, _, chunks in entries:
            written = sum(f.write(np.ascontiguousarray(c).astype(c.dtype.newbyteorder("<"), copy=False).data)
                          for c in chunks)
            assert written == header[name]["data_offsets"][1] - header[name]["data_offsets"][0], name


def shard_of(name, cfg, shards):
    """The release's scheme: layers spread over the first shards; embeddings/norm/lm_head, projector and
    vision tower in the last ones (fewer shards merge the tail)."""
    tail = min(shards - 1, 3 if cfg.vision is not None else 1)
    body = shards - tail
    if name.startswith(f"{TEXT}layers."):
        i = int(name.split(".")[3])
        return i * body // cfg.text.num_hidden_layers
    order = ["text", "mm_projector", "vision_tower"]
    part = next((k for k in order[1:] if name.startswith(k)), "text")
    return body + min(order.index(part), tail - 1) if tail else 0


def prepare_folder(out, force):
    """Create `out`, or accept it empty; a non-empty folder only with `force` (its files are replaced one by
    one, atomically: a symlink among them is replaced, not written through). Errors are K25RefError."""
    if os.path.lexists(out) and not os.path.isdir(out):
        raise K25RefError(f"{out}: exists and is not a folder")
    try:
        os.makedirs(out, exist_ok=True)
        entries = os.listdir(out)
    except OSError as e:
        raise K25RefError(f"{out}: cannot create the folder ({e.strerror or e})") from None
    if entries and not force:
        raise K25RefError(f"{out}: folder is not empty ({len(entries)} entries, e.g. {sorted(entries)[0]!r}); "
                          "pass --force (force=True) to write into it")


def max_shards(cfg):
    """The most shards `shard_of` fills: one per layer, plus embeddings/norm/head and, with a vision tower, the
    projector and the tower (more would leave shards empty)."""
    return cfg.text.num_hidden_layers + (3 if cfg.vision is not None else 1)


def _check_shards(cfg, shards):
    if not 1 <= shards <= max_shards(cfg):
        raise K25RefError(f"--shards {shards}: this checkpoint fills 1 to {max_shards(cfg)} (one per layer, "
                          f"{cfg.text.num_hidden_layers}, plus {max_shards(cfg) - cfg.text.num_hidden_layers} "
                          "for the tensors outside the layers)")


def make_tiny(out, preset_name="tiny", seed=0, shards=2, config=None, tokenizer=True, scale_dtype="BF16",
              force=True):
    """Write a random checkpoint of `preset_name` (or of the hub dict `config`) into folder `out`; INT4 scales
    stored as `scale_dtype`. Every file is written atomically; force=False refuses a non-empty folder (the
    CLI's default; the library keeps its old contract of writing over a checkpoint folder)."""
    hub = config if config is not None else preset(preset_name)
    cfg = from_hf(hub)
    _check_shards(cfg, shards)
    prepare_folder(out, force)
    rng = np.random.default_rng(seed)
    groups = [[] for _ in range(shards)]
    for name, dtype, arr in _stored_tensors(cfg, rng, scale_dtype):
        groups[shard_of(name, cfg, shards)].append((name, dtype, arr))
    weight_map, total = {}, 0
    for k, group in enumerate(groups):
        file = f"model-{k + 1:05d}-of-{shards:05d}.safetensors"
        write_safetensors(os.path.join(out, file), group)
        for name, _, arr in group:
            weight_map[name] = file
            total += arr.nbytes
    _write_index_and_config(out, total, weight_map, hub)
    if tokenizer:
        copy_tokenizer(out, cfg.text.vocab_size)
    return out


def _write_index_and_config(out, total, weight_map, hub):
    with atomic_open(os.path.join(out, "model.safetensors.index.json")) as f:
        json.dump({"metadata": {"total_size": total}, "weight_map": weight_map}, f, indent=2)
    with atomic_open(os.path.join(out, "config.json")) as f:
        json.dump(hub, f, indent=2)


def copy_tokenizer(out, vocab):
    """Ship the project's trained tokenizer with the checkpoint, fitted to its vocabulary: `vocab - 256` BPE
    ranks, then the 256 special ids, as the release lays them out (so `generate` and `chat` run on every preset).

    The trained size (3 840 ranks) is copied as is. A smaller vocabulary keeps the first ranks: the 256 single
    bytes and the earliest merges are still a complete byte-level BPE. A larger one (K2.5's 163 840) appends
    filler tokens that UTF-8 text never produces (they begin with byte 0xF8), so every id exists and text
    encodes exactly as under the trained ranks. Under 512 ids there is no room for the bytes: no tokenizer.
    """
    src = os.path.join(ASSETS, "tokenizer")
    with open(os.path.join(src, "tiktoken.model")) as f:
        ranks = [line for line in f.read().splitlines() if line.strip()]        # "base64 rank", rank order
    n = vocab - N_SPECIAL
    if n < 256:
        return
    if n == len(ranks):
        for name in os.listdir(src):
            with atomic_path(os.path.join(out, name)) as tmp:
                shutil.copyfile(os.path.join(src, name), tmp)
        return
    filler = (base64.b64encode(b"\xf8" + i.to_bytes(3, "big")).decode() for i in range(len(ranks), n))
    with atomic_open(os.path.join(out, "tiktoken.model")) as f:
        f.write("\n".join(ranks[:n] + [f"{token} {i}" for i, token in zip(range(len(ranks), n), filler)]) + "\n")
    with open(os.path.join(src, "tokenizer_config.json")) as f:
        config = json.load(f)
    config["added_tokens_decoder"] = {str(int(k) - len(ranks) + n): v for k, v in config["added_tokens_decoder"].items()}
    with atomic_open(os.path.join(out, "tokenizer_config.json")) as f:
        json.dump(config, f, indent=2)


# ----------------------------------------------------------------------------
# full-width synthetic checkpoints: the real K2.5 tensor shapes, fewer layers and experts, written fast

BLOCK = 1 << 22                       # elements per written block (8 MiB of bf16)


def full_width_config(layers=61, experts=384):
    """The real K2.5 config.json with `layers` text layers (the first dense) and `experts` routed experts."""
    hub = preset("full")
    hub["text_config"].update(num_hidden_layers=layers, n_routed_experts=experts)
    return hub


class _Pools:
    """Blocks of bf16 values ~ N(offset, scale^2), one per distinct (scale, offset), made once; big tensors are
    tiled from them at random starts, so writing runs at disk speed (seeded, deterministic)."""

    def __init__(self, rng):
        self.rng, self.normal, self.made = rng, rng.standard_normal(2 * BLOCK, dtype=np.float32), {}

    def bf16(self, n, scale, offset=0.0):
        key = (float(scale), float(offset))
        if key not in self.made:
            self.made[key] = f32_to_bf16(self.normal * np.float32(scale) + np.float32(offset))
        pool = self.made[key]
        for start in range(0, n, BLOCK):
            a = int(self.rng.integers(0, BLOCK))
            yield pool[a:a + min(BLOCK, n - start)]

    def words(self, n):
        """n random int32 words: every bit pattern is eight valid INT4 codes."""
        for start in range(0, n, BLOCK):
            yield self.rng.integers(-2**31, 2**31, size=min(BLOCK, n - start), dtype=np.int32)


def _synthetic_entries(cfg, seed):
    """(name, dtype, shape, chunks) for every tensor of `cfg`, as the release stores it."""
    rng = np.random.default_rng(seed)
    pools, expected = _Pools(rng), expected_tensors(cfg)
    for name, (dtypes, shape) in expected.items():
        n = int(np.prod(shape))
        if name.endswith("weight_packed"):
            yield name, "I32", shape, pools.words(n)
        elif name.endswith("weight_shape"):
            prefix = name[: -len("weight_shape")]
            O, I = expected[f"{prefix}weight_packed"][1][0], expected[f"{prefix}weight_scale"][1][1] * cfg.quant.group_size
            yield name, "I32", shape, [np.array([O, I], np.int32)]
        elif name.endswith("weight_scale"):
            I = shape[1] * cfg.quant.group_size
            yield name, "BF16", shape, pools.bf16(n, 0.02 / np.sqrt(I), 0.1 / np.sqrt(I))
        elif dtypes == ("F32",):
            yield name, "F32", shape, [(0.1 * rng.standard_normal(shape)).astype(np.float32)]
        else:
            yield name, "BF16", shape, pools.bf16(n, *init_scale(name, shape))


def full_width_bytes(layers, experts):
    """Bytes of tensor data `make_full_width(layers=, experts=)` writes (from the shapes; nothing is drawn)."""
    cfg = from_hf(full_width_config(layers, experts))
    return sum(int(np.prod(shape)) * DTYPES[dtypes[0]][1] for dtypes, shape in expected_tensors(cfg).values())


def check_free_space(out, nbytes):
    """K25RefError unless the disk that would hold folder `out` has `nbytes` free."""
    where = os.path.abspath(out)
    while not os.path.exists(where):
        where = os.path.dirname(where)
    free = shutil.disk_usage(where).free
    if free < nbytes:
        raise K25RefError(f"{out}: the checkpoint needs {nbytes / 1e9:.1f} GB, the disk has {free / 1e9:.1f} GB free")


def make_full_width(out, layers=3, experts=384, seed=0, shards=None, progress=False, force=True, announce=None):
    """Write a synthetic checkpoint with the real K2.5 tensor shapes (hidden 7168, MLA 1536/512/64 heads,
    experts of 2048 in INT4 with bf16 scales, vocab 163840, the full vision tower) for `layers` layers and
    `experts` routed experts, in the released layout, with the project's tokenizer padded to the real vocabulary;
    one shard per layer plus three, like the release. With layers=61, experts=384 its index lists exactly the
    real checkpoint's tensor names and shapes. progress: a bar over the bytes written; announce(line): told the
    size once every check (shards, free disk, folder) has passed, before the first byte is written."""
    hub = full_width_config(layers, experts)
    cfg = from_hf(hub)
    shards = shards or max_shards(cfg)
    _check_shards(cfg, shards)
    size = full_width_bytes(layers, experts)
    check_free_space(out, size)
    prepare_folder(out, force)
    if announce is not None:
        announce(f"writing {size / 1e9:.1f} GB: K2.5's shapes with {layers} layer(s) and {experts} experts")
    groups = [[] for _ in range(shards)]
    for entry in _synthetic_entries(cfg, seed):
        groups[shard_of(entry[0], cfg, shards)].append(entry)
    weight_map = {}
    with bar(total=size, desc="writing", unit="B", unit_scale=True, disable=not progress) as written:
        for k, group in enumerate(groups):
            file = f"model-{k + 1:05d}-of-{shards:05d}.safetensors"
            write_shard(os.path.join(out, file), [(n, d, s, _ticking(c, written)) for n, d, s, c in group])
            weight_map.update((name, file) for name, _, _, _ in group)
    _write_index_and_config(out, size, weight_map, hub)     # size: tested equal to the tensors' bytes
    copy_tokenizer(out, cfg.text.vocab_size)
    return out


def _ticking(chunks, written):
    """The chunks, each counted on the progress bar once written."""
    for chunk in chunks:
        yield chunk
        written.update(chunk.nbytes)
