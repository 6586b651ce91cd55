"""MoonViT-3D, the vision tower of Kimi K2.5: 14x14 patches -> contextual patch features [Kimi-VL report, MoonViT].

A batch of media is packed into one sequence of N patches. Item i (an image, or a chunk of up to 4 video
frames) covers t_i * h_i * w_i consecutive rows: frame-major, then patch row, then patch column
(`grid_thw` row [t, h, w]). The tower is a pre-LN ViT (docs/moonvit.md has the long form):

    x   = W_patch p + b                                   conv 14x14 / stride 14 == one matmul     (N, Dvis)
    x  += bicubic(E_pos)[row, col]                         learned table resampled to (h, w)       (N, Dvis)
    x  += sincos(frame)            only when t > 1         fixed temporal term
    for each block:
        x += W_o Attn(RoPE2D(q), RoPE2D(k), v)             q, k, v from W_qkv LN0(x), 1 segment per item
        x += fc1 gelu_tanh(fc0 LN1(x))
    y   = LN_final(x)                                                                              (N, Dvis)

Attention is block-diagonal: all frames of one video chunk attend to each other ("spatial_temporal"),
different items never do. RoPE is 2-D and axial: of the Dh/2 rotated pairs of a head, the even ones turn
with the patch column, the odd ones with the patch row.

Checkpoint layout: `wqkv` rows are [q | k | v], each head-major (H, Dh), and within a head q/k keep the
ORIGINAL complex-pair layout: dims (2k, 2k+1) are (re, im) of rotated pair k. k25ref applies RoPE in that
layout (`rope.apply_rope_interleaved`). transformers instead permutes q/k rows on load (PermuteForRope) and
uses rotate_half; both give the same q.k, so the same attention.

Same as: transformers `Kimi_K25VisionModel` (+ `vision_utils`), the hub `MoonViT3dPretrainedModel`, vLLM
`kimi_k25_vit.py`. Differences of the transformers oracle are listed in docs/moonvit.md.
"""
from dataclasses import dataclass
from typing import Callable, NamedTuple

import numpy as np

from k25ref.config import KimiK25Config, VisionConfig
from k25ref.errors import ConfigError, MediaError
from k25ref.nn import gelu_erf, gelu_tanh, layer_norm, softmax
from k25ref.progress import bar
from k25ref.rope import apply_rope_interleaved

TOWER = "vision_tower."
KEYS_A = -0.75                  # Keys' cubic convolution parameter, as torch's bicubic uses
QUERY_ROWS = 512                # queries per attention step: a 16384-patch item needs H x 512 x 16384 floats
                                # (0.5 GB at H = 16) instead of H x 16384^2 (17 GB)


# ----------------------------------------------------------------------------
# input checks: pixel_values and grid_thw must describe each other


def vision_config(cfg: KimiK25Config) -> VisionConfig:
    """The tower's config, or a ConfigError when the checkpoint has no vision tower."""
    if cfg.vision is None:
        raise ConfigError("config.json has no vision_config: this checkpoint cannot read images or video")
    return cfg.vision


def check_media(pixel_values, grid_thw, v: VisionConfig):  # (N, 3, P, P), (I, 3) -> float32 (N, 3, P, P), [(t, h, w)]
    """Validate the packed patches against their grid; name the offending item in a MediaError."""
    P = v.patch_size
    g = np.asarray(grid_thw)
    if g.ndim != 2 or g.shape[1] != 3 or g.shape[0] == 0 or not np.issubdtype(g.dtype, np.integer):
        raise MediaError(f"grid_thw must be a non-empty integer array of [t, h, w] rows, got shape {g.shape} "
                         f"dtype {g.dtype}")
    grid = [tuple(int(n) for n in row) for row in g]
    for i, (t, h, w) in enumerate(grid):
        if min(t, h, w) < 1:
            raise MediaError(f"grid_thw[{i}] = {[t, h, w]}: every entry must be >= 1")
        if h % 2 or w % 2:
            raise MediaError(f"grid_thw[{i}] = {[t, h, w]}: h and w must be even (2x2 patches make one token)")
        if t > v.init_pos_emb_time:
            raise MediaError(f"grid_thw[{i}] = {[t, h, w]}: a video chunk holds at most "
                             f"{v.init_pos_emb_time} frames (init_pos_emb_time)")
    x = np.asarray(pixel_values)
    N = sum(t * h * w for t, h, w in grid)
    if x.shape != (N, 3, P, P):
        raise MediaError(f"pixel_values has shape {x.shape}, but grid_thw {[list(r) for r in grid]} "
                         f"needs ({N}, 3, {P}, {P})")
    if not np.issubdtype(x.dtype, np.floating) or not np.all(np.isfinite(x)):
        raise MediaError(f"pixel_values must be finite floats, got dtype {x.dtype}")
    return x.astype(np.float32, copy=False), grid


def segments(grid):  # [(t, h, w)] -> [(start, end)]
    """Row range of each item in the packed sequence: one attention segment per image / video chunk."""
    ends = np.cumsum([t * h * w for t, h, w in grid])
    return list(zip([0, *ends[:-1].tolist()], ends.tolist()))


# ----------------------------------------------------------------------------
# embeddings: patches, learned 2-D positions, temporal sin/cos


def patch_embed(pixel_values, weight, bias):  # (N, 3, P, P), (Dvis, 3, P, P), (Dvis,) -> (N, Dvis)
    """Conv2d(3, Dvis, kernel=P, stride=P) on a P x P patch has one output pixel: a plain linear map,

        x[n, d] = sum_{c,y,x} W[d, c, y, x] p[n, c, y, x] + b[d]        [ViT eq. 1]
    """
    N, Dvis = pixel_values.shape[0], weight.shape[0]
    return pixel_values.reshape(N, -1) @ weight.reshape(Dvis, -1).T + bias      # (N, 3*P*P) -> (N, Dvis)


def cubic_weights(distance):  # (...) -> (...)
    """Keys' cubic convolution kernel with a = -0.75 [Keys 1981; torch upsample_bicubic2d]:

        W(d) = (a+2)|d|^3 - (a+3)|d|^2 + 1            |d| <= 1
        W(d) = a|d|^3 - 5a|d|^2 + 8a|d| - 4a          1 < |d| < 2
    """
    d, a = np.abs(distance), KEYS_A
    near = ((a + 2) * d - (a + 3)) * d * d + 1
    far = ((a * d - 5 * a) * d + 8 * a) * d - 4 * a
    return np.where(d <= 1, near, far)


def bicubic_matrix(out_size, in_size):  # -> (out, in) float32
    """The 1-D resampling as a matrix M: resized = M @ original, along one axis.

    Half-pixel centres (align_corners=False): output i samples the source at s = (i + 0.5) in/out - 0.5,
    with the 4 taps floor(s)-1 .. floor(s)+2, clamped to the border (edge rows repeat). Same as
    transformers `get_vision_interpolation_indices_and_weights(mode="bicubic")` and
    `F.interpolate(mode="bicubic", align_corners=False)`.
    """
    src = (np.arange(out_size, dtype=np.float64) + 0.5) * in_size / out_size - 0.5   # (out,)
    floor = np.floor(src)
    offsets = np.arange(-1, 3)                                                       # (4,)
    taps = np.clip(floor[:, None].astype(np.int64) + offsets, 0, in_size - 1)        # (out, 4)
    weights = cubic_weights(src[:, None] - floor[:, None] - offsets)                 # (out, 4)
    m = np.zeros((out_size, in_size))
    np.add.at(m, (np.repeat(np.arange(out_size), 4), taps.ravel()), weights.ravel())  # clamped taps add up
    return m.astype(np.float32)


def pos_emb_interpolate(table, h, w):  # (Ht, Wt, Dvis) -> (h, w, Dvis)
    """Resample the learned position table to an h x w patch grid, separably: E' = M_h E M_w^T per channel.

    At (h, w) == (Ht, Wt) the matrices are exactly the identity (the kernel is 1 at d=0 and 0 at d=1, 2),
    which is why the hub code may skip the interpolation there.
    """
    rows = bicubic_matrix(h, table.shape[0])                                        # (h, Ht)
    cols = bicubic_matrix(w, table.shape[1])                                        # (w, Wt)
    Ht, Wt, D = table.shape
    tmp = (rows @ table.reshape(Ht, Wt * D)).reshape(h, Wt, D)                      # (h, Wt, Dvis)
    return cols @ tmp                                                               # (h, w, Dvis), per row h


def temporal_embedding(t, D):  # -> (t, D) float32
    """Fixed 1-D sin/cos of the frame index f, added to every patch of frame f -- only when t > 1:

        e[f] = [sin(f w_0) .. sin(f w_{D/2-1}), cos(f w_0) .. cos(f w_{D/2-1})],  w_i = 10000^(-2i/D)
                                                              [Transformer §3.5, halves concatenated]
    A single frame (a still image or a 1-frame chunk) gets no temporal term at all, so frame 0 of a
    multi-frame chunk ([0.., 1..]) differs from a still image. Hub `get_1d_sincos_pos_embed`.
    """
    if t == 1:
        return np.zeros((1, D), np.float32)
    omega = 1.0 / 10000.0 ** (np.arange(D // 2) / (D / 2))                         # (D/2,)
    angles = np.arange(t)[:, None] * omega[None, :]                                 # (t, D/2)
    return np.concatenate([np.sin(angles), np.cos(angles)], axis=1).astype(np.float32)


def position_embedding(table, grid):  # (Ht, Wt, Dvis), [(t, h, w)] -> (N, Dvis)
    """Spatial + temporal embedding of every packed patch, item by item."""
    D = table.shape[-1]
    parts = []
    for t, h, w in grid:
        spatial = pos_emb_interpolate(table, h, w).reshape(1, h * w, D)              # (1, h*w, Dvis)
        temporal = temporal_embedding(t, D)[:, None, :]                            # (t, 1, Dvis)
        parts.append((spatial + temporal).reshape(t * h * w, D))                   # (t*h*w, Dvis)
    return np.concatenate(parts)


# ----------------------------------------------------------------------------
# 2-D axial rotary embedding


def rope_2d(grid, head_dim, theta=10000.0):  # (t, h, w) -> (t*h*w, Dh/2), (t*h*w, Dh/2)
    """cos and sin of the angle of each rotated pair k = 0 .. Dh/2-1, for every patch of one item:

        angle[n, 2j]   = col(n) * f_j        even pairs turn with the patch column (x, width)
        angle[n, 2j+1] = row(n) * f_j        odd pairs turn with the patch row (y, height)
        f_j = theta^(-4j / Dh),  j = 0 .. Dh/4-1                   [hub Rope2DPosEmbRepeated]

    Every frame of a chunk repeats the same grid: time is carried by the additive temporal term only.
    Angles in float32, as the oracle computes them.
    """
    t, h, w = grid
    half = head_dim // 2
    inv_freq = np.float32(1) / np.power(np.float32(theta), np.arange(0, half, 2, dtype=np.float32) / np.float32(half))
    row, col = np.divmod(np.tile(np.arange(h * w), t), w)                           # (N,), (N,)
    angles = np.empty((t * h * w, half), np.float32)                                # (N, Dh/2)
    angles[:, 0::2] = col[:, None].astype(np.float32) * inv_freq                    # width pairs
    angles[:, 1::2] = row[:, None].astype(np.float32) * inv_freq                    # height pairs
    return np.cos(angles), np.sin(angles)


# ----------------------------------------------------------------------------
# transformer block


@dataclass(frozen=True)
class VisionBlockWeights:
    """One encoder block, by its checkpoint names `vision_tower.encoder.blocks.{b}.*` (float32)."""
    norm0_weight: np.ndarray                # (Dvis,)       LN before attention
    norm0_bias: np.ndarray                  # (Dvis,)
    wqkv_weight: np.ndarray                 # (3*Dvis, Dvis) [q | k | v], head-major, q/k in complex-pair layout
    wqkv_bias: np.ndarray                   # (3*Dvis,)
    wo_weight: np.ndarray                   # (Dvis, Dvis)
    wo_bias: np.ndarray                     # (Dvis,)
    norm1_weight: np.ndarray                # (Dvis,)       LN before the MLP
    norm1_bias: np.ndarray                  # (Dvis,)
    fc0_weight: np.ndarray                  # (Fvis, Dvis)
    fc0_bias: np.ndarray                    # (Fvis,)
    fc1_weight: np.ndarray                  # (Dvis, Fvis)
    fc1_bias: np.ndarray                    # (Dvis,)

    @classmethod
    def load(cls, W, b):
        p = f"{TOWER}encoder.blocks.{b}."
        return cls(**{f"{field}_{kind}": W.f32(f"{p}{name}.{kind}")
                      for field, name in BLOCK_NAMES.items() for kind in ("weight", "bias")})


BLOCK_NAMES = {"norm0": "norm0", "wqkv": "wqkv", "wo": "wo", "norm1": "norm1", "fc0": "mlp.fc0", "fc1": "mlp.fc1"}


class VisionOps(NamedTuple):
    """The passes between the products of the tower and the projector (the products go to BLAS)."""
    layer_norm: Callable           # (x, weight, bias, eps)
    bias_gelu_tanh: Callable       # (h, bias) -> gelu_tanh(h + bias), the block MLP's activation
    gelu_erf: Callable             # (x,) the projector's exact GELU
    rope: Callable                 # (x, cos, sin) -> apply_rope_interleaved
    scaled_softmax: Callable       # (scores, scale) -> softmax(scores * scale) along the last axis


REFERENCE = VisionOps(layer_norm, lambda h, bias: gelu_tanh(h + bias), gelu_erf, apply_rope_interleaved,
                      lambda scores, scale: softmax(scores * scale))     # the kernels' bundle: k25ref.engine


def block_diagonal_attention(q, k, val, bounds, ops=REFERENCE):  # (H, N, Dh) x3 -> (H, N, Dh)
    """softmax(q k^T / sqrt(Dh)) v inside each segment. The products go to BLAS, the softmax (with the
    scaling, which it fuses) to `ops`."""
    H, N, Dh = q.shape
    scale = np.float32(Dh ** -0.5)
    out = np.empty_like(val)                                                        # (H, N, Dh)
    for a, b in bounds:                                                             # one image / video chunk
        kT = k[:, a:b].transpose(0, 2, 1)                                           # (H, Dh, n)
        for r in range(a, b, QUERY_ROWS):                                           # softmax rows are independent
            e = min(r + QUERY_ROWS, b)
            out[:, r:e] = ops.scaled_softmax(q[:, r:e] @ kT, scale) @ val[:, a:b]   # (H, rows, Dh)
    return out


def attention(x, blk: VisionBlockWeights, v: VisionConfig, cos, sin, bounds,
              ops=REFERENCE):  # (N, Dvis) -> (N, Dvis)
    """Multi-head self-attention, block-diagonal over items, RoPE-2D on q and k:

        o_h = softmax(RoPE(q_h) RoPE(k_h)^T / sqrt(Dh)) v_h   within each segment        [ViT; RoFormer eq. 34]
    """
    N, H, Dh = x.shape[0], v.num_attention_heads, v.head_dim
    qkv = x @ blk.wqkv_weight.T + blk.wqkv_bias                                     # (N, 3*Dvis)
    q, k, val = qkv.reshape(N, 3, H, Dh).transpose(1, 2, 0, 3)                       # (H, N, Dh) each
    q, k = ops.rope(q, cos, sin), ops.rope(k, cos, sin)                             # same pair order for both
    out = block_diagonal_attention(q, k, val, bounds, ops)                          # (H, N, Dh)
    return out.transpose(1, 0, 2).reshape(N, H * Dh) @ blk.wo_weight.T + blk.wo_bias  # (N, Dvis)


def vision_block(x, blk: VisionBlockWeights, v: VisionConfig, cos, sin, bounds,
                 ops=REFERENCE):  # (N, Dvis) -> (N, Dvis)
    """Pre-LN transformer block [ViT eqs. 2-3]: x += Attn(LN0 x); x += fc1 gelu_tanh(fc0 LN1 x)."""
    eps = v.layer_norm_eps
    x = x + attention(ops.layer_norm(x, blk.norm0_weight, blk.norm0_bias, eps), blk, v, cos, sin, bounds, ops)
    h = ops.bias_gelu_tanh(ops.layer_norm(x, blk.norm1_weight, blk.norm1_bias, eps) @ blk.fc0_weight.T,
                           blk.fc0_bias)                                            # (N, Fvis)
    return x + h @ blk.fc1_weight.T + blk.fc1_bias                                 # (N, Dvis)


# ----------------------------------------------------------------------------
# the tower


def vision_tower(W, cfg: KimiK25Config, pixel_values, grid_thw, capture=None,
                 ops=REFERENCE):  # (N, 3, P, P), (I, 3) -> (N, Dvis)
    """MoonViT over a packed batch of images and video chunks; returns the final-LayerNorm output.

    W is anything with `f32(name) -> float32 array` by checkpoint name (k25ref.weights.Weights).
    Pass a dict as `capture` to receive `vision.embed` (patch + position embeddings) and
    `vision.blocks.{b}` (the residual stream after block b).
    """
    v = vision_config(cfg)
    x, grid = check_media(pixel_values, grid_thw, v)
    h = patch_embed(x, W.f32(f"{TOWER}patch_embed.proj.weight"), W.f32(f"{TOWER}patch_embed.proj.bias"))  # (N, Dvis)
    h = h + position_embedding(W.f32(f"{TOWER}patch_embed.pos_emb.weight"), grid)  # (N, Dvis)
    assert h.shape == (x.shape[0], v.hidden_size)
    rope = [rope_2d(g, v.head_dim, v.rope_theta) for g in grid]
    cos, sin = np.concatenate([c for c, _ in rope]), np.concatenate([s for _, s in rope])  # (N, Dh/2) each
    bounds = segments(grid)
    if capture is not None:
        capture["vision.embed"] = h
    for b in bar(range(v.num_hidden_layers), desc=f"vision encoder ({x.shape[0]} patches)", unit="block"):
        h = vision_block(h, VisionBlockWeights.load(W, b), v, cos, sin, bounds, ops)   # (N, Dvis)
        if capture is not None:
            capture[f"vision.blocks.{b}"] = h
    final = f"{TOWER}encoder.final_layernorm."
    return layer_norm(h, W.f32(f"{final}weight"), W.f32(f"{final}bias"), v.layer_norm_eps)  # (N, Dvis)
