"""The elementwise parts of a MoonViT block, each one pass over its array instead of NumPy's several.

References (the spec), in k25ref.nn and k25ref.rope:

    layer_norm(x, w, b, eps)          y = w * (x - mean) / sqrt(var + eps) + b            [Ba et al. 2016]
    gelu_tanh(h + bias)               0.5 u (1 + tanh(sqrt(2/pi) (u + 0.044715 u^3)))    [Hendrycks & Gimpel]
    gelu_erf(x)                       0.5 x (1 + erf(x / sqrt 2))       (the projector's exact GELU)
    apply_rope_interleaved(x, c, s)   [x_even c - x_odd s | x_odd c + x_even s]          [RoFormer eq. 34]

Through NumPy these took a third of the tower's time on a 448x448 image (cProfile, one thread).
The kernels run on the calling thread: OpenBLAS's threads keep spinning for a while after each product,
and a parallel region started then (numba's OpenMP threads spin too) made the whole tower slower on
two cores instead of faster.

Two choices that change the last bits, both toward the exact value:
- LayerNorm's mean and variance are summed in float64 (NumPy and torch sum float32 in different orders);
- 0.5 (1 + tanh y) is computed as 1 / (1 + e^(-2y)), the same number without the cancellation of
  1 + tanh y near -1, with the vectorizing exp of kernels/expf.py.
Checked by tests/test_kernels.py (each kernel against its reference, also with NUMBA_DISABLE_JIT=1).
"""
import math

import numpy as np

from k25ref.kernels import jit
from k25ref.kernels.expf import EXP_MAX, exp_numba

GELU_C = np.float32(math.sqrt(2.0 / math.pi))


def _layer_norm_loops(x, w, b, eps, out):  # (N, D), (D,), (D,), float -> out: (N, D)
    N, D = x.shape
    for i in range(N):
        mean = 0.0                                                  # float64 sums
        for j in range(D):
            mean += x[i, j]
        mean /= D
        var = 0.0
        for j in range(D):
            var += (x[i, j] - mean) ** 2
        inv = np.float32(1.0 / math.sqrt(var / D + eps))
        mu = np.float32(mean)
        for j in range(D):
            out[i, j] = (x[i, j] - mu) * inv * w[j] + b[j]


layer_norm_numba = jit(_layer_norm_loops)


def _bias_gelu_tanh_loops(h, bias):  # (N, F), (F,) -> h in place: gelu_tanh(h + bias)
    N, F = h.shape
    for i in range(N):
        for j in range(F):
            u = h[i, j] + bias[j]
            y = GELU_C * (u + np.float32(0.044715) * u * u * u)
            h[i, j] = u / (np.float32(1.0) + exp_numba(min(np.float32(-2.0) * y, EXP_MAX)))


bias_gelu_tanh_numba = jit(_bias_gelu_tanh_loops)


def _gelu_erf_loops(x, out):  # (N, F) -> out: (N, F), erf in float64 like the reference
    N, F = x.shape
    for i in range(N):
        for j in range(F):
            v = np.float64(x[i, j])
            out[i, j] = np.float32(0.5 * v * (1.0 + math.erf(v / math.sqrt(2.0))))


gelu_erf_numba = jit(_gelu_erf_loops)


def _rope_interleaved_loops(x, cos, sin, out):  # (H, T, Dr), (T, Dr/2) x2 -> out: (H, T, Dr)
    H, T, Dr = x.shape
    half = Dr // 2
    for h in range(H):
        for t in range(T):
            for i in range(half):
                even, odd = x[h, t, 2 * i], x[h, t, 2 * i + 1]
                out[h, t, i] = even * cos[t, i] - odd * sin[t, i]
                out[h, t, half + i] = odd * cos[t, i] + even * sin[t, i]


rope_interleaved_numba = jit(_rope_interleaved_loops)


def layer_norm(x, weight, bias, eps):  # (..., D) -> (..., D) float32
    """The kernel twin of nn.layer_norm."""
    x = np.ascontiguousarray(x, np.float32)
    out = np.empty_like(x)
    layer_norm_numba(x.reshape(-1, x.shape[-1]), weight, bias, float(eps), out.reshape(-1, x.shape[-1]))
    return out


def bias_gelu_tanh(h, bias):  # (N, F) float32, (F,) -> h, overwritten
    """nn.gelu_tanh(h + bias), in place: the kernel twin of the MLP's first activation."""
    bias_gelu_tanh_numba(h, np.ascontiguousarray(bias, np.float32))
    return h


def gelu_erf(x):  # (..., F) -> (..., F) float32
    """The kernel twin of nn.gelu_erf."""
    x = np.ascontiguousarray(x, np.float32)
    out = np.empty_like(x)
    gelu_erf_numba(x.reshape(-1, x.shape[-1]), out.reshape(-1, x.shape[-1]))
    return out


def apply_rope_interleaved(x, cos, sin):  # (H, T, Dr), (T, Dr/2) -> (H, T, Dr) float32
    """The kernel twin of rope.apply_rope_interleaved for the tower's (heads, tokens, dims) arrays."""
    x = np.ascontiguousarray(x, np.float32)
    out = np.empty_like(x)
    rope_interleaved_numba(x, np.ascontiguousarray(cos, np.float32), np.ascontiguousarray(sin, np.float32), out)
    return out


def warmup_calls():
    x, w = np.ones((2, 4), np.float32), np.ones(4, np.float32)
    yield "layer_norm", lambda: layer_norm(x, w, w, 1e-6)
    yield "bias_gelu_tanh", lambda: bias_gelu_tanh(x.copy(), w)
    yield "gelu_erf", lambda: gelu_erf(x)
    yield "rope_interleaved", lambda: apply_rope_interleaved(np.ones((1, 2, 4), np.float32), x[:, :2], x[:, :2])
