"""Train Kimi-K2.5-nano: a few-million-parameter model of the exact K2.5 architecture, saved in the released layout.

    python tools/train_nano.py [--minutes 75] [--out k25ref/assets/nano] [--seed 0]
    python tools/train_nano.py --quick --out /tmp/nano-quick --check  # a few steps, for smoke tests
    python tools/train_nano.py --init FOLDER ...                      # continue from a saved checkpoint
    python tools/train_nano.py --vision-only ...                      # the tower alone, on the read-out loss
    python tools/train_nano.py --vision-from FOLDER ...               # ... then put that tower into a run
    python tools/train_nano.py --vision-only --tower 192x4 ...        # a larger tower (width x blocks)
    python tools/train_nano.py --vision-only --tiny-frames 0.8 --small-objects 0.5 --probe-per-object ...  # small shapes
    python tools/train_nano.py --init FOLDER --text-teacher RELEASE ...  # captions for longer, the text held to RELEASE's
    python tools/train_nano.py --plot docs/figures/nano_tower_ab_loss.png --side-by-side --log A.jsonl,B.jsonl  # towers
    python tools/train_nano.py --plot docs/figures/nano_loss.png --log a.jsonl,b.jsonl   # the loss figure
    python tools/train_nano.py --plot docs/figures/nano_finetune_loss.png --log c.jsonl  # phase 3's (varied scenes)

The model IS transformers' `Kimi_K25ForConditionalGeneration`, built from the nano's hub config.json through
`tools/oracle.native_config`, so what is trained is exactly what the oracle (and k25ref) computes:
MLA attention with a query latent and YaRN RoPE, one dense layer then DeepSeekMoE layers (16 routed experts,
top-2, sigmoid routing with the aux-loss-free correction bias, one shared expert), the MoonViT tower with
2-D RoPE, bicubic position table and temporal sinusoids, and the 2x2 patch-merger projector.

Data, drawn fresh every step from `--seed`:
- text: 128-token windows of data/tinyshakespeare/train.txt (raw continuation, no template);
- chat/text: the real chat template (thinking off), user = the start of a window, assistant = what follows;
- chat/image and chat/video: user = an image (or 4-8 frame video) from k25ref.shapes + "Describe the
  image." / "Describe the video.", assistant = its caption; with --varied, that share of them comes from
  shapes.varied_image / varied_video instead (other frames, backgrounds, looks, 1-10 fps clips of 1-4 chunks). Pixels come from k25ref.media.preprocess_image /
  preprocess_video, the inference pipeline itself. Loss only on the assistant reply and its <|im_end|>.
  With --text-teacher, the text and chat/text targets are a saved model's next-token distributions (KL
  divergence) instead of the tokens: the decoder keeps that model's text while it learns captions.
  A varied scene also hands back where its objects are drawn (shapes' `masks`), which the read-out's
  targets are taken from (token_labels), since its backgrounds are not flat.
Media features are computed by calling the vision tower and the projector directly, one video chunk at a
time (transformers' get_image_features mis-splits chunks with t > 1), and spliced over the <|media_pad|>
positions like k25ref.multimodal.splice.

Schedule by wall time (the machine is shared, so steps vary in cost): AdamW, linear warm-up then cosine decay;
the routed experts are trained quantisation-aware (INT4 fake quantisation, straight-through gradient) for the
last `--qat` fraction. Every few minutes, and at the end, the model is written in the released layout:
BF16 tensors under the original names, routed experts as compressed-tensors INT4 (k25ref.int4.quantize),
float32 correction biases, the vision `wqkv` re-fused with the q/k rows back in the interleaved RoPE order
(the exact inverse of transformers' conversion, found by pushing index tensors through it), the tokenizer
alongside. `--check` at the end reloads the folder with tools/oracle.load_oracle and with k25ref and compares
logits with the trained model (weights rounded as saved).
"""
import argparse
import json
import math
import os
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "tools"))
from k25ref import media, shapes  # noqa: E402
from k25ref.checkpoint import Checkpoint, f32_to_bf16  # noqa: E402
from k25ref.config import from_hf  # noqa: E402
from k25ref.files import atomic_path, output_problem  # noqa: E402
from k25ref.int4 import dequantize, quantize  # noqa: E402
from k25ref.make_tiny import _hub_config, copy_tokenizer, write_safetensors  # noqa: E402
from k25ref.options import (checkpoint_folder, nonnegative_float, nonnegative_int, positive_float, positive_int,  # noqa: E402
                            share_arg)
from k25ref.tokenizer import Tokenizer  # noqa: E402
from k25ref.weights import LM_HEAD, TEXT, expected_tensors, vision_tensors  # noqa: E402

DATA = os.path.join(ROOT, "data", "tinyshakespeare")
TOKENIZER = os.path.join(ROOT, "k25ref", "assets", "tokenizer")
GROUP = 32                                   # INT4 group size (the release's)

NANO_TEXT = dict(hidden_size=192, intermediate_size=384, moe_intermediate_size=128, num_hidden_layers=4,
                 num_attention_heads=4, q_lora_rank=64, kv_lora_rank=64, qk_nope_head_dim=32, qk_rope_head_dim=16,
                 v_head_dim=32, n_routed_experts=16, num_experts_per_tok=2, n_shared_experts=1, n_group=1,
                 topk_group=1, norm_topk_prob=True, routed_scaling_factor=2.5, first_k_dense_replace=1,
                 rms_norm_eps=1e-5, max_position_embeddings=1024, rope_theta=50000.0,
                 rope_scaling={"type": "yarn", "factor": 4.0, "original_max_position_embeddings": 256,
                               "beta_fast": 32.0, "beta_slow": 1.0, "mscale": 1.0, "mscale_all_dim": 1.0},
                 attention_bias=False, initializer_range=0.02)
NANO_VISION = dict(init_pos_emb_height=8, init_pos_emb_width=8, init_pos_emb_time=4, vt_hidden_size=96,
                   vt_num_hidden_layers=3, vt_num_attention_heads=2, vt_intermediate_size=192)


TOWER_HEAD = 48                              # width of a vision attention head (--tower)


def nano_hub_config(vision=NANO_VISION):
    """The nano's config.json: K2.5's layout and key names, vocabulary of the project's 4096-id tokenizer."""
    return _hub_config(NANO_TEXT, vision, 4096)


def tower(value):
    """--tower "WIDTHxBLOCKS" -> the vision config: heads of 48, MLP twice the width (96x3 = NANO_VISION)."""
    try:
        width, blocks = (int(v) for v in value.lower().split("x"))
    except ValueError:
        width = blocks = 0
    if width <= 0 or width % TOWER_HEAD or not 1 <= blocks <= 27:
        raise argparse.ArgumentTypeError(f"{value!r} is not WIDTHxBLOCKS with the width a positive multiple of "
                                         f"{TOWER_HEAD} and 1-27 blocks (e.g. 96x3, the default, or 192x4)")
    return {**NANO_VISION, "vt_hidden_size": width, "vt_num_hidden_layers": blocks,
            "vt_num_attention_heads": width // TOWER_HEAD, "vt_intermediate_size": 2 * width}


def vision_of(folder):
    """The vision config keys NANO_VISION names, as a saved folder's config.json has them."""
    with open(os.path.join(folder, "config.json")) as f:
        saved = json.load(f)["vision_config"]
    return {k: saved[k] for k in NANO_VISION}


def vocabulary_of(folder):
    """A saved folder's text vocabulary size, or None when its config.json does not say."""
    try:
        with open(os.path.join(folder, "config.json")) as f:
            return json.load(f)["text_config"]["vocab_size"]
    except (OSError, ValueError, KeyError, TypeError):
        return None


# ----------------------------------------------------------------------------
# the torch model


def build_model(hub, seed):
    """transformers' Kimi K2.5 from the hub config (vision keys translated as the oracle does)."""
    from oracle import native_config
    from transformers import Kimi_K25ForConditionalGeneration
    torch.manual_seed(seed)
    config = native_config(hub)
    config.text_config.quantization_config = None           # trained in float32; INT4 is applied on save
    model = Kimi_K25ForConditionalGeneration(config)
    return model.float()


def experts_modules(model):
    return [layer.mlp.experts for layer in model.model.language_model.layers if hasattr(layer.mlp, "experts")]


def routers(model):
    return [layer.mlp.gate for layer in model.model.language_model.layers if hasattr(layer.mlp, "gate")]


def repeat_index(n, base):  # -> (n,) the old channel each of n new channels copies: 0..base-1, repeated
    return torch.arange(n) % base


def widened(w, rows, cols, k):  # (O, I) -> (len(rows), len(cols)): a Linear reading inputs repeated k times
    return w[rows][:, cols] / k


def grow_refusal(D0, blocks0, D, blocks):  # -> why a D0 x blocks0 tower cannot grow into D x blocks, or None
    if D % D0 or blocks < blocks0:
        return (f"a {D0}x{blocks0} tower grows only into a width that is a multiple of {D0} and "
                f"{blocks0} or more blocks, not {D}x{blocks}")
    return None


def grow_vision(model, saved, noise=0.01, seed=0):
    """Put the tower and projector of `saved` (a smaller --tower) into `model`'s with the same function
    (Net2Net): a tower k times as wide repeats every channel k times and divides the weights that read them by
    k (LayerNorm sees the same mean and variance; head h + j*old_heads copies head h), and blocks past the
    old depth start as identities (their attention and MLP outputs zero). Noise of `noise` x each matrix's
    spread on the copies' rows lets them drift apart."""
    old, new = saved.model.vision_tower, model.model.vision_tower
    D0, D = old.patch_embed.proj.out_channels, new.patch_embed.proj.out_channels
    blocks0, blocks = len(old.layers), len(new.layers)
    refusal = grow_refusal(D0, blocks0, D, blocks)
    if refusal:
        raise ValueError(refusal)
    k, gen = D // D0, torch.Generator().manual_seed(seed)

    def jitter(w):                                  # noise on the rows after the first copy
        copies = (torch.arange(w.shape[0]) >= w.shape[0] // k).float()[:, None]
        return w + noise * w.std() * torch.randn(w.shape, generator=gen) * copies

    state = new.state_dict()
    for name, w in old.state_dict().items():
        if w.dim() == 2:                                                     # Linear (out, in)
            state[name] = jitter(widened(w, repeat_index(k * w.shape[0], w.shape[0]),
                                         repeat_index(k * w.shape[1], w.shape[1]), k))
        elif name.endswith("position_embeddings"):                           # (h, w, D)
            state[name] = w[..., repeat_index(D, D0)].clone()
        else:                                                                # biases, norms, patch filters
            state[name] = w[repeat_index(k * w.shape[0], w.shape[0])].clone()
    for b in range(blocks0, blocks):
        for name in (f"layers.{b}.attn.proj.weight", f"layers.{b}.attn.proj.bias",
                     f"layers.{b}.mlp.fc2.weight", f"layers.{b}.mlp.fc2.bias"):
            state[name] = torch.zeros_like(state[name])
    new.load_state_dict(state)
    proj, merged = saved.model.mm_projector.state_dict(), torch.arange(4 * D)
    merged = (merged // D) * D0 + merged % D % D0                            # 2x2 patches side by side
    out = repeat_index(4 * D, 4 * D0)
    model.model.mm_projector.load_state_dict({
        "pre_norm.weight": proj["pre_norm.weight"][repeat_index(D, D0)],
        "pre_norm.bias": proj["pre_norm.bias"][repeat_index(D, D0)],
        "in_proj.weight": jitter(widened(proj["in_proj.weight"], out, merged, k)),
        "in_proj.bias": proj["in_proj.bias"][out],
        "out_proj.weight": proj["out_proj.weight"][:, out] / k,
        "out_proj.bias": proj["out_proj.bias"].clone()})


def int4_round(w):  # (..., O, I) -> same, the values INT4 + bf16 scale represent (compressed-tensors' bf16(q*s))
    """Symmetric group-32 INT4 along the input (last) dim, as k25ref.int4.quantize/dequantize, in torch."""
    g = w.reshape(*w.shape[:-1], w.shape[-1] // GROUP, GROUP)
    scale = (g.abs().amax(-1, keepdim=True) / 7.5).to(torch.bfloat16).float()
    scale = torch.where(scale == 0, torch.ones_like(scale), scale)
    q = torch.clamp(torch.round(g / scale), -8, 7)
    return (q * scale).to(torch.bfloat16).float().reshape(w.shape)


class FakeInt4(torch.nn.Module):
    """Quantisation-aware training: forward sees INT4-rounded experts, gradients pass straight through."""

    def forward(self, w):
        return w + (int4_round(w) - w).detach()


def start_qat(model):
    from torch.nn.utils import parametrize
    for ex in experts_modules(model):
        for name in ("gate_up_proj", "down_proj"):
            parametrize.register_parametrization(ex, name, FakeInt4())


def finish_qat(model):
    """Drop the fake quantisation, keeping the float weights (saving quantises them once, from these)."""
    from torch.nn.utils import parametrize
    for ex in experts_modules(model):
        for name in ("gate_up_proj", "down_proj"):
            if parametrize.is_parametrized(ex, name):
                parametrize.remove_parametrizations(ex, name, leave_parametrized=False)


@torch.no_grad()
def round_to_saved(model):
    """Round the model in place to exactly what the saved checkpoint holds: experts INT4, the rest BF16
    (correction biases stay float32)."""
    finish_qat(model)
    for ex in experts_modules(model):
        for name in ("gate_up_proj", "down_proj"):
            p = getattr(ex, name)
            w = p.data.numpy()                                              # (E, O, I)
            p.data = torch.from_numpy(np.stack([dequantize(quantize(np.ascontiguousarray(w[x]), GROUP))
                                                for x in range(w.shape[0])]))
    for name, p in model.named_parameters():
        if ".mlp.experts." not in name:
            p.data = p.data.to(torch.bfloat16).float()


class Balancer:
    """DeepSeek-V3's aux-loss-free load balancing: after each step, nudge every router's correction bias
    by +gamma for under-loaded experts and -gamma for over-loaded ones (the bias only affects the choice)."""

    def __init__(self, model, gamma=1e-3):
        self.gamma, self.counts, self.hooks = gamma, {}, []
        for gate in routers(model):
            self.hooks.append(gate.register_forward_hook(self._count))

    def _count(self, gate, args, output):
        idx = output[2]
        self.counts[gate] = self.counts.get(gate, 0) + torch.bincount(idx.flatten(), minlength=gate.num_experts)

    @torch.no_grad()
    def step(self):
        for gate, c in self.counts.items():
            c = c.float()
            gate.e_score_correction_bias += self.gamma * torch.sign(c.mean() - c)
        self.counts = {}


# ----------------------------------------------------------------------------
# data


class Data:
    """Token streams and fresh synthetic media, all from one seeded generator."""

    def __init__(self, tok, seed, window=128, p_large=0.25, varied=0.0, p_small=shapes.P_SMALL_OBJECT,
                 p_tiny=shapes.P_TINY_FRAME):
        self.tok, self.window, self.rng = tok, window, np.random.default_rng(seed)
        self.p_large, self.large, self.varied = p_large, False, varied
        self.p_small, self.p_tiny = p_small, p_tiny
        with open(os.path.join(DATA, "train.txt"), encoding="utf-8") as f:
            self.train = np.array(tok.encode(f.read()), np.int64)
        self.pad = tok.media_pad_id

    def text(self):
        """-> (ids, loss mask): a raw window of the training text, every next token counts."""
        s = int(self.rng.integers(0, len(self.train) - self.window - 1))
        ids = self.train[s:s + self.window + 1]
        return ids, np.ones(len(ids), bool), None, None, None, None

    def chat(self, content, reply):
        """Render user content with the chat template (thinking off), append reply + <|im_end|>."""
        prompt = self.tok.apply_chat_template([{"role": "user", "content": content}], thinking=False)
        answer = self.tok.encode(reply) + [self.tok.im_end_id]
        ids = np.array(prompt + answer, np.int64)
        mask = np.zeros(len(ids), bool)
        mask[len(prompt):] = True                              # predict the reply (targets shifted below)
        return ids, mask

    def chat_text(self):
        s = int(self.rng.integers(0, len(self.train) - 96))
        cut = int(self.rng.integers(4, 24))
        user, reply = self.tok.decode(self.train[s:s + cut]), self.tok.decode(self.train[s + cut:s + cut + 64])
        ids, mask = self.chat(user, reply)
        return ids, mask, None, None, None, None

    def chat_image(self):
        drawn = None
        if self.rng.random() < self.varied:
            masks = []
            image, text, objects = shapes.varied_image(self.rng, self.large, masks, self.p_small, self.p_tiny)
            drawn = media.preprocess_image(masks[0])[0]
        else:
            image, text, objects = shapes.random_image(self.rng, shapes.random_size(self.rng, self.large))
        pv, grid = media.preprocess_image(image)
        ids, mask = self.chat([{"type": "image"}, {"type": "text", "text": shapes.IMAGE_PROMPT}], text)
        return self._expand(ids, mask, grid) + (pv, grid, objects, drawn)

    def chat_video(self):
        drawn = None
        if self.rng.random() < self.varied:
            masks = []
            frames, fps, text, objects = shapes.varied_video(self.rng, self.large, masks, self.p_small, self.p_tiny)
            drawn = media.preprocess_video(masks, fps=fps)[0]
        else:
            (frames, text, objects), fps = shapes.random_video(self.rng), shapes.VIDEO_FPS
        pv, grid, stamps = media.preprocess_video(frames, fps=fps)
        content = [{"type": "video", "timestamps": stamps}, {"type": "text", "text": shapes.VIDEO_PROMPT}]
        ids, mask = self.chat(content, text)
        return self._expand(ids, mask, grid) + (pv, grid, objects, drawn)

    def _expand(self, ids, mask, grid):
        from k25ref.multimodal import expand_placeholders
        full = expand_placeholders(ids, grid, self.pad)
        extra = len(full) - len(ids)
        return full, np.concatenate([np.zeros(extra, bool), mask])    # placeholders all precede the reply

    def batch(self, kinds):
        """Samples of the given kinds; the images of one batch are all small or all large (p_large), so a
        batch is padded to similar lengths."""
        self.large = bool(self.rng.random() < self.p_large)
        return [getattr(self, k)() for k in kinds]


# ----------------------------------------------------------------------------
# forward pass with media


def vision_features(model, pv, grid):  # (N, 3, 14, 14), (I, 3) -> (sum h*w/4, D)
    """Tower + projector called directly, one item (image or video chunk) per call (module doc)."""
    tower, projector = model.model.vision_tower, model.model.mm_projector
    out, start = [], 0
    for thw in grid.tolist():
        n = int(np.prod(thw))
        pooled = tower(torch.from_numpy(pv[start:start + n]), grid_thw=torch.tensor([thw])).pooler_output
        out.append(projector(pooled).squeeze(1))
        start += n
    return torch.cat(out)


def token_labels(pv, grid, objects, drawn=None):  # (N, 3, 14, 14), (I, 3), objects[, (N, 3, 14, 14)] -> (M,) x 3
    """What each media token shows, read off the pixels the model is fed: kind 0 = background, else 1 + the
    index of (colour, shape) of the object it covers; `where` = that object's position (images) or direction
    (videos) index; mask = the token covers an object. A token is the 2x2 patches (x all frames of a chunk)
    that the projector merges. Object pixels are those of the drawn object mask `drawn` (varied scenes, whose
    backgrounds are not flat), preprocessed like the pixels; without it, those far from the background, the
    median colour of the real (unpadded) pixels. With two objects a token belongs to the one whose named
    position is nearest."""
    colours, positions, directions = list(shapes.COLOURS), list(shapes.POSITIONS), list(shapes.DIRECTIONS)
    kind, where, start = [], [], 0
    for t, h, w in grid.tolist():
        frames = unpatchify(pv[start:start + t * h * w], t, h, w)
        real = (frames != -1.0).any(-1)                                         # zero padding is exactly -1
        if drawn is not None:
            obj = real & (unpatchify(drawn[start:start + t * h * w], t, h, w) > 0).any(-1)
        else:
            bg = np.median(frames[real], axis=0)
            obj = real & (np.abs(frames - bg).sum(-1) > 0.8)                    # (t, H, W)
        start += t * h * w
        H, W = real[0].any(1).sum(), real[0].any(0).sum()                       # unpadded extent
        least = 0.1 if drawn is None else 0.01              # a drawn mask has no noise: 8 pixels are an object
        cover = obj.any(0).reshape(h // 2, 28, w // 2, 28).mean((1, 3)) > least  # (h/2, w/2)
        for r in range(h // 2):
            for c in range(w // 2):
                if not cover[r, c]:
                    kind.append(0)
                    where.append(0)
                    continue
                x, y = (c + 0.5) * 28 / W, (r + 0.5) * 28 / H
                o = min(objects, key=lambda o: np.hypot(*(np.subtract(shapes.POSITIONS[o.position], (x, y))))
                        if o.position else 0)
                kind.append(1 + colours.index(o.colour) * len(shapes.SHAPES) + shapes.SHAPES.index(o.shape))
                where.append(directions.index(o.direction) if o.direction else positions.index(o.position))
    kind, where = torch.tensor(kind), torch.tensor(where)
    return kind, where, kind > 0


def unpatchify(patches, t, h, w):  # (t*h*w, 3, 14, 14) -> (t, h*14, w*14, 3)
    """One item's patches back into frames."""
    return patches.reshape(t, h, w, 3, 14, 14).transpose(0, 1, 4, 2, 5, 3).reshape(t, h * 14, w * 14, 3)


class Probe(torch.nn.Module):
    """Training-only read-out heads on every media token (never saved): they tell the vision tower and the
    projector, token by token, what captions need -- which object a token shows and where that object is
    (or which way it moves) -- instead of leaving that signal to trickle back through the decoder."""

    def __init__(self, D, per_object=False):
        super().__init__()
        self.kind = torch.nn.Linear(D, 1 + len(shapes.COLOURS) * len(shapes.SHAPES))
        self.position = torch.nn.Linear(D, len(shapes.POSITIONS))
        self.direction = torch.nn.Linear(D, len(shapes.DIRECTIONS))
        self.per_object = per_object

    def loss(self, feats, sample):  # (M, D) features of one media item, its sample -> scalar
        """Cross-entropy of what every token shows, plus that of where its object is (or goes). By token, the
        mean over tokens, so an object counts by its area; per_object, the mean over the background and each
        object of the mean over its tokens, so an object of one token counts as much as one of forty."""
        kind, where, on = token_labels(*sample[2:6])
        head = self.direction if sample[4][0].direction else self.position
        if not self.per_object:
            loss = F.cross_entropy(self.kind(feats), kind)
            return loss + F.cross_entropy(head(feats[on]), where[on]) if on.any() else loss
        group = kind * max(len(shapes.POSITIONS), len(shapes.DIRECTIONS)) + where        # 0 = background
        weight = per_group_mean(group)                                                   # (M,)
        loss = (F.cross_entropy(self.kind(feats), kind, reduction="none") * weight).sum() / weight.sum()
        if on.any():
            where_ce = F.cross_entropy(head(feats[on]), where[on], reduction="none")
            loss = loss + (where_ce * weight[on]).sum() / weight[on].sum()
        return loss


def per_group_mean(group):  # (M,) group ids -> (M,) weights 1 / (tokens in the token's group)
    """Weights that make a weighted sum the sum over groups of each group's mean."""
    _, inverse, counts = torch.unique(group, return_inverse=True, return_counts=True)
    return 1.0 / counts[inverse].float()


@torch.no_grad()
def read_objects(model, probe, pv, grid, objects, drawn):  # -> [(seen, colour, shape, where)] bools per object
    """The read-out of one media item, object by object: over the tokens that `token_labels` gives an object,
    whether most are called an object (seen) and whether their summed log-probabilities, background left
    out, name its colour, shape and position (or direction). An object without tokens is read wrong."""
    feats = vision_features(model, pv, grid)                                  # (M, D)
    kind, where, on = token_labels(pv, grid, objects, drawn)
    kinds = probe.kind(feats).log_softmax(-1)
    wheres = (probe.direction if objects[0].direction else probe.position)(feats).log_softmax(-1)
    colours, n_shapes, out = list(shapes.COLOURS), len(shapes.SHAPES), []
    for o in objects:
        w = list(shapes.DIRECTIONS).index(o.direction) if o.direction else list(shapes.POSITIONS).index(o.position)
        mine = on & (kind == 1 + colours.index(o.colour) * n_shapes + shapes.SHAPES.index(o.shape)) & (where == w)
        if not mine.any():
            out.append((False, False, False, False))
            continue
        colour, shape = divmod(int(kinds[mine, 1:].sum(0).argmax()), n_shapes)
        out.append((bool((kinds[mine].argmax(-1) > 0).float().mean() > 0.5), colour == colours.index(o.colour),
                    shape == shapes.SHAPES.index(o.shape), int(wheres[mine].sum(0).argmax()) == w))
    return out


def load_probe(folder, path):
    """A saved tower (oracle model) and the read-out trained with it (--probe-file), for read_objects."""
    from oracle import load_oracle
    model = load_oracle(folder)
    probe = Probe(model.config.text_config.hidden_size)
    probe.load_state_dict(torch.load(path))
    return model.eval(), probe.eval()


def probe_only_loss(model, samples, probe):
    """Mean read-out loss over media items, through the tower and projector alone (--vision-only: the
    decoder is not run, so a step costs a third of a captioning step with the same media)."""
    return sum(probe.loss(vision_features(model, s[2], s[3]), s) for s in samples) / len(samples)


def batch_loss(model, samples, pad_id, probe=None, teacher=None):
    """Mean next-token cross entropy over the masked targets of a right-padded batch (plus, with a probe,
    its mean read-out loss over the media items). With a teacher (a text batch under --text-teacher), also
    the mean KL(teacher || model) of the next-token distributions at those targets:
        KL = sum_v p_teacher(v) (log p_teacher(v) - log p_model(v))
    -> cross entropy, read-out loss (or KL)."""
    if not samples:                                 # a phase without this kind of sample
        return torch.zeros(()), torch.zeros(())
    if probe is not None and teacher is not None:   # the second value is one or the other
        raise ValueError("batch_loss: a probe (media batches) or a teacher (text batches), not both")
    logits, targets, aux = masked_logits(model, samples, pad_id, probe)
    ce = F.cross_entropy(logits, targets)
    if teacher is None:
        return ce, aux
    with torch.no_grad():
        taught = masked_logits(teacher, samples, pad_id)[0]
    return ce, F.kl_div(F.log_softmax(logits, -1), F.log_softmax(taught, -1), log_target=True, reduction="batchmean")


def masked_logits(model, samples, pad_id, probe=None):
    """A right-padded batch -> (K, V) logits at its K masked targets, the (K,) targets, and with a probe the
    mean read-out loss over its media items (else 0)."""
    T = max(len(s[0]) for s in samples)
    ids = torch.full((len(samples), T), pad_id, dtype=torch.long)
    mask = torch.zeros((len(samples), T), dtype=torch.bool)
    for b, s in enumerate(samples):
        ids[b, :len(s[0])], mask[b, :len(s[1])] = torch.from_numpy(s[0]), torch.from_numpy(s[1])
    lm = model.model.language_model
    embeds = lm.embed_tokens(ids)                                            # (B, T, D)
    media_items = [s for s in samples if s[2] is not None]
    aux = 0.0
    if media_items:
        per_item = [vision_features(model, s[2], s[3]) for s in media_items]
        if probe is not None:
            aux = sum(probe.loss(f, s) for f, s in zip(per_item, media_items)) / len(media_items)
        feats = torch.cat(per_item)
        slots = ids == model.config.image_token_id
        # Text-only rows may hold the placeholder id only as padding; media rows hold exactly their count.
        has_media = torch.tensor([s[2] is not None for s in samples])[:, None]
        slots &= has_media & (torch.arange(T)[None] < torch.tensor([len(s[0]) for s in samples])[:, None])
        assert int(slots.sum()) == feats.shape[0], (int(slots.sum()), feats.shape)
        embeds = embeds.masked_scatter(slots[..., None], feats)
    hidden = lm(inputs_embeds=embeds, use_cache=False).last_hidden_state
    logits = model.lm_head(hidden[:, :-1])                                   # (B, T-1, V)
    targets, m = ids[:, 1:], mask[:, 1:]
    return logits[m], targets[m], aux


# ----------------------------------------------------------------------------
# saving in the released layout


def vision_inverse(cfg):
    """transformers vision/projector name -> (released name, flat index array): where each transformers
    element comes from, found by converting index-valued tensors with transformers' own conversion."""
    from oracle_vision import convert, native_config
    native = native_config(cfg)
    probes, offset = {}, 0
    for name, (_, shape) in vision_tensors(cfg).items():
        n = int(np.prod(shape))
        probes[name] = torch.arange(offset, offset + n, dtype=torch.float64).reshape(shape)
        offset += n
    starts = {name: int(t.flatten()[0]) for name, t in probes.items()}
    converted = convert(probes, native)
    out = {}
    for tname, t in converted.items():
        flat = t.flatten().to(torch.int64).numpy()
        src = max((n for n in starts if starts[n] <= flat.min()), key=lambda n: starts[n])
        out[tname] = (src, flat - starts[src])
    return out


def float_experts(experts, name):
    """The float weights behind an expert tensor (not its fake-quantised view during QAT)."""
    from torch.nn.utils import parametrize
    if parametrize.is_parametrized(experts, name):
        return getattr(experts.parametrizations, name).original.detach().float()
    return getattr(experts, name).detach().float()


def released_tensors(model, hub):
    """-> list of (name, dtype, ndarray) in the released layout, from the torch model's current weights."""
    cfg = from_hf(hub)
    state = {k: v.detach().float().numpy() for k, v in model.state_dict().items()}
    out = {}
    lm_prefix = "model.language_model."
    F_ = cfg.text.moe_intermediate_size
    for key, value in state.items():
        if key.startswith(lm_prefix):
            rest = key[len(lm_prefix):]
            if ".mlp.experts." in rest:                      # written below, from the float weights
                continue
            if rest.endswith("e_score_correction_bias"):
                out[TEXT + rest] = ("F32", value.astype(np.float32))
            else:
                out[TEXT + rest] = ("BF16", f32_to_bf16(value))
        elif key == "lm_head.weight":
            out[LM_HEAD] = ("BF16", f32_to_bf16(value))
    for i, layer in enumerate(model.model.language_model.layers):
        if not hasattr(layer.mlp, "experts"):
            continue
        gu = float_experts(layer.mlp.experts, "gate_up_proj").numpy()       # (E, 2F, D)
        dn = float_experts(layer.mlp.experts, "down_proj").numpy()          # (E, D, F)
        for x in range(gu.shape[0]):
            for proj, w in (("gate_proj", gu[x, :F_]), ("up_proj", gu[x, F_:]), ("down_proj", dn[x])):
                q = quantize(np.ascontiguousarray(w), GROUP)
                p = f"{TEXT}layers.{i}.mlp.experts.{x}.{proj}."
                out[p + "weight_packed"] = ("I32", q.packed)
                out[p + "weight_scale"] = ("BF16", f32_to_bf16(q.scale))
                out[p + "weight_shape"] = ("I32", np.array(q.shape, np.int32))
    shapes_ = vision_tensors(cfg)
    flat = {name: np.full(int(np.prod(s)), np.nan, np.float32) for name, (_, s) in shapes_.items()}
    for tname, (src, index) in vision_inverse(cfg).items():
        flat[src][index] = state[tname].reshape(-1)
    for name, (_, s) in shapes_.items():
        if np.isnan(flat[name]).any():
            raise RuntimeError(f"vision tensor {name} not fully covered by the inverse conversion")
        out[name] = ("BF16", f32_to_bf16(flat[name].reshape(s)))
    expected = expected_tensors(cfg)
    if set(out) != set(expected):
        raise RuntimeError(f"saved names differ from the layout: missing {sorted(set(expected) - set(out))[:5]}, "
                           f"extra {sorted(set(out) - set(expected))[:5]}")
    return [(name, *out[name]) for name in expected]


def kept_decoder(tensors, hub, folder):
    """A frozen decoder is saved as it was read: every tensor outside the tower and projector is taken byte for
    byte from `folder` (quantising INT4 experts again would move them: the scale is max|W| / 7.5 of values
    that reach 8 scales)."""
    vision, saved = vision_tensors(from_hf(hub)), Checkpoint(folder)
    return [(name, dtype, arr) if name in vision else (name, saved.info(name).dtype, np.array(saved.raw(name)))
            for name, dtype, arr in tensors]


def save_released(model, hub, folder, decoder_from=None):
    """Write config.json, one shard, the index and the tokenizer into `folder` (replaced atomically-ish); with
    `decoder_from`, the decoder's tensors are that folder's, unchanged."""
    os.makedirs(folder, exist_ok=True)
    tensors = released_tensors(model, hub)
    if decoder_from:
        tensors = kept_decoder(tensors, hub, decoder_from)
    file = "model-00001-of-00001.safetensors"
    tmp = os.path.join(folder, file + ".tmp")
    write_safetensors(tmp, tensors)
    os.replace(tmp, os.path.join(folder, file))
    with open(os.path.join(folder, "model.safetensors.index.json"), "w") as f:
        json.dump({"metadata": {"total_size": sum(a.nbytes for _, _, a in tensors)},
                   "weight_map": {name: file for name, _, _ in tensors}}, f, indent=2)
    with open(os.path.join(folder, "config.json"), "w") as f:
        json.dump(hub, f, indent=2)
    copy_tokenizer(folder, hub["text_config"]["vocab_size"])


# ----------------------------------------------------------------------------
# checks


@torch.no_grad()
def torch_logits(model, sample):
    """Logits of one sample (ids, mask, pv, grid) from the torch model, media included: (T, V)."""
    ids, _, pv, grid = sample[:4]
    lm = model.model.language_model
    embeds = lm.embed_tokens(torch.from_numpy(ids)[None])
    if pv is not None:
        slots = torch.from_numpy(ids == model.config.image_token_id)[None, :, None]
        embeds = embeds.masked_scatter(slots, vision_features(model, pv, grid))
    return model.lm_head(lm(inputs_embeds=embeds, use_cache=False).last_hidden_state)[0].numpy()


def relative_error(a, b):
    return float(np.abs(a - b).max() / np.abs(b).max())


def oracle_agreement(folder, seed=7):
    """A saved folder under the oracle and under k25ref: relative logit error and argmax agreement on 200
    held-out tokens, a small and a large image prompt, and a two-chunk video prompt (docs/nano.md)."""
    import k25ref
    from oracle import load_oracle
    tok = Tokenizer.from_pretrained(folder)
    data = Data.__new__(Data)                            # no training text needed
    data.tok, data.rng, data.pad, data.large = tok, np.random.default_rng(seed), tok.media_pad_id, False
    data.varied = 0.0
    with open(os.path.join(DATA, "heldout.txt"), encoding="utf-8") as f:
        text = (np.array(tok.encode(f.read()[:2000])[:200], np.int64), None, None, None)
    video = data.chat_video()
    while len(video[3]) < 2:
        video = data.chat_video()
    data.large = True
    large = data.chat_image()
    data.large = False
    ours, orc = k25ref.load_model(folder), load_oracle(folder)
    report = {}
    for name, s in (("text", text), ("image_small", data.chat_image()), ("image_large", large), ("video", video)):
        ref, got = torch_logits(orc, s), ours.logits(s[0], s[2], s[3])
        report[name] = {"tokens": len(s[0]), "rel_err": relative_error(got, ref),
                        "argmax_equal": float((got.argmax(-1) == ref.argmax(-1)).mean())}
    return report


def check_round_trip(model, folder, samples):
    """Trained model (rounded as saved) vs the saved folder under the oracle and under k25ref."""
    import k25ref
    from oracle import load_oracle
    round_to_saved(model)
    model.eval()
    oracle = load_oracle(folder)
    ours = k25ref.load_model(folder)
    report = {}
    for k, s in enumerate(samples):
        ref = torch_logits(model, s)
        orc = torch_logits(oracle, s)
        kl = ours.logits(s[0], s[2], s[3])
        report[f"sample{k}"] = {"oracle_vs_trained": relative_error(orc, ref),
                                "k25ref_vs_oracle": relative_error(kl, orc)}
    return report


# ----------------------------------------------------------------------------
# training loop


def take(model, saved, parts):
    """Copy parts (`model.model.<part>`, or "lm_head") of a loaded folder's model into `model`."""
    for part in parts:
        mine, theirs = (m.lm_head if part == "lm_head" else getattr(m.model, part) for m in (model, saved))
        mine.load_state_dict(theirs.state_dict())


def lr_at(progress, peak, warmup=0.03, floor=0.1):
    if progress < warmup:
        return peak * progress / warmup
    p = (progress - warmup) / (1 - warmup)
    return peak * (floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * min(p, 1.0))))


def train(args):
    from oracle import load_oracle
    from torch.nn.utils import parametrize
    torch.set_num_threads(args.threads)
    tok = Tokenizer.from_pretrained(TOKENIZER)
    hub = nano_hub_config(args.tower)
    model, vision = build_model(hub, args.seed), ("vision_tower", "mm_projector")
    if args.init:                  # continue from a released-layout folder (fresh optimiser), its tower too
        take(model, load_oracle(args.init), ("language_model", "lm_head") +
             (() if args.vision_from or args.grow_from else vision))
    if args.vision_from:           # the tower and projector of another run (--vision-only), of any --tower size
        take(model, load_oracle(args.vision_from), vision)
    if args.grow_from:             # a smaller tower, grown into --tower with the same function
        grow_vision(model, load_oracle(args.grow_from), seed=args.seed)
    if args.freeze_decoder:        # captions teach the tower and projector; the decoder stays as --init saved it
        for m in (model.model.language_model, model.lm_head):
            m.requires_grad_(False)
    teacher = None
    if args.text_teacher:          # text targets: this folder's next-token distributions, not the tokens
        teacher = load_oracle(args.text_teacher).eval().requires_grad_(False)
    model.train()
    data = Data(tok, args.seed, p_large=args.p_large, varied=args.varied, p_small=args.small_objects,
                p_tiny=args.tiny_frames)
    balancer = None if args.freeze_decoder else Balancer(model)
    probe = Probe(hub["text_config"]["hidden_size"], args.probe_per_object) if args.probe > 0 or args.vision_only else None
    if probe is not None and args.probe_file and os.path.exists(args.probe_file):
        probe.load_state_dict(torch.load(args.probe_file))
    trained = [model.model.vision_tower, model.model.mm_projector] if args.vision_only else [model]
    params = [p for m in trained for p in m.parameters() if p.requires_grad] + (list(probe.parameters()) if probe else [])
    seeing = {id(p) for m in (model.model.vision_tower, model.model.mm_projector) for p in m.parameters()}
    seeing |= {id(p) for p in probe.parameters()} if probe else set()
    groups = [{"params": [p for p in params if id(p) in seeing], "scale": 1.0},
              {"params": [p for p in params if id(p) not in seeing], "scale": args.decoder_lr}]
    opt = torch.optim.AdamW([g for g in groups if g["params"]], lr=args.lr, betas=(0.9, 0.95), weight_decay=0.05)
    kinds = ["text"] * args.text_batch + ["chat_text"] * args.chat_text_batch
    media_kinds = ["chat_image"] * args.image_batch + ["chat_video"] * args.video_batch
    budget = args.minutes * 60.0
    log_path = args.log or os.path.join(args.out, "train_log.jsonl")
    os.makedirs(os.path.dirname(os.path.abspath(log_path)), exist_ok=True)
    log = open(log_path, "w")
    kept = args.init if args.freeze_decoder else None
    t0, last_save, step, qat = time.time(), time.time(), 0, False
    while True:
        elapsed = time.time() - t0
        progress = step / args.steps if args.quick else elapsed / budget
        if progress >= 1.0:
            break
        if not qat and progress >= 1.0 - args.qat:
            start_qat(model)
            qat = True
        for g in opt.param_groups:
            g["lr"] = lr_at(progress, args.lr) * g["scale"]
        with parametrize.cached():                          # fake-quantise each expert tensor once per pass
            if args.vision_only:
                text_loss = media_loss = torch.zeros(())
                probe_loss = probe_only_loss(model, data.batch(media_kinds), probe)
                probe_loss.backward()
            else:
                text_loss, text_kl = batch_loss(model, data.batch(kinds), tok.media_pad_id, teacher=teacher)
                media_loss, probe_loss = batch_loss(model, data.batch(media_kinds), tok.media_pad_id, probe)
                ((text_loss if teacher is None else text_kl) + media_loss + args.probe * probe_loss).backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        if balancer:
            balancer.step()
        step += 1
        rec = {"step": step, "seconds": round(time.time() - t0, 1), "lr": opt.param_groups[0]["lr"],
               "text_loss": round(text_loss.item(), 4), "media_loss": round(media_loss.item(), 4),
               "probe_loss": round(float(torch.as_tensor(probe_loss).detach()), 4), "qat": qat}
        if teacher is not None:
            rec["text_kl"] = round(text_kl.item(), 4)
        log.write(json.dumps(rec) + "\n")
        log.flush()
        if step % 10 == 0 or args.quick:
            print(json.dumps(rec), flush=True)
        if not args.quick and time.time() - last_save > args.save_every * 60:
            save_released(model, hub, args.out, kept)
            last_save = time.time()
    log.close()
    meta = {"seed": args.seed, "steps": step, "seconds": round(time.time() - t0, 1), "args": vars(args),
            "torch": torch.__version__}
    finish_qat(model)
    save_released(model, hub, args.out, kept)                 # the model first: a failed read-out save cannot cost it
    if probe is not None and args.probe_file:
        with atomic_path(args.probe_file) as tmp:           # an interrupted save leaves the old read-out whole
            torch.save(probe.state_dict(), tmp)
    with open(os.path.splitext(log_path)[0] + ".meta.json", "w") as f:
        json.dump(meta, f, indent=2)
    return model, hub, data, meta


def read_logs(paths):
    """JSON-lines logs of consecutive phases -> records with "minute" (wall clock from the start of the recipe)
    and the minutes at which phases start."""
    recs, offset, starts = [], 0.0, []
    for path in paths:
        with open(path) as f:
            phase = [json.loads(line) for line in f if line.strip()]
        starts.append(offset)
        recs += [{**r, "minute": offset + r["seconds"] / 60} for r in phase]
        offset = recs[-1]["minute"] if recs else offset
    return recs, starts[1:]


def runs_of(recs, key):
    """The records that measured `key`, split into phases (a phase's steps count up; the next starts again at 1)."""
    runs = []
    for r in recs:
        if not r.get(key):                                  # 0.0: that part of the loss did not run
            continue
        if not runs or r["step"] <= runs[-1][-1]["step"]:
            runs.append([])
        runs[-1].append(r)
    return runs


def new_figure():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt.subplots(figsize=(7, 4))


def curve(ax, x, y, smooth, colour, label):
    """A loss series faint, and its moving average over `smooth` steps (labelled) when it has that many."""
    ax.plot(x, y, alpha=0.15, color=f"C{colour}")
    if len(y) > smooth:
        ax.plot(x[smooth - 1:], np.convolve(y, np.ones(smooth) / smooth, "valid"), label=label, color=f"C{colour}")


def save_figure(fig, ax, png, xlabel, ylabel, title):
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.legend(fontsize=8)
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(png)), exist_ok=True)
    fig.savefig(png, dpi=110)


def plot_log(log_paths, png, smooth=100):
    """The loss curve against wall time: text, media-chat and read-out loss (moving averages over `smooth`
    steps), phase starts and QAT marked."""
    recs, phase_starts = read_logs(log_paths)
    fig, ax = new_figure()
    for colour, (key, label) in enumerate((("text_loss", "text batch (Shakespeare windows + text chat)"),
                                           ("media_loss", "caption batch (assistant reply tokens)"),
                                           ("probe_loss", "media read-out, training only (Probe)"))):
        for k, run in enumerate(runs_of(recs, key)):
            curve(ax, np.array([r["minute"] for r in run]), np.array([r[key] for r in run]), smooth, colour,
                  None if k else label)
    for k, s in enumerate(phase_starts):
        ax.axvline(s, color="k", ls="--", lw=0.8, label="next phase starts" if k == 0 else None)
    qat = [r["minute"] for r in recs if r["qat"]]
    if qat:
        ax.axvspan(qat[0], qat[-1], color="grey", alpha=0.15, label="INT4 quantisation-aware")
    ax.set_yscale("log")
    save_figure(fig, ax, png, "wall-clock minutes", "cross entropy, nats/token (training batches)",
                "Kimi-K2.5-nano training loss")


def plot_side_by_side(log_paths, png, smooth=50):
    """Runs started together (e.g. --vision-only towers of two sizes): each run's read-out loss (moving
    average over `smooth` steps) against its own wall-clock minutes, labelled by the run's folder."""
    fig, ax = new_figure()
    for colour, path in enumerate(log_paths):
        recs, _ = read_logs([path])
        label = f"{os.path.basename(os.path.dirname(os.path.abspath(path)))} ({len(recs)} steps)"
        curve(ax, np.array([r["minute"] for r in recs]), np.array([r["probe_loss"] for r in recs]), smooth,
              colour, label)
    save_figure(fig, ax, png, "wall-clock minutes", "read-out cross entropy (training batches)",
                "Vision tower alone: read-out loss, runs side by side")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default=os.path.join(ROOT, "k25ref", "assets", "nano"))
    p.add_argument("--minutes", type=positive_float, default=75.0, help="wall-time budget of the training loop")
    p.add_argument("--seed", type=nonnegative_int, default=0)
    p.add_argument("--lr", type=nonnegative_float, default=2e-3)
    p.add_argument("--decoder-lr", type=nonnegative_float, default=None, help="the decoder's (embeddings, layers, "
                   "head) learning rate as a multiple of --lr (default 1); the tower, projector and read-out take --lr")
    p.add_argument("--init", type=checkpoint_folder, default=None, help="start from this released-layout folder instead of random weights")
    p.add_argument("--qat", type=share_arg, default=None, help="final fraction trained with INT4 fake-quantised "
                   "experts (default 0.25)")
    p.add_argument("--text-batch", type=nonnegative_int, default=None, help="raw text windows per step (default 8)")
    p.add_argument("--chat-text-batch", type=nonnegative_int, default=None, help="chat-template text samples per step (default 2)")
    p.add_argument("--image-batch", type=nonnegative_int, default=8, help="captioned images per step")
    p.add_argument("--video-batch", type=nonnegative_int, default=4, help="captioned clips per step")
    p.add_argument("--log", default=None, help="JSON-lines loss log (default: OUT/train_log.jsonl); "
                   "with --plot, comma-separated logs of consecutive phases")
    p.add_argument("--p-large", type=share_arg, default=0.25, help="share of caption batches with large images")
    p.add_argument("--varied", type=share_arg, default=0.0, help="share of images and videos drawn by "
                   "k25ref.shapes.varied_image/varied_video (other frames, backgrounds, looks, frame rates, "
                   "single-chunk clips) instead of random_image/random_video")
    p.add_argument("--small-objects", type=share_arg, default=None, help="in varied scenes, the share of "
                   f"objects drawn small (7-12%% of the frame's short side; default {shapes.P_SMALL_OBJECT})")
    p.add_argument("--tiny-frames", type=share_arg, default=None, help="in varied scenes, the share of not-large "
                   f"frames drawn tiny (36-56 px a side; default {shapes.P_TINY_FRAME}); tiny frames "
                   "are cheap, so a high share shows the tower more small objects a minute")
    p.add_argument("--probe", type=nonnegative_float, help="weight of the training-only media read-out loss "
                   "beside the captions (class Probe; 0 = off; default 1); --vision-only trains on it alone")
    p.add_argument("--probe-per-object", action="store_true", help="weigh the read-out loss by object, not by "
                   "token: the background and every object count once, so a small object's few tokens weigh "
                   "as much as a large one's many (default: every token counts once)")
    p.add_argument("--vision-only", action="store_true", help="train only the tower, projector and read-out, "
                   "on media with the read-out loss (no decoder, no captions)")
    p.add_argument("--freeze-decoder", action="store_true", help="with --init: train only the tower, projector "
                   "and read-out, on captions through the decoder of --init, which is saved unchanged (byte for "
                   "byte), so the text loss is that folder's; no text batches, no INT4 fake quantisation, no "
                   "router balancing")
    p.add_argument("--text-teacher", type=checkpoint_folder, default=None, metavar="FOLDER",
                   help="text batches learn this folder's next-token distributions (KL divergence) instead of the "
                   "tokens, so the decoder can train long on captions without over-fitting the training text; "
                   "the model whose text is to be kept (e.g. the last release), which need not be --init")
    p.add_argument("--vision-from", type=checkpoint_folder, default=None, metavar="FOLDER",
                   help="take the vision tower and projector from this folder (a --vision-only run)")
    p.add_argument("--grow-from", type=checkpoint_folder, default=None, metavar="FOLDER", help="start the tower and projector from "
                   "this folder's smaller tower, grown into --tower with the same function: wider by repeating "
                   "channels (a whole multiple), deeper by identity blocks")
    p.add_argument("--probe-file", default=None, help="read-out weights: loaded if the file exists, saved at the end")
    p.add_argument("--tower", type=tower, default=None, metavar="WIDTHxBLOCKS",
                   help="the vision tower's size: width (a multiple of 48, one head per 48) x blocks, MLP twice "
                   "the width; default 96x3 (NANO_VISION), or the tower of --init / --vision-from")
    p.add_argument("--threads", type=positive_int, default=2)
    p.add_argument("--save-every", type=positive_float, default=8.0, help="minutes between partial checkpoints")
    p.add_argument("--quick", action="store_true", help="a few steps on tiny batches (smoke test)")
    p.add_argument("--steps", type=positive_int, default=4, help="steps in --quick mode")
    p.add_argument("--check", action="store_true", help="reload the saved folder and compare logits")
    p.add_argument("--plot", default=None, metavar="PNG", help="only plot the loss log (--log) to PNG and exit")
    p.add_argument("--side-by-side", action="store_true", help="with --plot: the --log files are runs started "
                   "together, not phases; plot their read-out losses each from minute 0")
    p.add_argument("--agree", default=None, metavar="FOLDER",
                   help="only compare a saved folder's logits under the oracle and k25ref, and exit")
    args = p.parse_args(argv)
    if args.agree:
        print(json.dumps(oracle_agreement(args.agree), indent=2))
        return
    if args.plot and args.side_by_side:
        plot_side_by_side(args.log.split(","), args.plot)
        return
    if args.plot:
        plot_log((args.log or os.path.join(args.out, "train_log.jsonl")).split(","), args.plot)
        return
    for option in ("small_objects", "tiny_frames"):
        if getattr(args, option) is not None and args.varied == 0:
            p.error(f"--{option.replace('_', '-')} shapes varied scenes: give --varied above 0")
    if args.probe_file is not None:                         # read at the start if it exists, written at the end
        problem = output_problem(args.probe_file, (), force=True) if args.probe_file else "an empty path"
        if not problem and os.path.lexists(args.probe_file) and not os.path.isfile(args.probe_file):
            problem = f"{args.probe_file!r} is not a regular file"
        if problem:
            p.error(f"--probe-file: {problem}")
    defaults = {"decoder_lr": 1.0, "qat": 0.25, "text_batch": 8, "chat_text_batch": 2}
    if args.freeze_decoder:
        if not args.init or args.vision_only:
            p.error("--freeze-decoder keeps the decoder of --init: give --init, and no --vision-only")
        given = [o for o in list(defaults) + ["text_teacher"] if getattr(args, o) is not None]
        if given:
            p.error(f"--freeze-decoder trains no decoder and reads no text: drop --{given[0].replace('_', '-')}")
        defaults = dict.fromkeys(defaults, 0)
    if args.vision_only and args.probe is not None:
        p.error("--vision-only trains on the read-out loss alone, so --probe has nothing to weigh it against: "
                "drop --probe")
    defaults.update(small_objects=shapes.P_SMALL_OBJECT, tiny_frames=shapes.P_TINY_FRAME, probe=1.0)
    for option, default in defaults.items():           # options left unset take their defaults
        setattr(args, option, default if getattr(args, option) is None else getattr(args, option))
    if args.text_teacher and (args.vision_only or args.text_batch + args.chat_text_batch == 0):
        p.error("--text-teacher teaches text batches: drop it, or give --text-batch or --chat-text-batch above 0 "
                "and no --vision-only")
    if args.text_teacher and vocabulary_of(args.text_teacher) != nano_hub_config()["text_config"]["vocab_size"]:
        p.error(f"--text-teacher: {args.text_teacher} is not a nano (its vocabulary is not the nano's 4096 ids), "
                "so its next-token distributions cannot teach this model's")
    media_only = args.vision_only or args.freeze_decoder
    if args.image_batch + args.video_batch + (0 if media_only else args.text_batch + args.chat_text_batch) == 0:
        p.error("every batch size is 0: nothing to train on (--image-batch, --video-batch"
                + (")" if media_only else ", --text-batch, --chat-text-batch)"))
    if not (args.probe > 0 or args.vision_only):            # then there is no read-out to weigh, load or save
        for option, what in (("probe_per_object", "weighs the read-out loss"), ("probe_file", "holds the read-out")):
            if getattr(args, option):
                p.error(f"--{option.replace('_', '-')} {what}: give --probe above 0, or --vision-only")
    if args.grow_from:
        saved = vision_of(args.grow_from)
        if args.vision_from or args.tower is None:
            p.error("--grow-from: give the grown tower's --tower, and no --vision-from")
        refusal = grow_refusal(saved["vt_hidden_size"], saved["vt_num_hidden_layers"],
                               args.tower["vt_hidden_size"], args.tower["vt_num_hidden_layers"])
        if refusal:
            p.error(f"--grow-from {args.grow_from}: {refusal} (--tower)")
    folder = None if args.grow_from else args.vision_from or args.init
    if folder:
        saved = vision_of(folder)
        if args.tower not in (None, saved):
            p.error(f"--tower: {folder} holds a {saved['vt_hidden_size']}x{saved['vt_num_hidden_layers']} tower")
        args.tower = saved
    args.tower = args.tower or NANO_VISION
    if args.quick:
        args.image_batch, args.video_batch = 2, 1
        if not args.freeze_decoder:
            args.text_batch, args.chat_text_batch = 2, 1
    model, hub, data, meta = train(args)
    if args.check:
        samples = [data.text(), data.chat_image(), data.chat_video()]
        report = check_round_trip(model, args.out, samples)
        print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
