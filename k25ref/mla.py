"""Multi-head Latent Attention (MLA) [DSV2 §2.1]: keys and values come from one small latent per token.

Per token, MLA compresses the hidden state into a KV latent c_kv (Ckv = 512 dims) plus one shared roped key
k_rope (Dr = 64 dims). Only these two are cached: 576 floats per token and layer, against
2 * H * 128 = 16384 for plain multi-head attention of the same model. The equations [DSV2 eqs. 9-19]:

    c_q    = RMSNorm(W_DQ x)                      q_a_proj, q_a_layernorm          (T, Cq)
    q      = W_UQ c_q = [q_nope | q_rope]         q_b_proj                         (T, H, Dn+Dr)
    c_kv   = RMSNorm(W_DKV x)                     kv_a_proj_with_mqa[:Ckv], kv_a_layernorm
    k_rope = RoPE(W_KR x)                         kv_a_proj_with_mqa[Ckv:], one head shared by all
    k_nope, v = W_UK c_kv, W_UV c_kv              kv_b_proj = [W_UK; W_UV] per head
    o_h    = softmax(scale * (q_nope.k_nope + q_rope.k_rope) + causal) v
    out    = W_O [o_1 ... o_H]                    o_proj

Two ways to attend, kept side by side and tested equal:
  naive     expand k_nope and v for every cached position (what transformers does);
  absorbed  fold W_UK into the query and W_UV into the output, and attend in latent space:
            q_nope.(W_UK c) = (W_UK^T q_nope).c   -- the cache is never expanded (DeepSeek's "absorb").

Each in two forms, also tested equal: one shot (`attend_naive`, `attend_absorbed`: the whole (H, T, S) score
tensor, the spec) and blocked (`attend_blocked`, what a forward pass runs): keys in blocks of B with an online
softmax [FlashAttention, Dao et al. 2022, eq. in §3.1], so attention holds O(H*T*B) floats whatever S is.
"""
from dataclasses import dataclass
from functools import partial

import numpy as np

from k25ref.config import TextConfig
from k25ref.nn import linear, rms_norm, softmax
from k25ref.rope import apply_rope_interleaved

LATENT_NORM_EPS = 1e-6   # q_a_layernorm / kv_a_layernorm use the class default in transformers, not rms_norm_eps


@dataclass(frozen=True)
class MLAWeights:
    """One layer's attention weights, by their checkpoint names: float32, or the big projections as stored
    (nn.Bf16Weight) when a forward pass asks for them that way; kv_b_proj and the norms are always float32."""
    kv_a_proj_with_mqa: np.ndarray          # (Ckv+Dr, D)   W_DKV and W_KR stacked
    kv_a_layernorm: np.ndarray              # (Ckv,)
    kv_b_proj: np.ndarray                   # (H*(Dn+Dv), Ckv)  [W_UK; W_UV] per head
    o_proj: np.ndarray                      # (D, H*Dv)
    q_a_proj: np.ndarray | None = None      # (Cq, D)       (None when q_lora_rank is null)
    q_a_layernorm: np.ndarray | None = None  # (Cq,)
    q_b_proj: np.ndarray | None = None      # (H*(Dn+Dr), Cq)
    q_proj: np.ndarray | None = None        # (H*(Dn+Dr), D) only when q_lora_rank is null
    q_a_proj_bias: np.ndarray | None = None  # (Cq,)        attention_bias only
    kv_a_proj_with_mqa_bias: np.ndarray | None = None  # (Ckv+Dr,)
    o_proj_bias: np.ndarray | None = None   # (D,)


def _linear(x, w, b=None):  # (T, I), (O, I), (O,) -> (T, O)
    y = linear(x, w)
    return y if b is None else y + b


class LatentCache:
    """The MLA cache of one layer: normalised latents c_kv and roped shared keys k_rope, grown in place."""

    def __init__(self, Ckv, Dr, capacity=64):
        self.c_kv = np.zeros((capacity, Ckv), np.float32)      # (cap, Ckv)
        self.k_rope = np.zeros((capacity, Dr), np.float32)     # (cap, Dr)
        self.length = 0

    def append(self, c_kv, k_rope):  # (T, Ckv), (T, Dr) -> views (S, Ckv), (S, Dr)
        S = self.length + c_kv.shape[0]
        if S > self.c_kv.shape[0]:
            cap = max(S, 2 * self.c_kv.shape[0])
            self.c_kv = np.concatenate([self.c_kv, np.zeros((cap - self.c_kv.shape[0], self.c_kv.shape[1]), np.float32)])
            self.k_rope = np.concatenate([self.k_rope, np.zeros((cap - self.k_rope.shape[0], self.k_rope.shape[1]), np.float32)])
        self.c_kv[self.length:S], self.k_rope[self.length:S] = c_kv, k_rope
        self.length = S
        return self.c_kv[:S], self.k_rope[:S]

    def truncate(self, length):
        self.length = min(self.length, length)

    @property
    def nbytes(self):
        return self.length * (self.c_kv.shape[1] + self.k_rope.shape[1]) * 4


def project(x, w: MLAWeights, cfg: TextConfig, cos, sin, norm=rms_norm,
            rope=apply_rope_interleaved):  # (T, D) -> (T,H,Dn), (T,H,Dr), (T,Ckv), (T,Dr)
    """Queries (split nope/rope) and the two cached quantities of the new tokens, RoPE applied (`norm`, `rope`:
    the latents' RMSNorm and the RoPE, nn.rms_norm and rope.apply_rope_interleaved or functions of theirs)."""
    T, H, Dn, Dr, Ckv = x.shape[0], cfg.num_attention_heads, cfg.qk_nope_head_dim, cfg.qk_rope_head_dim, cfg.kv_lora_rank
    if w.q_proj is None:
        c_q = norm(_linear(x, w.q_a_proj, w.q_a_proj_bias), w.q_a_layernorm, LATENT_NORM_EPS)       # (T, Cq)
        q = linear(c_q, w.q_b_proj).reshape(T, H, Dn + Dr)                        # (T, H, Dn+Dr)
    else:
        q = linear(x, w.q_proj).reshape(T, H, Dn + Dr)                            # (T, H, Dn+Dr)
    q_nope, q_rope = q[..., :Dn], rope(q[..., Dn:].transpose(1, 0, 2), cos, sin).transpose(1, 0, 2)
    kv = _linear(x, w.kv_a_proj_with_mqa, w.kv_a_proj_with_mqa_bias)           # (T, Ckv+Dr)
    c_kv = norm(kv[:, :Ckv], w.kv_a_layernorm, LATENT_NORM_EPS)               # (T, Ckv)
    k_rope = rope(kv[:, Ckv:], cos, sin)                                      # (T, Dr)
    return q_nope, q_rope, c_kv, k_rope


def causal_mask(T, S):  # -> (T, S) float32: 0 where visible, -inf in the future
    """New token t sits at position S-T+t and sees positions 0..S-T+t. Every row sees >= 1 position."""
    assert S >= T, f"{T} new tokens but only {S} positions: a row would see nothing"
    visible = np.arange(S)[None, :] <= (S - T + np.arange(T))[:, None]        # (T, S)
    return np.where(visible, np.float32(0), np.float32(-np.inf))


def by_head(a):  # (N, H, d) -> (H, N, d), a view; swaps axes 0 and 1, so it is its own inverse
    """Heads first, so that `@` runs one BLAS product per head: with einsum's own loops, attention over a
    128-token prompt took 3.5x as long."""
    return a.transpose(1, 0, 2)


def attend_naive(q_nope, q_rope, c_kv, k_rope, w: MLAWeights, cfg: TextConfig, scale):  # -> (T, H*Dv)
    """Expand keys and values of all S positions from the latent, then ordinary attention."""
    T, S, H, Dn, Dv = q_nope.shape[0], c_kv.shape[0], cfg.num_attention_heads, cfg.qk_nope_head_dim, cfg.v_head_dim
    kv = (c_kv @ w.kv_b_proj.T).reshape(S, H, Dn + Dv)                         # (S, H, Dn+Dv)
    k_nope, v = kv[..., :Dn], kv[..., Dn:]                                     # (S, H, Dn), (S, H, Dv)
    scores = (by_head(q_nope) @ by_head(k_nope).transpose(0, 2, 1) +           # thd,shd->hts
              by_head(q_rope) @ k_rope.T) * np.float32(scale)                  # thr,sr->hts   (H, T, S)
    p = softmax(scores + causal_mask(T, S))                                    # (H, T, S)
    return by_head(p @ by_head(v)).reshape(T, H * Dv)                          # hts,shv->thv  (T, H*Dv)


def attend_absorbed(q_nope, q_rope, c_kv, k_rope, w: MLAWeights, cfg: TextConfig, scale):  # -> (T, H*Dv)
    """Attend in latent space: W_UK folded into the query, W_UV applied after the weighted sum."""
    T, S, H, Dn, Dv = q_nope.shape[0], c_kv.shape[0], cfg.num_attention_heads, cfg.qk_nope_head_dim, cfg.v_head_dim
    wkv_b = w.kv_b_proj.reshape(H, Dn + Dv, -1)                                # (H, Dn+Dv, Ckv)
    q_lat = np.einsum("thd,hdc->thc", q_nope, wkv_b[:, :Dn])                   # (T, H, Ckv)   W_UK absorbed
    scores = (np.einsum("thc,sc->hts", q_lat, c_kv) +
              np.einsum("thr,sr->hts", q_rope, k_rope)) * np.float32(scale)   # (H, T, S)
    p = softmax(scores + causal_mask(T, S))                                    # (H, T, S)
    o_lat = np.einsum("hts,sc->thc", p, c_kv)                                  # (T, H, Ckv)
    return np.einsum("thc,hvc->thv", o_lat, wkv_b[:, Dn:]).reshape(T, H * Dv)  # (T, H*Dv)    W_UV absorbed


KEY_BLOCK = 512    # keys per block of attend_blocked: (H, T, 512) scores; BLAS products stay near full speed


def online_softmax_step(s, diag, scale, m, l, acc):  # (H, T, B), int, float, (H, T), (H, T), (H, T, d): in place
    """One key block of the online softmax [Milakov & Gimelshein 2018; FlashAttention §3.1]. On entry `s`
    holds raw scores q.k of the block; key j is visible to query t iff j <= diag + t (causal). Updates

        s     <- scale * s, masked                          (the block's scores)
        m'    =  max(m, max_j s_j)                          running max
        p_j   =  exp(s_j - m')                              left in `s`: the caller adds p @ V_block to acc
        l     <- l * exp(m - m') + sum_j p_j                running sum
        acc   <- acc * exp(m - m')                          rescaled accumulator of sum_j p_j v_j
        m     <- m'
    and after the last block o = acc / l is softmax(scale * q.K + causal) V exactly (up to rounding). Key 0
    is visible to every query, so m is finite after the first block and exp(m - m') never sees inf - inf."""
    B = s.shape[-1]
    s *= np.float32(scale)
    if diag < B - 1:                                                           # the block crosses the diagonal
        s[:, np.arange(B)[None, :] > diag + np.arange(s.shape[1])[:, None]] = -np.inf
    m_new = np.maximum(m, s.max(axis=-1))                                      # (H, T)
    alpha = np.exp(m - m_new)                                                  # (H, T)
    np.exp(s - m_new[..., None], out=s)                                        # (H, T, B)  p
    l *= alpha
    l += s.sum(axis=-1)
    acc *= alpha[..., None]
    m[...] = m_new


def attend_blocked(q_nope, q_rope, c_kv, k_rope, w: MLAWeights, cfg: TextConfig, scale, absorbed=False,
                   block=None, step=online_softmax_step):  # -> (T, H*Dv)
    """attend_naive / attend_absorbed over keys in blocks of `block` (None: KEY_BLOCK), with the online softmax
    (`step`: the NumPy reference above, or the kernel of kernels/mla_blocked.py). Every product is one BLAS
    call per block (absorbed: queries of all heads against the shared latent, (H*T, Ckv) @ (Ckv, B)). Holds the
    (H, T, B) scores of one block, the accumulator (H, T, Ckv or Dv) and, naive, one block's expanded keys and
    values."""
    T, S, H, Dn, Dv = q_nope.shape[0], c_kv.shape[0], cfg.num_attention_heads, cfg.qk_nope_head_dim, cfg.v_head_dim
    block = block or KEY_BLOCK
    wkv_b = w.kv_b_proj.reshape(H, Dn + Dv, -1)                                # (H, Dn+Dv, Ckv)
    q = by_head(q_nope) @ wkv_b[:, :Dn] if absorbed else np.ascontiguousarray(by_head(q_nope))  # (H, T, Ckv | Dn)
    q_r = np.ascontiguousarray(by_head(q_rope)).reshape(H * T, -1)             # (H*T, Dr)
    m = np.full((H, T), -np.inf, np.float32)                                   # running max
    l = np.zeros((H, T), np.float32)                                           # running sum
    acc = np.zeros((H, T, c_kv.shape[1] if absorbed else Dv), np.float32)      # running sum of p v
    for a in range(0, S, block):
        b = min(a + block, S)
        s = (q_r @ k_rope[a:b].T).reshape(H, T, b - a)                         # thr,sr->hts   (H, T, B)
        if absorbed:                                                           # keys and values: the latent
            s += (q.reshape(H * T, -1) @ c_kv[a:b].T).reshape(H, T, b - a)     # thc,sc->hts
            step(s, S - T - a, scale, m, l, acc)
            acc.reshape(H * T, -1)[...] += s.reshape(H * T, -1) @ c_kv[a:b]    # hts,sc->htc
        else:                                                                  # expand this block's keys/values
            kv = (c_kv[a:b] @ w.kv_b_proj.T).reshape(b - a, H, Dn + Dv)        # (B, H, Dn+Dv)
            s += q @ by_head(kv[..., :Dn]).transpose(0, 2, 1)                  # thd,shd->hts
            step(s, S - T - a, scale, m, l, acc)
            acc += s @ by_head(kv[..., Dn:])                                   # hts,shv->htv
    o = acc / l[..., None]                                                     # (H, T, Ckv | Dv)
    if absorbed:
        o = o @ wkv_b[:, Dn:].transpose(0, 2, 1)                               # htc,hvc->htv   W_UV absorbed
    return by_head(o).reshape(T, H * Dv)                                       # (T, H*Dv)


def mla(x, w: MLAWeights, cfg: TextConfig, cos, sin, scale, cache: LatentCache, absorbed=False,
        attend=None, norm=rms_norm, rope=apply_rope_interleaved):  # (T, D) -> (T, D)
    """One MLA block: project the new tokens, append their latents to the cache, attend over all of it
    (blocked, unless `attend` is another function of attend_naive's signature; `norm`, `rope`: see project)."""
    q_nope, q_rope, c_kv, k_rope = project(x, w, cfg, cos, sin, norm, rope)
    c_all, k_all = cache.append(c_kv, k_rope)                                  # (S, Ckv), (S, Dr)
    attend = attend or partial(attend_blocked, absorbed=absorbed)
    return _linear(attend(q_nope, q_rope, c_all, k_all, w, cfg, scale), w.o_proj, w.o_proj_bias)   # (T, D)
