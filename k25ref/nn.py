"""The small functions every layer uses: linear maps, RMSNorm, LayerNorm, SiLU, GELU, softmax. All float32."""
from dataclasses import dataclass
from typing import Callable

import numpy as np

from k25ref.checkpoint import bf16_to_f32
from k25ref import int4


def widened_matmul(raw, x):  # (O, I) uint16, (T, I) -> (T, O)
    """x W^T with the stored bf16 matrix widened exactly to float32 for this one product."""
    return x @ bf16_to_f32(raw).T


@dataclass(frozen=True)
class Bf16Weight:
    """A BF16 matrix kept as stored (uint16 bits, half the bytes of float32) until it is used: `matmul`
    widens it for one product at a time (the reference), or is the bf16 kernel, which reads it as is."""
    raw: np.ndarray                 # (O, I) uint16
    matmul: Callable = widened_matmul   # (raw, x (T, I)) -> (T, O)

    @property
    def shape(self):
        return self.raw.shape


def linear(x, w):  # (T, I), (O, I) as float32, Int4Weight or Bf16Weight -> (T, O)
    """y = x W^T, whatever form W is kept in (INT4 is dequantized here; the fused kernel never materialises W)."""
    if isinstance(w, int4.Int4Weight):
        return int4.linear(x, w)
    if isinstance(w, Bf16Weight):
        return w.matmul(w.raw, x)
    return x @ w.T


def rms_norm(x, weight, eps):  # (..., D), (D,) -> (..., D)
    """y = w * x / sqrt(mean(x^2) + eps)   [RMSNorm, Zhang & Sennrich 2019]; mean in float32 like the oracle."""
    var = np.mean(np.square(x, dtype=np.float32), axis=-1, keepdims=True)       # (..., 1)
    return weight * (x / np.sqrt(var + np.float32(eps)))


def layer_norm(x, weight, bias, eps):  # (..., D), (D,), (D,) -> (..., D)
    """y = w * (x - mean) / sqrt(var + eps) + b   [LayerNorm, Ba et al. 2016]; biased variance like torch."""
    mu = np.mean(x, axis=-1, keepdims=True)                                     # (..., 1)
    var = np.mean(np.square(x - mu), axis=-1, keepdims=True)                    # (..., 1)
    return (x - mu) / np.sqrt(var + np.float32(eps)) * weight + bias


def silu(x):  # (...) -> (...)
    """silu(x) = x * sigmoid(x)."""
    return x / (np.float32(1) + np.exp(-x))


def sigmoid(x):  # (...) -> (...)
    return np.float32(1) / (np.float32(1) + np.exp(-x))


def gelu_tanh(x):  # (...) -> (...)
    """GELU, tanh approximation: 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))  [Hendrycks & Gimpel 2016]."""
    c = np.float32(np.sqrt(2.0 / np.pi))
    return np.float32(0.5) * x * (np.float32(1) + np.tanh(c * (x + np.float32(0.044715) * x * x * x)))


def gelu_erf(x):  # (...) -> (...)
    """Exact GELU: x * Phi(x) = 0.5 x (1 + erf(x / sqrt 2)). erf via math.erf in float64, rounded to float32."""
    from math import erf
    e = np.vectorize(erf, otypes=[np.float64])(np.asarray(x, np.float64) / np.sqrt(2.0))
    return (0.5 * np.asarray(x, np.float64) * (1.0 + e)).astype(np.float32)


def softmax(x, axis=-1):  # (...) -> (...)
    """softmax along `axis`, shifted by the max for stability; -inf entries get weight 0."""
    e = x - np.max(x, axis=axis, keepdims=True)                                 # one new array, then in place
    np.exp(e, out=e)
    e /= np.sum(e, axis=axis, keepdims=True)
    return e


def swiglu(x, gate_proj, up_proj, down_proj):  # (T, D), (F, D), (F, D), (D, F) -> (T, D)
    """FFN_SwiGLU(x) = W_down (silu(W_gate x) * W_up x)   [Shazeer 2020]."""
    return linear(silu(linear(x, gate_proj)) * linear(x, up_proj), down_proj)
