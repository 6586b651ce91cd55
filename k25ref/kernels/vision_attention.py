"""MoonViT's block-diagonal self-attention: the softmax over each row of scores.

Reference (the spec): k25ref.nn.softmax, as called by the segment loop of k25ref.moonvit.block_diagonal_attention

    o_h[a:b] = softmax(q_h[a:b] k_h[a:b]^T / sqrt(Dh)) v_h[a:b]    for each segment [a, b)    [ViT; Kimi-VL §2.1]

The two products stay with BLAS, which does them well; what NumPy does slowly is the softmax between them:
six passes over the (H, rows, n) scores, counting the scaling by 1/sqrt(Dh). This kernel makes three
passes over each row, in place: max (by NumPy), scale and exp and sum, normalise. The exponential is a polynomial
(below) so the loop vectorizes; numba's own exp calls the C library once per element. It runs on the
calling thread, between two BLAS products (why: kernels/vision_block.py).
Checked by tests/test_kernels.py (exp, softmax rows, whole attention; also with NUMBA_DISABLE_JIT=1).
"""
import numpy as np

from k25ref.kernels import jit

EXP_MIN = np.float32(-87.0)      # below this e^x < 1.7e-38: taken as 0 (so -inf, a masked score, gives 0)
EXP_MAX = np.float32(88.0)       # e^88 is finite in float32: callers clamp larger arguments to it


def _exp_loops(x):  # float32 -> float32, e^x
    """e^x = 2^n e^r with n = round(x / ln 2) and |r| <= ln 2 / 2; e^r by Cephes' degree-7 polynomial for
    expf (about 1 ulp), 2^n written straight into the exponent bits. Valid for x <= 88."""
    if x < EXP_MIN:
        return np.float32(0.0)
    n = np.floor(x * np.float32(1.44269504) + np.float32(0.5))
    r = x - n * np.float32(0.693359375) - n * np.float32(-2.12194440e-4)    # ln 2 in two parts: r exact-ish
    p = np.float32(1.9875691500e-4)
    p = p * r + np.float32(1.3981999507e-3)
    p = p * r + np.float32(8.3334519073e-3)
    p = p * r + np.float32(4.1665795894e-2)
    p = p * r + np.float32(1.6666665459e-1)
    p = p * r + np.float32(5.0000001201e-1)
    p = p * r * r + r + np.float32(1.0)
    return p * np.uint32(np.int32(np.int32(n) + np.int32(127)) << np.int32(23)).view(np.float32)


exp_numba = jit(_exp_loops)


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
