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

A few new tokens (decoding) attend through mla_decode's kernel instead when absorbed: their products are
too small for BLAS to pay, and a BLAS call between numba's parallel kernels stalls on the other's threads.

Checked by tests/test_kernels.py::test_online_softmax_matches_reference (also with NUMBA_DISABLE_JIT=1) and,
through attend_blocked, against the one-shot attention in tests/test_kernels.py and tests/test_long_context.py.
"""
import numpy as np

from k25ref.kernels import jit, mla_decode
from k25ref.kernels.expf import exp_numba
from k25ref.mla import attend_blocked


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
DECODE_ROWS = 4          # at most this many new tokens go to mla_decode's kernel (absorbed path)


def online_softmax_step(s, diag, scale, m, l, acc):  # same signature and effect as the reference
    online_softmax_numba(s, np.int64(diag), np.float32(scale), m, l, acc)


def attend(q_nope, q_rope, c_kv, k_rope, w, cfg, scale, absorbed=False):  # -> (T, H*Dv), as attend_blocked
    """k25ref.mla.attend_blocked with this kernel as its softmax step (the products stay BLAS calls), or
    for a few new tokens on the absorbed path mla_decode's kernel."""
    if absorbed and q_nope.shape[0] <= DECODE_ROWS:
        return mla_decode.attend_absorbed(q_nope, q_rope, c_kv, k_rope, w, cfg, scale)
    return attend_blocked(q_nope, q_rope, c_kv, k_rope, w, cfg, scale, absorbed, step=online_softmax_step)


def warmup_calls():
    H, T, B, d = 2, 3, 4, 5
    args = (np.ones((H, T, B), np.float32), np.int64(1), np.float32(0.5), np.full((H, T), -np.inf, np.float32),
            np.zeros((H, T), np.float32), np.zeros((H, T, d), np.float32))
    yield "online_softmax", lambda: online_softmax_numba(*args)
