"""MoonViT's block-diagonal self-attention: the softmax over each row of scores.

Reference (the spec): k25ref.nn.softmax, as called by the segment loop of k25ref.moonvit.block_diagonal_attention

    o_h[a:b] = softmax(q_h[a:b] k_h[a:b]^T / sqrt(Dh)) v_h[a:b]    for each segment [a, b)    [ViT; Kimi-VL §2.1]

The two products stay with BLAS, which does them well; what NumPy does slowly is the softmax between them:
six passes over the (H, rows, n) scores, counting the scaling by 1/sqrt(Dh). This kernel makes three
passes over each row, in place: max (by NumPy), scale and exp and sum, normalise. The exponential is a
polynomial (kernels/expf.py) so the loop vectorizes. It runs on the
calling thread, between two BLAS products (why: kernels/vision_block.py).
Checked by tests/test_kernels.py (exp, softmax rows, whole attention; also with NUMBA_DISABLE_JIT=1).
"""
import numpy as np

from k25ref.kernels import jit
from k25ref.kernels.expf import exp_numba


def _softmax_rows_loops(x, scale, top):  # (R, n), scale, top: (R,) = max(scale * x[i]) -> x[i] <- softmax, in place
    for i in range(x.shape[0]):
        row = x[i]
        total = np.float32(0.0)
        for j in range(row.shape[0]):
            row[j] = exp_numba(row[j] * scale - top[i])            # scaled first: the reference's rounding
            total += row[j]
        inv = np.float32(1.0) / total
        for j in range(row.shape[0]):
            row[j] *= inv


softmax_rows_numba = jit(_softmax_rows_loops)


def softmax_rows(x, scale=1.0):  # (..., n) float32 -> the same array, softmax(scale * x) along the last axis
    """The kernel twin of nn.softmax(x * scale, axis=-1), in place when x is C-contiguous (else on a copy).
    The row maxima come from NumPy, whose max is vectorized (a max loop in numba is not: NaN rules); for
    scale > 0, max(scale * x) = scale * max(x) exactly, as rounding keeps order."""
    x = np.ascontiguousarray(x, np.float32)
    rows = x.reshape(-1, x.shape[-1])
    scale = np.float32(scale)
    softmax_rows_numba(rows, scale, rows.max(axis=1) * scale)
    return x


def warmup_calls():
    yield "softmax_rows", lambda: softmax_rows(np.zeros((2, 3), np.float32))
