"""Write the text-decoder goldens that k25ref is checked against, from the transformers oracle.

    python tools/make_goldens.py             # (re)write tests/goldens/ (needs torch, transformers, compressed-tensors)
    python tools/make_goldens.py --check     # regenerate into a temporary folder and compare byte for byte
    python tools/make_goldens.py --report    # k25ref vs the committed goldens: the measured-error table (NumPy only)

For every case in CASES it writes, under tests/goldens/<case>/:

    checkpoint/    a tiny random checkpoint in the released layout (config.json, BF16 shards, INT4 experts,
                   model.safetensors.index.json), made by `k25ref.make_tiny`
    golden.npz     for each input length L in LENGTHS (keys prefixed `seq{L}.`): input_ids, logits and the
                   intermediates embed, layers.{i}.{attn_out, mlp_out, hidden}, final_norm, and on MoE layers
                   layers.{i}.{router_indices, router_weights, router_margin}; then greedy.prompt,
                   greedy.tokens and greedy.margins (top-1 minus top-2 logit at each generated step)

and tests/goldens/MANIFEST.json: software versions, seeds, the command, tolerances, and the sha256 of every
file. Arrays are float32 / int64, little-endian, in an uncompressed npz with fixed zip timestamps, and torch
runs on one thread, so a rerun on the same versions reproduces every byte (`--check` verifies this).

Input sequences are drawn again (next seed) while any token's router choice in the oracle is within
MIN_ROUTER_MARGIN of a tie, so that float32 rounding cannot flip a choice and make the whole continuation
differ; the margins are still stored and the tests skip any token below TOLERANCES["router_tie"].
"""
import argparse
import filecmp
import hashlib
import importlib.util
import io
import json
import os
import platform
import shutil
import sys
import tempfile
import zipfile

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)                                     # run from a checkout without installing
sys.path.insert(0, os.path.join(ROOT, "tools"))

from k25ref.make_tiny import N_SPECIAL, make_tiny, preset  # noqa: E402

GOLDENS = os.path.join(ROOT, "tests", "goldens")
COMMAND = "python tools/make_goldens.py"
LENGTHS = (1, 2, 7, 33, 64)            # input lengths; 64 also exceeds the yarn cases' original context
GREEDY_PROMPT, GREEDY_NEW = 8, 32
MIN_ROUTER_MARGIN = 1e-5
TOLERANCES = {
    # the conformance bars for any float32 runtime, as max|runtime - oracle| / max|oracle| per tensor
    "logits_rel": 1e-3,            # over all logits of one input
    "intermediate_rel": 1e-4,      # per intermediate tensor (attn_out, mlp_out, hidden, final_norm)
    "router_weights_rel": 1e-4,    # on the routing weights of non-tie tokens
    # k25ref's own, tighter bar on all three: it computes in float32 like the oracle, so rounding alone gives
    # ~1e-6, while a real slip (e.g. eps 1e-5 instead of 1e-6 in the latent norms) gives ~1e-5 to 3e-5
    "k25ref_rel": 1e-5,
    "embed_abs": 0.0,              # the embedding row is the stored bf16 widened: bit-exact
    "router_tie": MIN_ROUTER_MARGIN,   # tokens whose oracle routing margin is below this are not compared
    "greedy_margin": 1e-3,         # greedy tokens are compared up to the first step with a smaller margin
}


# ----------------------------------------------------------------------------
# the cases


def with_vocab(hub, vocab):
    """Resize a hub config's vocabulary; special ids follow the base vocabulary as in the release."""
    base = vocab - N_SPECIAL
    ids = {"bos_token_id": base, "eos_token_id": base + 1, "pad_token_id": vocab - 1}
    hub.update(ids, media_placeholder_token_id=base + 21)
    hub["text_config"].update(ids, vocab_size=vocab)
    return hub


def variant(preset_name, vocab, **text):
    """A preset's hub config with some text_config fields replaced (None is written as JSON null)."""
    hub = with_vocab(preset(preset_name), vocab)
    hub["text_config"].update(text)
    return hub


K25_ROPE = {"type": "yarn", "factor": 64.0, "original_max_position_embeddings": 16, "beta_fast": 32.0,
            "beta_slow": 1.0, "mscale": 1.0, "mscale_all_dim": 1.0}
CASES = {
    "yarn-groups": dict(
        description="default tiny preset: yarn (factor 4, original context 32), 16 experts in 4 groups pick 2, "
                    "top-4, one dense layer, INT4 experts, a vision tower in the checkpoint",
        hub=lambda: variant("tiny", 1024), seed=11, shards=3),
    "plain-bias": dict(
        description="plain rope, q_lora_rank null (q_proj), attention_bias, 2 dense + 2 MoE layers, "
                    "2 shared experts, norm_topk_prob false, routed_scaling_factor 1",
        hub=lambda: variant("tiny-plain", 512), seed=12, shards=2),
    "many-groups": dict(
        description="32 experts in 8 groups pick 3, top-6; yarn factor 8 without mscale keys "
                    "(transformers' attention-factor fallback)",
        hub=lambda: variant("tiny-groups", 512), seed=13, shards=2),
    "dense-stack": dict(
        description="3 dense + 2 MoE layers, 2 heads, q_lora_rank null with yarn, mscale 0.8 / mscale_all_dim 1.2 "
                    "(cos/sin factor != 1), 3 shared experts, norm_topk_prob false",
        hub=lambda: variant("tiny", 768, num_hidden_layers=5, first_k_dense_replace=3, num_attention_heads=2,
                            num_key_value_heads=2, q_lora_rank=None, n_shared_experts=3, norm_topk_prob=False,
                            n_group=2, topk_group=1, rope_scaling={**K25_ROPE, "factor": 16.0, "mscale": 0.8,
                                                                   "mscale_all_dim": 1.2}),
        seed=14, shards=4),
    "k25-shape": dict(
        description="K2.5's own choices scaled down: one group, top-8 of 32, yarn factor 64 beta 32/1, "
                    "Dn = Dv = 2 Dr, 3 layers, BF16 experts (no quantization_config)",
        hub=lambda: _unquantized(variant("tiny", 1024, num_hidden_layers=3, n_routed_experts=32,
                                         num_experts_per_tok=8, n_group=1, topk_group=1, qk_nope_head_dim=32,
                                         qk_rope_head_dim=16, v_head_dim=32, q_lora_rank=48, kv_lora_rank=32,
                                         routed_scaling_factor=2.827, rope_scaling=K25_ROPE)),
        seed=15, shards=2),
}


def _unquantized(hub):
    hub["text_config"].pop("quantization_config")
    return hub


# ----------------------------------------------------------------------------
# deterministic files


def write_npz(path, arrays):
    """np.savez, but byte-reproducible: sorted keys, fixed zip timestamps, no compression."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as zf:
        for key in sorted(arrays):
            arr = np.ascontiguousarray(arrays[key])
            buf = io.BytesIO()
            np.lib.format.write_array(buf, arr.astype(arr.dtype.newbyteorder("<"), copy=False), allow_pickle=False)
            info = zipfile.ZipInfo(f"{key}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.external_attr = 0o644 << 16
            zf.writestr(info, buf.getvalue())


def sha256(path):
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def all_files(root):
    """Relative paths of every file under root except the manifest, sorted."""
    out = []
    for folder, _, names in os.walk(root):
        out += [os.path.relpath(os.path.join(folder, n), root) for n in names]
    return sorted(p for p in out if p != "MANIFEST.json")


# ----------------------------------------------------------------------------
# generation


def text_ids(oracle, model, rng, T):  # -> (T,) int64
    """Random ids from the vocabulary, media placeholders left out (see oracle._ids)."""
    allowed = np.setdiff1d(np.arange(model.config.text_config.vocab_size), sorted(oracle.media_placeholders(model)))
    return rng.choice(allowed, T).astype(np.int64)


def draw_ids(oracle, model, rng, T):  # -> (T,) int64 and the oracle's intermediates for it
    """Random ids, redrawn while some token's router choice is within MIN_ROUTER_MARGIN of a tie."""
    while True:
        ids = text_ids(oracle, model, rng, T)
        inter = oracle.oracle_intermediates(model, ids)
        margins = [v for k, v in inter.items() if k.endswith("router_margin")]
        if all(m.min() >= MIN_ROUTER_MARGIN for m in margins):
            return ids, inter


def draw_greedy(oracle, model, rng, prompt_len=GREEDY_PROMPT, n_new=GREEDY_NEW):  # -> (P,), (N,), (N,)
    """A random prompt and the oracle's greedy continuation (tokens, margins). The prompt is drawn again if the
    continuation generates a media placeholder, or meets a near-tie step (margin below
    TOLERANCES["greedy_margin"]) in its first half, so that at least half the steps are comparable."""
    while True:
        prompt = text_ids(oracle, model, rng, prompt_len)
        try:
            tokens, margins = oracle.oracle_greedy(model, prompt, n_new)
        except oracle.PlaceholderGenerated:
            continue
        if margins[: n_new // 2].min() >= TOLERANCES["greedy_margin"]:
            return prompt, tokens, margins


def make_case(out, name, spec):
    """Write one case's checkpoint and golden.npz; return its manifest entry."""
    import oracle
    ckpt = os.path.join(out, name, "checkpoint")
    hub = spec["hub"]()
    make_tiny(ckpt, seed=spec["seed"], shards=spec["shards"], config=hub, tokenizer=False)
    model = oracle.load_oracle(ckpt)
    V, rng, arrays = hub["text_config"]["vocab_size"], np.random.default_rng(spec["seed"]), {}
    for T in LENGTHS:
        ids, inter = draw_ids(oracle, model, rng, T)
        arrays[f"seq{T}.input_ids"] = ids
        arrays.update({f"seq{T}.{k}": v for k, v in inter.items()})
    prompt, tokens, margins = draw_greedy(oracle, model, rng)
    arrays.update({"greedy.prompt": prompt, "greedy.tokens": tokens, "greedy.margins": margins})
    write_npz(os.path.join(out, name, "golden.npz"), arrays)
    return {"description": spec["description"], "checkpoint_seed": spec["seed"], "input_seed": spec["seed"],
            "shards": spec["shards"], "vocab_size": V, "int4_experts": "quantization_config" in hub["text_config"],
            "has_vision_tower": hub.get("vision_config") is not None}


def build(out):
    """Write every case and the manifest into `out`."""
    import torch

    import oracle
    torch.manual_seed(0)
    torch.set_num_threads(1)                                 # one reduction order, whatever the machine
    os.makedirs(out, exist_ok=True)
    for name in CASES:
        shutil.rmtree(os.path.join(out, name), ignore_errors=True)
    cases = {name: make_case(out, name, spec) for name, spec in CASES.items()}
    manifest = {
        "schema_version": 1,
        "command": COMMAND,
        "generator": {**oracle.oracle_versions(), "python": platform.python_version(), "torch_threads": 1},
        "oracle": "transformers Kimi_K25ForConditionalGeneration.from_pretrained, float32, CPU, eager attention, "
                  "eager experts (tools/oracle.py)",
        "lengths": list(LENGTHS), "greedy": {"prompt": GREEDY_PROMPT, "new_tokens": GREEDY_NEW},
        "tolerances": TOLERANCES,
        "cases": cases,
        "files": {p: sha256(os.path.join(out, p)) for p in all_files(out)},
    }
    with open(os.path.join(out, "MANIFEST.json"), "w") as f:
        json.dump(manifest, f, indent=1, sort_keys=True)
        f.write("\n")
    size = sum(os.path.getsize(os.path.join(out, p)) for p in all_files(out))
    print(f"wrote {len(cases)} cases, {len(manifest['files'])} files, {size / 1e6:.2f} MB -> {out}")


def check(out):
    """Regenerate into a temporary folder and compare with `out` byte for byte; True when identical."""
    with tempfile.TemporaryDirectory() as tmp:
        build(tmp)
        theirs, ours = all_files(out) + ["MANIFEST.json"], all_files(tmp) + ["MANIFEST.json"]
        if theirs != ours:
            print(f"file lists differ: only in {out}: {sorted(set(theirs) - set(ours))}, "
                  f"only in new: {sorted(set(ours) - set(theirs))}")
            return False
        differ = [p for p in ours if not filecmp.cmp(os.path.join(out, p), os.path.join(tmp, p), shallow=False)]
    print("identical, byte for byte" if not differ else f"{len(differ)} files differ: {differ}")
    return not differ


def report(out):
    """Print the measured k25ref-vs-oracle errors of every committed case as a Markdown table."""
    tests = os.path.join(ROOT, "tests")
    spec = importlib.util.spec_from_file_location("test_conformance", os.path.join(tests, "test_conformance.py"))
    conformance = importlib.util.module_from_spec(spec)
    sys.path.insert(0, tests)                                 # for its `from conftest import ...`
    spec.loader.exec_module(conformance)
    print("| case | logits rel. err. | worst intermediate rel. err. | router weights rel. err. | "
          "router sets compared / skipped | greedy tokens equal |")
    print("|---|---|---|---|---|---|")
    for name in sorted(conformance.manifest(out)["cases"]):
        m = conformance.measure(os.path.join(out, name))
        print(f"| {name} | {m['logits_rel']:.2e} | {m['intermediate_rel']:.2e} ({m['worst_intermediate']}) | "
              f"{m['router_weights_rel']:.2e} | {m['router_compared']} / {m['router_skipped']} | "
              f"{m['greedy_equal']} / {m['greedy_compared']} |")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=GOLDENS, help="goldens folder (default tests/goldens)")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--check", action="store_true", help="regenerate in a temporary folder and compare bytes")
    mode.add_argument("--report", action="store_true", help="measure k25ref against the goldens (NumPy only)")
    args = parser.parse_args()
    if args.report:
        report(args.out)
    elif args.check:
        sys.exit(0 if check(args.out) else 1)
    else:
        build(args.out)


if __name__ == "__main__":
    main()
