"""What a checkpoint holds, from config.json and headers alone: parameters (total and active per token),
bytes by dtype, quantization, shards, cache bytes per token, and the bytes a decoded token must read.

Works on a full checkpoint and on `config.json` + `model.safetensors.index.json` without shards (then the
sizes come from the config's expected shapes, which the real index lists one for one).
"""
import os
from collections import Counter

from k25ref.checkpoint import DTYPES, INDEX_FILE, KNOWN_UNSUPPORTED, Checkpoint, read_index
from k25ref.config import KimiK25Config, load_config
from k25ref.weights import expected_tensors, int4_problems, problems

BITS = {**{name: 8 * size for name, (_, size) in DTYPES.items()}, **KNOWN_UNSUPPORTED}


def _stored_size(name, dtype, shape):
    n = 1
    for d in shape:
        n *= d
    return n * BITS[dtype] // 8


def _params(name, shape, cfg):
    """Logical parameters of one stored tensor (an INT4 matrix counts O*I, its scales and shape count 0)."""
    if name.endswith("weight_packed"):
        return shape[0] * shape[1] * 8
    if name.endswith(("weight_scale", "weight_shape")):
        return 0
    n = 1
    for d in shape:
        n *= d
    return n


def _is_idle_expert(name, cfg: KimiK25Config):
    """A routed expert beyond the A a token uses (for the active count we take experts 0..A-1 per layer).
    Active figures also leave out the vision tower and projector, which a text token never reads."""
    if ".mlp.experts." not in name:
        return False
    return int(name.split(".mlp.experts.")[1].split(".")[0]) >= cfg.text.num_experts_per_tok


def cache_bytes_per_token(cfg: KimiK25Config, bytes_per_value=2):
    """(MLA latent cache, plain multi-head cache of the same model) bytes per token, all layers, bf16."""
    t = cfg.text
    latent = t.num_hidden_layers * (t.kv_lora_rank + t.qk_rope_head_dim) * bytes_per_value
    plain = t.num_hidden_layers * t.num_attention_heads * (t.qk_head_dim + t.v_head_dim) * bytes_per_value
    return latent, plain


def summarize(path):
    """A dict describing the checkpoint at `path` (folder with config.json and index or shards)."""
    cfg = load_config(path)
    expected = expected_tensors(cfg)
    index = read_index(path) if os.path.exists(os.path.join(path, INDEX_FILE)) else None
    absent = sorted(s for s in set(index.values()) if not os.path.lexists(os.path.join(path, s))) if index else []
    has_shards = index is None or len(absent) < len(set(index.values()))
    if has_shards:
        ckpt = Checkpoint(path)
        found = list(problems(ckpt, cfg)) or list(int4_problems(ckpt, cfg))
        issues = [f"{p}: {t!r}: {d} [{c}]" if t else f"{p}: {d} [{c}]" for p, c, d, t in found]
        tensors = {n: (ckpt.info(n).dtype, ckpt.info(n).shape) for n in ckpt.names()}
        shards = len(ckpt.files)
    else:
        missing = [n for n in expected if n not in index]
        issues = [f"index lacks {n!r}" for n in missing[:5]] + [f"index has unexpected {n!r}" for n in index
                                                                 if n not in expected][:5]
        tensors = {n: (dtypes[0], shape) for n, (dtypes, shape) in expected.items()}   # as released
        shards = len(set(index.values()))
    return {**_totals(cfg, tensors, shards, issues, has_shards), "absent_shards": absent if not has_shards else []}


def _totals(cfg, tensors, shards, issues, has_shards):
    by_dtype, params, active, active_bytes = Counter(), 0, 0, 0
    embed = "language_model.model.embed_tokens.weight"
    for name, (dtype, shape) in tensors.items():
        size = _stored_size(name, dtype, shape)
        by_dtype[dtype] += size
        p = _params(name, shape, cfg)
        params += p
        if not _is_idle_expert(name, cfg) and not name.startswith(("vision_tower.", "mm_projector.")):
            active += p
            if name != embed:
                active_bytes += size
    if embed in tensors:                        # decoding reads one embedding row, not the table
        dtype, shape = tensors[embed]
        active_bytes += shape[1] * BITS[dtype] // 8
    latent, plain = cache_bytes_per_token(cfg)
    t = cfg.text
    return {"text_layers": t.num_hidden_layers, "dense_layers": t.first_k_dense_replace,
            "hidden_size": t.hidden_size, "heads": t.num_attention_heads, "vocab_size": t.vocab_size,
            "routed_experts": t.n_routed_experts, "experts_per_token": t.num_experts_per_tok,
            "shared_experts": t.n_shared_experts, "rope": t.rope.type,
            "quantization": f"INT4 group {cfg.quant.group_size} (routed experts)" if cfg.quant else "none",
            "vision": f"{cfg.vision.num_hidden_layers} blocks x {cfg.vision.hidden_size}" if cfg.vision else "none",
            "params_total": params, "params_active_per_token": active, "bytes_by_dtype": dict(by_dtype),
            "bytes_total": sum(by_dtype.values()), "bytes_read_per_decoded_token": active_bytes,
            "shards": shards, "tensors": len(tensors), "shards_present": has_shards,
            "cache_bytes_per_token_latent": latent, "cache_bytes_per_token_plain": plain, "problems": issues}


def human(n):
    """Bytes or counts in readable units: 1.23 G."""
    for unit in ("", "K", "M", "G", "T"):
        if abs(n) < 1000:
            return f"{n:.3g} {unit}".rstrip()
        n /= 1000
    return f"{n:.3g} P"


def format_summary(s, disk_gbps=(0.5, 1.0, 3.0, 7.0)):
    """The summary as aligned text lines for `k25ref inspect`."""
    lines = [f"{'layers':<30} {s['text_layers']} ({s['dense_layers']} dense, MLA + MoE)",
             f"{'width / heads / vocab':<30} {s['hidden_size']} / {s['heads']} / {s['vocab_size']}",
             f"{'experts':<30} {s['routed_experts']} routed, {s['experts_per_token']} per token, "
             f"{s['shared_experts']} shared",
             f"{'rope':<30} {s['rope']}", f"{'quantization':<30} {s['quantization']}",
             f"{'vision tower':<30} {s['vision']}",
             f"{'parameters':<30} {human(s['params_total'])} total, {human(s['params_active_per_token'])} "
             "active per token",
             f"{'bytes':<30} {human(s['bytes_total'])}B in {s['tensors']} tensors, {s['shards']} shard(s)"
             + ("" if s["shards_present"] else " (index only)")]
    lines += [f"{'  ' + dtype:<30} {human(n)}B" for dtype, n in sorted(s["bytes_by_dtype"].items())]
    lines.append(f"{'KV cache per token':<30} {human(s['cache_bytes_per_token_latent'])}B latent (MLA) vs "
                 f"{human(s['cache_bytes_per_token_plain'])}B plain multi-head "
                 f"({s['cache_bytes_per_token_plain'] / s['cache_bytes_per_token_latent']:.1f}x)")
    per_token = s["bytes_read_per_decoded_token"]
    lines.append(f"{'read per decoded token':<30} {human(per_token)}B (active set, nothing cached)")
    for gbps in disk_gbps:
        lines.append(f"{'  at ' + str(gbps) + ' GB/s disk':<30} {per_token / (gbps * 1e9):.3g} s/token")
    absent = s.get("absent_shards", [])
    if absent:           # the index-only view: say which shards it could not look into
        lines.append(f"{'shards absent':<30} {len(absent)} of {s['shards']}: {', '.join(absent[:3])}"
                     + (f", ... ({len(absent) - 3} more)" if len(absent) > 3 else ""))
    if s["problems"]:
        lines.append(f"problems ({len(s['problems'])}):")
    elif absent:
        lines.append(f"problems: none in the index; dtypes, shapes and data not checked ({len(absent)} shards absent)")
    else:
        lines.append("problems: none")
    lines += [f"  {p}" for p in s["problems"]]
    return lines
