"""Rotary position embedding of the text decoder: RoPE on the Dr rope dims, YaRN-scaled, interleaved pairs.

RoPE rotates each pair of dims (x_2i, x_2i+1) by the angle p * f_i at position p [RoFormer eq. 34]:

    (x_2i, x_2i+1) -> (x_2i cos - x_2i+1 sin,  x_2i+1 cos + x_2i sin)

YaRN [YaRN §3.2] blends the original frequencies (extrapolation, for fast-rotating dims) with the
frequencies divided by the context factor s (interpolation, for slow dims) along a linear ramp between two
dims found from beta_fast/beta_slow rotations over the original context, and tempers the softmax with
mscale^2. K2.5: theta 50000, s = 64, L_orig = 4096, beta 32/1 -> pure extrapolation for i < 8, pure
interpolation for i >= 20, softmax scale 192^-0.5 * 1.4158883^2 = 0.1446796.

Same as: transformers `_compute_yarn_parameters`, `apply_rotary_pos_emb_interleave`, `yarn_apply_mscale`.
"""
import math

import numpy as np

from k25ref.config import RopeConfig


def yarn_mscale(scale, mscale=1.0):
    """Attention temperature of YaRN: 0.1 * mscale * ln(s) + 1 (1 when not extending)."""
    return 1.0 if scale <= 1 else 0.1 * mscale * math.log(scale) + 1.0


def _correction_dim(rotations, dim, base, max_pos):
    """The dim index whose wavelength fits `rotations` full turns in max_pos positions [YaRN eq. 17]."""
    return dim * math.log(max_pos / (rotations * 2 * math.pi)) / (2 * math.log(base))


def inv_frequencies(cfg: RopeConfig, dim):  # -> (dim/2,) float32, cos/sin scale
    """f_i = theta^(-2i/dim), YaRN-blended when cfg.type == 'yarn'; float32 like the oracle."""
    exponent = np.arange(0, dim, 2, dtype=np.float32) / np.float32(dim)            # (dim/2,)
    pos_freqs = np.power(np.float32(cfg.theta), exponent)                           # (dim/2,)
    extrapolation = np.float32(1) / pos_freqs
    if cfg.type == "default":
        return extrapolation, 1.0
    s = cfg.factor
    interpolation = np.float32(1) / (np.float32(s) * pos_freqs)
    low = _correction_dim(cfg.beta_fast, dim, cfg.theta, cfg.original_max_position_embeddings)
    high = _correction_dim(cfg.beta_slow, dim, cfg.theta, cfg.original_max_position_embeddings)
    if cfg.truncate:
        low, high = math.floor(low), math.ceil(high)
    low, high = max(low, 0), min(high, dim - 1)
    if low == high:
        high += 0.001                                                               # avoid 0/0
    ramp = np.clip((np.arange(dim // 2, dtype=np.float32) - np.float32(low)) / np.float32(high - low), 0, 1)
    keep = np.float32(1) - ramp                                                     # 1 = extrapolate
    inv_freq = interpolation * (np.float32(1) - keep) + extrapolation * keep
    return inv_freq.astype(np.float32), attention_factor(cfg)


def attention_factor(cfg: RopeConfig):
    """Scale on cos/sin: explicit, else mscale(s, mscale) / mscale(s, mscale_all_dim), else mscale(s)."""
    if cfg.type == "default":
        return 1.0
    if cfg.attention_factor is not None:
        return cfg.attention_factor
    if cfg.mscale and cfg.mscale_all_dim:
        return yarn_mscale(cfg.factor, cfg.mscale) / yarn_mscale(cfg.factor, cfg.mscale_all_dim)
    return yarn_mscale(cfg.factor)


def softmax_scale(cfg: RopeConfig, qk_head_dim):
    """1/sqrt(Dn + Dr), times mscale(s, mscale_all_dim)^2 under YaRN [DSV2 code; transformers yarn_apply_mscale]."""
    scale = qk_head_dim ** -0.5
    if cfg.type != "default" and cfg.mscale_all_dim:
        scale *= yarn_mscale(cfg.factor, cfg.mscale_all_dim) ** 2
    return scale


def cos_sin(positions, inv_freq, factor=1.0):  # (T,) int, (Dr/2,) -> (T, Dr/2), (T, Dr/2)
    """Angles p * f_i in float32 (as the oracle computes them), then cos/sin times the YaRN factor."""
    angles = np.asarray(positions, dtype=np.float32)[:, None] * inv_freq[None, :]  # (T, Dr/2)
    return (np.cos(angles) * np.float32(factor)).astype(np.float32), (np.sin(angles) * np.float32(factor)).astype(np.float32)


def apply_rope_interleaved(x, cos, sin):  # (..., T, Dr), (T, Dr/2) -> (..., T, Dr)
    """Rotate interleaved pairs (x_2i, x_2i+1); return [rotated evens | rotated odds] like the oracle.

    The output order is a fixed permutation of the dims; q and k get the same one, so q.k is exactly
    the pairwise-rotated dot product.
    """
    even, odd = x[..., 0::2], x[..., 1::2]                                          # (..., T, Dr/2) each
    return np.concatenate([even * cos - odd * sin, odd * cos + even * sin], axis=-1)
