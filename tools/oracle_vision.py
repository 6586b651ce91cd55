"""The transformers oracle for MoonViT and the projector, and the goldens k25ref is checked against.

    python tools/oracle_vision.py make-goldens [--out tests/goldens_vision] [--seed 0]

What it does:

1. Reads the vision tower and projector tensors of a released-layout checkpoint (original names,
   BF16, fused `wqkv` in the complex-pair RoPE layout).
2. Renames and converts them with transformers' OWN conversion table for `kimi_k25`
   (`get_checkpoint_conversion_mapping`, `rename_source_key`, and the `Chunk` + `PermuteForRope`
   operations of the `wqkv` converter), so the oracle sees exactly what `from_pretrained` would give it.
   Every checkpoint tensor must be used once and every oracle parameter filled (strict).
3. Builds `Kimi_K25VisionModel` and `Kimi_K25MultimodalProjection` from a transformers-native config
   translated from the hub keys: transformers 5.23 ignores the hub's `vt_*` keys and would silently fall
   back to its 1152-wide, 27-layer defaults (k25-facts §8).
4. Runs them ONE ITEM AT A TIME in float32 with eager attention, calling tower and projector directly:
   `get_image_features` splits a video chunk's output wrongly (t*h*w/4 instead of h*w/4 rows), and
   `get_vision_temporal_merge_index` cannot mix items of different t in one call (k25-facts §8).
   Attention is block-diagonal per item, so per-item results concatenated equal a packed run.

torch and transformers are needed here only, never by k25ref.
"""
import argparse
import hashlib
import json
import os
import platform
import sys

import numpy as np
import torch
import transformers
from safetensors import safe_open
from transformers.conversion_mapping import get_checkpoint_conversion_mapping
from transformers.core_model_loading import WeightConverter, WeightRenaming, rename_source_key
from transformers.models.kimi_k25.configuration_kimi_k25 import Kimi_K25Config, Kimi_K25VisionConfig
from transformers.models.kimi_k25.modeling_kimi_k25 import Kimi_K25MultimodalProjection, Kimi_K25VisionModel

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from k25ref.checkpoint import Checkpoint  # noqa: E402
from k25ref.config import load_config  # noqa: E402
from k25ref.make_tiny import make_tiny, preset  # noqa: E402
from k25ref.weights import vision_tensors  # noqa: E402

VISION_PREFIX = "model.vision_tower."
PROJECTOR_PREFIX = "model.mm_projector."


# ----------------------------------------------------------------------------
# config: hub keys -> transformers-native classes


def native_config(cfg):
    """k25ref KimiK25Config (parsed from the hub's vt_* keys) -> transformers Kimi_K25Config."""
    v = cfg.vision
    if v.init_pos_emb_height != v.init_pos_emb_width:
        # transformers resamples the table with one `num_grid_per_side = pos_emb_height` for both axes
        raise ValueError(f"the oracle needs a square position table, got {v.init_pos_emb_height}x"
                         f"{v.init_pos_emb_width}")
    vision = Kimi_K25VisionConfig(
        patch_size=v.patch_size, pos_emb_height=v.init_pos_emb_height, pos_emb_width=v.init_pos_emb_width,
        pos_emb_time=v.init_pos_emb_time, num_attention_heads=v.num_attention_heads,
        num_hidden_layers=v.num_hidden_layers, hidden_size=v.hidden_size, intermediate_size=v.intermediate_size,
        hidden_act="gelu_pytorch_tanh", merge_kernel_size=list(v.merge_kernel_size),
        rope_parameters={"rope_type": "axial", "rope_theta": v.rope_theta})
    text = {"model_type": "deepseek_v3", "hidden_size": cfg.text.hidden_size}
    config = Kimi_K25Config(text_config=text, vision_config=vision, projection_hidden_size=v.hidden_size,
                            projection_layer_norm_eps=v.projector_ln_eps)
    config.vision_config._attn_implementation = "eager"
    return config


# ----------------------------------------------------------------------------
# tensors: released names -> transformers names, with transformers' own conversion code


def read_vision_tensors(folder, cfg):
    """The released vision/projector tensors of a checkpoint folder as float32 torch tensors."""
    ckpt = Checkpoint(folder)
    out = {}
    for name in vision_tensors(cfg):
        with safe_open(ckpt.file_of(name), framework="pt") as f:
            out[name] = f.get_tensor(name).to(torch.float32)
    extra = [n for n in ckpt.names() if n.startswith(("vision_tower.", "mm_projector.")) and n not in out]
    if extra:
        raise KeyError(f"checkpoint has vision tensors the config does not describe: {extra[:5]}")
    return out


def convert(tensors, config):
    """Apply the `kimi_k25` conversion mapping of transformers: renamings, then the wqkv converter."""
    mapping = get_checkpoint_conversion_mapping("kimi_k25")
    renamings = [t for t in mapping if isinstance(t, WeightRenaming)]
    converters = [t for t in mapping if isinstance(t, WeightConverter)]
    by_pattern = {p: c for c in converters for p in c.source_patterns}
    out = {}
    for name, tensor in tensors.items():
        new, pattern = rename_source_key(name, renamings, converters)
        if not new.startswith("model."):                 # from_pretrained adds the base-model prefix
            new = "model." + new
        if pattern is None:
            out[new] = tensor
            continue
        conv = by_pattern[pattern]
        produced = {pattern: [tensor]}
        for op in conv.operations:                       # Chunk(dim=0), then PermuteForRope on q/k
            produced = op.convert(produced, source_patterns=conv.source_patterns,
                                  target_patterns=conv.target_patterns, config=config)
        head, _, tail = new.partition(conv.target_patterns[0])
        for target, t in produced.items():
            out[head + target + tail] = t
    return out


def split_state(converted, prefix, module):
    """Strict load of the keys under `prefix` into `module`: no key missing, none left over."""
    state = {k[len(prefix):]: v for k, v in converted.items() if k.startswith(prefix)}
    result = module.load_state_dict(state, strict=True)
    assert not result.missing_keys and not result.unexpected_keys, result
    return len(state)


def load_oracle(folder):
    """-> (Kimi_K25VisionModel, Kimi_K25MultimodalProjection, k25ref cfg), float32, eval mode."""
    cfg = load_config(folder)
    config = native_config(cfg)
    tower = Kimi_K25VisionModel._from_config(config.vision_config, attn_implementation="eager").eval()
    projector = Kimi_K25MultimodalProjection(config).eval()
    converted = convert(read_vision_tensors(folder, cfg), config)
    used = split_state(converted, VISION_PREFIX, tower) + split_state(converted, PROJECTOR_PREFIX, projector)
    if used != len(converted):
        raise KeyError(f"converted tensors not used by the oracle: "
                       f"{[k for k in converted if not k.startswith((VISION_PREFIX, PROJECTOR_PREFIX))]}")
    return tower.float(), projector.float(), cfg


# ----------------------------------------------------------------------------
# running: one item per call, tower and projector called directly


@torch.no_grad()
def run_item(tower, projector, pixel_values, thw):  # (t*h*w, 3, P, P) -> {name: array}
    grid = torch.tensor([thw], dtype=torch.int64)
    seen = {}
    hooks = [tower.patch_embed.register_forward_hook(lambda m, i, o: seen.__setitem__("vision.embed", o))]
    for b, layer in enumerate(tower.layers):
        hooks.append(layer.register_forward_hook(lambda m, i, o, b=b: seen.__setitem__(f"vision.blocks.{b}", o)))
    try:
        out = tower(torch.from_numpy(pixel_values), grid_thw=grid)
    finally:
        for h in hooks:
            h.remove()
    features = projector(out.pooler_output).squeeze(1)          # (h*w/4, D): NOT split by prod(thw)//4
    seen.update({"vision.tower": out.last_hidden_state, "vision.merged": out.pooler_output,
                 "vision.features": features})
    return {k: v.detach().numpy().astype(np.float32) for k, v in seen.items()}


def run_oracle(tower, projector, pixel_values, grid_thw):  # (N, 3, P, P), (I, 3) -> {name: array}
    """All items, one call each, results concatenated in item order (what a packed run must give)."""
    parts, start = [], 0
    for thw in np.asarray(grid_thw).tolist():
        n = int(np.prod(thw))
        parts.append(run_item(tower, projector, np.ascontiguousarray(pixel_values[start:start + n]), thw))
        start += n
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


# ----------------------------------------------------------------------------
# goldens

CASES = {
    # non-square both ways, the 8x8 table stretched and squeezed per axis, and its own size (identity)
    "images": [[1, 4, 6], [1, 10, 4], [1, 2, 12], [1, 8, 8]],
    # video chunks of t = 1..4 (temporal term only for t > 1; one segment per chunk)
    "video": [[1, 4, 4], [2, 4, 6], [3, 6, 2], [4, 2, 4]],
    # images and chunks of different t packed in one k25ref call (one oracle call per item)
    "mixed": [[1, 6, 4], [4, 4, 2], [1, 2, 2]],
}


def sha256(path):
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def golden_hub_config():
    """The 'tiny' vision tower and projector on a one-layer dense text model (keeps the files small)."""
    hub = preset("tiny-plain")
    hub["vision_config"] = preset("tiny")["vision_config"]
    hub["text_config"].update(num_hidden_layers=1, first_k_dense_replace=1)
    return hub


def make_goldens(out, seed=0):
    os.makedirs(out, exist_ok=True)
    make_tiny(out, config=golden_hub_config(), seed=seed, shards=1, tokenizer=False)
    tower, projector, cfg = load_oracle(out)
    rng = np.random.default_rng(seed)
    P = cfg.vision.patch_size
    files = {}
    for name, grid in CASES.items():
        N = int(np.prod(grid, axis=1).sum())
        pixel_values = rng.uniform(-1.0, 1.0, (N, 3, P, P)).astype(np.float32)
        outputs = run_oracle(tower, projector, pixel_values, grid)
        path = os.path.join(out, f"{name}.npz")
        np.savez_compressed(path, grid_thw=np.array(grid, np.int64), pixel_values=pixel_values, **outputs)
        files[os.path.basename(path)] = {"grid_thw": grid, "arrays": sorted(["grid_thw", "pixel_values", *outputs])}
    manifest = {
        "made_by": "python tools/oracle_vision.py make-goldens --out <dir> --seed %d" % seed,
        "oracle": "transformers Kimi_K25VisionModel + Kimi_K25MultimodalProjection, float32, eager attention, "
                  "one item per call, tower and projector called directly (not get_image_features)",
        "checkpoint": "k25ref.make_tiny(config=golden_hub_config(), seed=%d): the 'tiny' vision tower and "
                      "projector on a one-layer dense text model (BF16, released layout)" % seed,
        "conversion": "transformers get_checkpoint_conversion_mapping('kimi_k25'): renamings + wqkv "
                      "Chunk(dim=0) + PermuteForRope(vision_config, q_proj/k_proj)",
        "inputs": "pixel_values ~ U(-1, 1) float32 from numpy default_rng(seed), cases in file order",
        "seed": seed,
        "versions": {"python": platform.python_version(), "numpy": np.__version__, "torch": torch.__version__,
                     "transformers": transformers.__version__},
        "files": {**files, **{f: {} for f in sorted(os.listdir(out)) if f.endswith((".json", ".safetensors"))
                              and f != "MANIFEST.json"}},
    }
    for f in manifest["files"]:
        manifest["files"][f]["sha256"] = sha256(os.path.join(out, f))
    with open(os.path.join(out, "MANIFEST.json"), "w") as f:
        json.dump(manifest, f, indent=2)
        f.write("\n")
    return manifest


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    make = sub.add_parser("make-goldens", help="write tests/goldens_vision (checkpoint, cases, MANIFEST.json)")
    make.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "..", "tests", "goldens_vision"))
    make.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    manifest = make_goldens(os.path.abspath(args.out), args.seed)
    total = sum(os.path.getsize(os.path.join(os.path.abspath(args.out), f)) for f in manifest["files"])
    print(f"wrote {len(manifest['files'])} files, {total / 1e6:.2f} MB, to {os.path.abspath(args.out)}")


if __name__ == "__main__":
    main()
