"""The online-softmax step of blocked MLA attention: one pass over a block's scores per (head, query).

Reference (the spec): k25ref.mla.online_softmax_step(s, diag, scale, m, l, acc), used by
k25ref.mla.attend_blocked, which runs the products around it as BLAS calls:

    s    <- scale * s, keys j > diag + t masked             (H, T, B)
    m'   =  max(m, max_j s_j);  p_j = exp(s_j - m')         p left in s (0 where masked)
    l    <- l * exp(m - m') + sum_j p_j;  acc <- acc * exp(m - m');  m <- m'
                                                            [FlashAttention, Dao et al. 2022, §3.1]
The NumPy reference takes five passes over the block (scale, mask, max, exp, sum) and allocates for two;
this kernel does one read and one write per score, with the polynomial exp of expf.py. It runs on the calling
thread, between two BLAS products, like the vision kernels (kernels/vision_block.py: OpenBLAS's threads spin
after a product, and a parallel region started then waits for them).

The absorbed path runs `attend_latent`: attend_blocked's absorbed loop arranged for the machine, same
products, same step. Two changes make its BLAS products run near the GEMM rate at long context:
  - one score product per block, not two: queries [q_lat | q_rope] (H*T, Ckv+Dr) against keys
    [c_kv | k_rope] (B, Ckv+Dr), instead of a (.., Ckv) and a (.., Dr) product and an addition;
  - heads a few at a time (HEAD_ROWS query rows): a group's (rows, B) scores stay in the core's cache from
    the score product through the softmax step to the weighted sum, instead of H*T*B floats (64 MB at 64
    heads) going to memory and back three times per block.
A few new tokens (decoding) over a short cache attend through mla_decode's kernel: their products are too
small for BLAS to pay, and a BLAS call between numba's parallel kernels stalls on the other's threads. Over a
long cache (H * S * (2 Ckv + Dr) above DECODE_WORK multiply-adds) they take attend_latent with all heads in one
group, which reads the cache once per step where mla_decode's kernel reads it once per head: at 16 heads and
16K positions one decoded token's attention took 19 ms instead of 55 (one thread).

Checked by tests/test_kernels.py::test_online_softmax_matches_reference (also with NUMBA_DISABLE_JIT=1) and,
through attend_blocked, against the one-shot attention in tests/test_kernels.py and tests/test_long_context.py.
"""
import numpy as np

from k25ref.kernels import jit, mla_decode
from k25ref.kernels.expf import exp_numba
from k25ref.mla import KEY_BLOCK, attend_blocked, by_head


def _online_softmax_loops(s, diag, scale, m, l, acc):
    # s: (H, T, B) raw scores -> p   m, l: (H, T)   acc: (H, T, d)   all float32, updated in place
    H, T, B = s.shape
    d = acc.shape[2]
    for task in range(H * T):
        h, t = task // T, task % T
        n = max(0, min(B, diag + t + 1))                              # keys 0..n-1 are visible
        top = m[h, t]
        for j in range(n):
            s[h, t, j] *= scale
            top = max(top, s[h, t, j])
        total = np.float32(0.0)
        for j in range(n):
            s[h, t, j] = exp_numba(s[h, t, j] - top)
            total += s[h, t, j]
        for j in range(n, B):
            s[h, t, j] = 0.0
        alpha = exp_numba(m[h, t] - top)                              # 0 on the first block (m = -inf)
        l[h, t] = l[h, t] * alpha + total
        for c in range(d):
            acc[h, t, c] *= alpha
        m[h, t] = top


online_softmax_numba = jit(_online_softmax_loops)
DECODE_ROWS = 4          # at most this many new tokens go to mla_decode's kernel (absorbed path) ...
DECODE_WORK = 1 << 21    # ... when H * S * (2 Ckv + Dr) is at most this: above it attend_latent was faster
HEAD_ROWS = 512          # query rows (heads x new tokens) per group in attend_latent: scores of 512 x 512 keys = 1 MB


def online_softmax_step(s, diag, scale, m, l, acc):  # same signature and effect as the reference
    online_softmax_numba(s, np.int64(diag), np.float32(scale), m, l, acc)


def attend(q_nope, q_rope, c_kv, k_rope, w, cfg, scale, absorbed=False):  # -> (T, H*Dv), as attend_blocked
    """k25ref.mla.attend_blocked with this kernel as its softmax step: attend_latent when absorbed (for a few
    new tokens over a short cache, mla_decode's kernel), else attend_blocked's naive path. Absorbed is taken
    only where it takes fewer multiply-adds (`absorbing_pays`): the same attention either way, and a prompt
    chunk of many tokens attends faster naive (128 tokens on tools/bench.py's `small`: 1.8x)."""
    H, S = q_nope.shape[1], c_kv.shape[0]
    if absorbed and q_nope.shape[0] <= DECODE_ROWS and H * S * (2 * c_kv.shape[1] + k_rope.shape[1]) <= DECODE_WORK:
        return mla_decode.attend_absorbed(q_nope, q_rope, c_kv, k_rope, w, cfg, scale)
    if absorbed and absorbing_pays(q_nope.shape[0], S, cfg):
        return attend_latent(q_nope, q_rope, c_kv, k_rope, w, cfg, scale)
    return attend_blocked(q_nope, q_rope, c_kv, k_rope, w, cfg, scale, False, step=online_softmax_step)


def absorbing_pays(T, S, cfg):
    """Whether T queries attend to S keys with fewer multiply-adds absorbed than naive (per head):

        absorbed   T S (2 Ckv + Dr) + T Ckv (Dn + Dv)   scores against [c_kv | k_rope], p c_kv; W_UK, W_UV folded
        naive      S Ckv (Dn + Dv) + T S (Dn + Dr + Dv)  every key's k_nope and v expanded; scores, p v
    Measured at `small` (one thread, absorbed time / naive): T = 8 over 136 keys 0.36, T = 32 over 2048 0.38,
    T = 32 over 32 1.28, T = 128 over 128 1.8, over 1024 1.05: the count's verdict each time, except near its
    tie (T = S = 16: naive by the count, absorbed 10% faster)."""
    Ckv, Dn, Dr, Dv = cfg.kv_lora_rank, cfg.qk_nope_head_dim, cfg.qk_rope_head_dim, cfg.v_head_dim
    return T * S * (2 * Ckv + Dr) + T * Ckv * (Dn + Dv) <= S * Ckv * (Dn + Dv) + T * S * (Dn + Dr + Dv)


def attend_latent(q_nope, q_rope, c_kv, k_rope, w, cfg, scale, block=None, rows=HEAD_ROWS):  # -> (T, H*Dv)
    """attend_blocked(..., absorbed=True) with one score product per block and heads in groups of about
    `rows` query rows (module docstring). Holds the group's (rows, B) scores, the keys of one block and the
    (H, T, Ckv) accumulator."""
    T, S, H, Dn, Dv = q_nope.shape[0], c_kv.shape[0], cfg.num_attention_heads, cfg.qk_nope_head_dim, cfg.v_head_dim
    block, group = block or KEY_BLOCK, max(1, rows // T)                       # keys per block, heads per group
    wkv_b = w.kv_b_proj.reshape(H, Dn + Dv, -1)                                # (H, Dn+Dv, Ckv)
    q = np.concatenate([by_head(q_nope) @ wkv_b[:, :Dn], by_head(q_rope)], axis=-1)   # (H, T, Ckv+Dr) [q_lat | q_rope]
    m = np.full((H, T), -np.inf, np.float32)                                   # running max
    l = np.zeros((H, T), np.float32)                                           # running sum
    acc = np.zeros((H, T, c_kv.shape[1]), np.float32)                          # running sum of p c_kv
    s = np.empty(min(group, H) * T * block, np.float32)                        # one group's scores
    pv = np.empty((min(group, H) * T, c_kv.shape[1]), np.float32)              # one group's p @ c_kv
    for a in range(0, S, block):
        b = min(a + block, S)
        keys = np.concatenate([c_kv[a:b], k_rope[a:b]], axis=1)                # (B, Ckv+Dr) [c_kv | k_rope]
        for h0 in range(0, H, group):
            h1 = min(h0 + group, H)
            n = (h1 - h0) * T                                                  # query rows of the group
            sg, pg = s[:n * (b - a)].reshape(n, b - a), pv[:n]               # contiguous views
            np.matmul(q[h0:h1].reshape(n, -1), keys.T, out=sg)                 # thc,sc->hts  for heads h0..h1
            online_softmax_step(sg.reshape(h1 - h0, T, b - a), S - T - a, scale, m[h0:h1], l[h0:h1], acc[h0:h1])
            np.matmul(sg, c_kv[a:b], out=pg)                                   # hts,sc->htc
            acc[h0:h1] += pg.reshape(h1 - h0, T, -1)
    o = (acc / l[..., None]) @ wkv_b[:, Dn:].transpose(0, 2, 1)                # htc,hvc->htv   W_UV absorbed
    return by_head(o).reshape(T, H * Dv)                                       # (T, H*Dv)


def warmup_calls():
    H, T, B, d = 2, 3, 4, 5
    args = (np.ones((H, T, B), np.float32), np.int64(1), np.float32(0.5), np.full((H, T), -np.inf, np.float32),
            np.zeros((H, T), np.float32), np.zeros((H, T, d), np.float32))
    yield "online_softmax", lambda: online_softmax_numba(*args)
