"""The oracle: transformers' own Kimi K2.5 text decoder, loaded from a released-layout checkpoint folder.

k25ref is checked against what transformers (5.23.0, torch 2.13.0, CPU, float32, eager attention and eager
experts) computes on the same checkpoint. This module loads a checkpoint the way transformers loads the real
release, `Kimi_K25ForConditionalGeneration.from_pretrained(folder)`, with its conversion mapping
(`language_model.model.*` -> `model.language_model.*`, per-expert INT4 tensors dequantized by
compressed-tensors and fused into `gate_up_proj` (E, 2F, D) / `down_proj` (E, D, F)), and then reads out
logits, per-layer intermediates and greedy generations as NumPy arrays.

Three things stand between the released files and a working float32 oracle; each is handled openly here:

1. Vision keys. transformers ignores the hub's `vt_*` / `init_pos_emb_*` vision keys and would build its
   default 1152-wide, 27-layer tower (k25-facts §8). `native_config` translates them to the native names.
   A text-only checkpoint gets a one-layer stub tower whose (random) weights never touch text logits; the
   loader then allows exactly the vision-tower and projector keys to be missing, and nothing else.
2. Quantization scope. The release's `quantization_config` targets every `Linear` outside its ignore list.
   transformers applies it to the whole multimodal model, so the vision tower's Linear layers would expect
   packed INT4 tensors that the checkpoint stores as plain BF16 `weight`s. The ignore list is extended by
   `vision_tower` and `mm_projector` (which the release stores unquantized); the text decoder sees the
   release's list unchanged.
3. Expert dtype. compressed-tensors dequantizes in the scale's dtype, so the fused expert tensors arrive as
   bfloat16 (K2.5's bf16 scales; float16 for F16 scales) even with `dtype=torch.float32`, and the float32
   forward then fails on mixed dtypes. They are widened to float32 after loading (exact: every bf16 and
   float16 value is a float32 value). The values are exactly compressed-tensors' q * scale in that dtype.

Loading is strict: any unexpected, mismatched or missing key (other than the stub tower's) raises.

Public functions: `load_oracle(path)`, `oracle_logits(model, ids)`, `oracle_intermediates(model, ids)`,
`oracle_greedy(model, ids, n)`, `oracle_versions()`.
"""
import copy
import json
import os

import numpy as np
import torch

UNQUANTIZED = ["re:.*vision_tower.*", "re:.*mm_projector.*"]   # stored as BF16 in the release
STUB_VISION = {"hidden_size": 16, "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 32,
               "pos_emb_height": 4, "pos_emb_width": 4, "pos_emb_time": 4, "patch_size": 14}
VISION_KEYS = {  # hub key -> transformers-native Kimi_K25VisionConfig key
    "patch_size": "patch_size", "init_pos_emb_height": "pos_emb_height", "init_pos_emb_width": "pos_emb_width",
    "init_pos_emb_time": "pos_emb_time", "vt_hidden_size": "hidden_size",
    "vt_num_hidden_layers": "num_hidden_layers", "vt_num_attention_heads": "num_attention_heads",
    "vt_intermediate_size": "intermediate_size", "merge_kernel_size": "merge_kernel_size"}


class OracleError(RuntimeError):
    """The oracle could not be built faithfully (a key left random, an unexpected dtype, ...)."""


class PlaceholderGenerated(OracleError):
    """Greedy generation produced a media placeholder id, which the oracle cannot feed back faithfully."""


def oracle_versions():
    """The software that produced the oracle's numbers."""
    import compressed_tensors
    import transformers
    return {"torch": torch.__version__, "transformers": transformers.__version__,
            "compressed_tensors": compressed_tensors.__version__, "numpy": np.__version__}


# ----------------------------------------------------------------------------
# loading


def native_config(hub):
    """A released config.json dict -> transformers `Kimi_K25Config` (vision keys translated, see module doc)."""
    from transformers import Kimi_K25Config
    text = copy.deepcopy(hub["text_config"])
    quant = text.get("quantization_config")
    if quant is not None:
        quant["ignore"] = list(quant.get("ignore", [])) + UNQUANTIZED
    hub_vision = hub.get("vision_config")
    if hub_vision is None:
        vision, proj_ln = dict(STUB_VISION), 1e-5
    else:
        vision = {native: hub_vision[key] for key, native in VISION_KEYS.items() if key in hub_vision}
        proj_ln = hub_vision.get("projector_ln_eps", 1e-5)
    return Kimi_K25Config(
        text_config=text, vision_config=vision, projection_hidden_size=vision["hidden_size"],
        projection_layer_norm_eps=proj_ln, tie_word_embeddings=hub.get("tie_word_embeddings", False),
        image_token_id=hub.get("media_placeholder_token_id", 163605),
        bos_token_id=hub.get("bos_token_id"), eos_token_id=hub.get("eos_token_id"),
        pad_token_id=hub.get("pad_token_id"))


def _check_loading(info, has_vision, path):
    """Strict key check: nothing unexpected, nothing mismatched, nothing missing but the stub tower."""
    stub = ("model.vision_tower.", "model.mm_projector.")
    missing = sorted(k for k in info["missing_keys"] if has_vision or not k.startswith(stub))
    problems = {"missing": missing, "unexpected": sorted(info["unexpected_keys"]),
                "mismatched": sorted(str(k) for k in info["mismatched_keys"]), "errors": list(info["error_msgs"])}
    bad = {k: v[:8] for k, v in problems.items() if v}
    if bad:
        raise OracleError(f"{path}: transformers did not load the checkpoint cleanly: {bad}")


def load_oracle(path):
    """Load a released-layout checkpoint folder into transformers' Kimi K2.5, float32 on CPU, eval mode."""
    from transformers import Kimi_K25ForConditionalGeneration
    from transformers.utils import logging as hf_logging
    with open(os.path.join(path, "config.json")) as f:
        hub = json.load(f)
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()                       # the stub tower's MISSING report is expected
    try:
        model, info = Kimi_K25ForConditionalGeneration.from_pretrained(
            path, config=native_config(hub), dtype=torch.float32, attn_implementation="eager",
            experts_implementation="eager", output_loading_info=True)
    finally:
        hf_logging.set_verbosity(verbosity)
    _check_loading(info, hub.get("vision_config") is not None, path)
    for name, p in model.named_parameters():               # fused INT4 experts arrive in the scales' dtype (3.)
        if p.dtype in (torch.bfloat16, torch.float16) and ".mlp.experts." in name:
            p.data = p.data.to(torch.float32)
    wrong = [(n, t.dtype) for n, t in [*model.named_parameters(), *model.named_buffers()]
             if t.is_floating_point() and t.dtype != torch.float32]
    if wrong:
        raise OracleError(f"{path}: tensors not in float32 after loading: {wrong[:8]}")
    tied = model.lm_head.weight.data_ptr() == text_model(model).embed_tokens.weight.data_ptr()
    if tied != bool(hub.get("tie_word_embeddings", False)):
        raise OracleError(f"{path}: lm_head tying is {tied}, config.json says {hub.get('tie_word_embeddings')}")
    return model.eval()


def text_model(model):
    """The DeepSeek-V3 decoder inside the multimodal model."""
    return model.model.language_model


# ----------------------------------------------------------------------------
# outputs


def media_placeholders(model):
    """Token ids that transformers embeds as row 0 (to be overwritten by media features), not as their own row."""
    return {model.config.image_token_id, model.config.video_token_id}


def _ids(model, ids):  # (T,) -> (1, T) int64 tensor
    """Refuse media placeholder ids: without pixels the oracle embeds them as row 0, which no model defines."""
    ids = np.asarray(ids, dtype=np.int64)
    bad = sorted(set(ids.tolist()) & media_placeholders(model))
    if bad:
        raise OracleError(f"input ids contain media placeholder id(s) {bad}; a text-only oracle run cannot use them")
    return torch.as_tensor(ids)[None]


@torch.no_grad()
def oracle_logits(model, ids):  # (T,) -> (T, V) float32
    """Full-sequence logits, no cache."""
    return model(input_ids=_ids(model, ids), use_cache=False).logits[0].numpy()


def router_margins(router_logits, gate):  # (T, E) -> (T,) float32
    """How close each token's expert choice is to a tie: the smaller of
    (a) the gap between the last chosen and the first rejected group score, and
    (b) the gap between the A-th and (A+1)-th expert score inside the chosen groups.
    A gap below ~1e-5 can flip under float32 rounding noise; tests skip such tokens."""
    s = router_logits.float().sigmoid()
    choice = s + gate.e_score_correction_bias                                 # (T, E)
    T, E, G, Gk, A = choice.shape[0], gate.num_experts, gate.num_group, gate.topk_group, gate.top_k
    group = choice.view(T, G, E // G).topk(2, dim=-1)[0].sum(-1)               # (T, G)
    inf = torch.full((T,), float("inf"))
    g_sorted = group.sort(dim=-1, descending=True)[0]
    group_gap = g_sorted[:, Gk - 1] - g_sorted[:, Gk] if Gk < G else inf
    allowed = torch.zeros_like(group).scatter_(1, group.topk(Gk, dim=-1)[1], 1.0).bool()
    masked = choice.masked_fill(~allowed.repeat_interleave(E // G, dim=1), float("-inf"))
    e_sorted = masked.sort(dim=-1, descending=True)[0]
    expert_gap = e_sorted[:, A - 1] - e_sorted[:, A] if A < Gk * (E // G) else inf
    return torch.minimum(group_gap, expert_gap).numpy().astype(np.float32)


def _canonical_routing(router_logits, weights, indices, gate):  # -> (T, A) int64, (T, A) float32
    """Order each token's experts best-first by s + b (the oracle's top-k is unsorted); weights follow."""
    choice = router_logits.float().sigmoid() + gate.e_score_correction_bias    # (T, E)
    key = torch.gather(choice, 1, indices)                                    # (T, A)
    order = torch.argsort(-key, dim=-1, stable=True)
    return torch.gather(indices, 1, order).numpy().astype(np.int64), torch.gather(weights, 1, order).numpy()


@torch.no_grad()
def oracle_intermediates(model, ids):
    """Named intermediates of one no-cache forward, by forward hooks; the same names as k25ref's capture:
    embed, layers.{i}.attn_out, layers.{i}.router_indices/router_weights/router_margin (MoE layers),
    layers.{i}.mlp_out, layers.{i}.hidden, final_norm; plus logits. Arrays are (T, ...) NumPy."""
    lm, out, hooks = text_model(model), {}, []

    def keep(name, pick=lambda o: o):
        def hook(module, args, output):
            out[name] = pick(output)[0].detach().numpy().copy()       # drop the batch dim
        return hook

    def keep_router(i, gate):
        def hook(module, args, output):
            logits, weights, indices = output
            idx, w = _canonical_routing(logits, weights, indices, gate)
            out[f"layers.{i}.router_indices"], out[f"layers.{i}.router_weights"] = idx, w
            out[f"layers.{i}.router_margin"] = router_margins(logits, gate)
        return hook

    hooks.append(lm.embed_tokens.register_forward_hook(keep("embed")))
    for i, layer in enumerate(lm.layers):
        hooks.append(layer.self_attn.register_forward_hook(keep(f"layers.{i}.attn_out", lambda o: o[0])))
        hooks.append(layer.mlp.register_forward_hook(keep(f"layers.{i}.mlp_out")))
        hooks.append(layer.register_forward_hook(keep(f"layers.{i}.hidden")))
        if hasattr(layer.mlp, "gate"):
            hooks.append(layer.mlp.gate.register_forward_hook(keep_router(i, layer.mlp.gate)))
    hooks.append(lm.norm.register_forward_hook(keep("final_norm")))
    try:
        out["logits"] = oracle_logits(model, ids)
    finally:
        for h in hooks:
            h.remove()
    return out


@torch.no_grad()
def oracle_greedy(model, ids, n):  # (T,) -> (n,) int64, (n,) float32
    """`generate` with do_sample=False for exactly n new tokens (no eos stop), and the top-1 minus top-2
    logit margin of every step (a step whose margin is tiny may legitimately pick the other token).
    Raises OracleError if a media placeholder is generated before the last step (it would be fed back as
    row 0, see `_ids`)."""
    saved_eos = model.generation_config.eos_token_id
    model.generation_config.eos_token_id = None    # unset fields of a call fall back to this config
    try:
        res = model.generate(input_ids=_ids(model, ids), do_sample=False, max_new_tokens=n, use_cache=True,
                             output_logits=True, return_dict_in_generate=True)
    finally:
        model.generation_config.eos_token_id = saved_eos
    tokens = res.sequences[0, len(ids):].numpy().astype(np.int64)
    if tokens.shape != (n,):
        raise OracleError(f"generate returned {tokens.shape[0]} tokens, asked for {n}")
    if set(tokens[:-1].tolist()) & media_placeholders(model):
        raise PlaceholderGenerated("greedy generation produced a media placeholder id; choose another prompt")
    top2 = torch.stack([step[0].topk(2)[0] for step in res.logits])       # (n, 2)
    return tokens, (top2[:, 0] - top2[:, 1]).numpy().astype(np.float32)
