"""RMSNorm of the decoder in one pass per row, for the norms around every layer's attention and FFN.

Reference (the spec): k25ref.nn.rms_norm(x, weight, eps)

    y = w * x / sqrt(mean(x^2) + eps)                      [RMSNorm, Zhang & Sennrich 2019]; float32 sums

NumPy takes five calls per norm (square, mean and its Python wrapper, sqrt, two products); a decoded token
makes four norms per layer (input, post-attention, the two latent norms of MLA), each ~8 us on a warm core
and ~45 us between the big kernels of tools/bench.py's `small` (one thread). This kernel: one call. The sum of
squares may be reassociated (fast-math); the scaling runs as written, w * (x / r): rows at the bf16 maximum,
whose mean square overflows to inf, then normalise to 0 as in the reference, where (w * x) / r would be NaN.
Checked by tests/test_kernels_decoder.py::test_rms_norm_matches_reference (also with NUMBA_DISABLE_JIT=1).
"""
import numpy as np

from k25ref.kernels import jit


def _scale_row_loops(x, w, r, out):  # (D,), (D,), float32 -> out: (D,) = w * (x / r), as written
    for j in range(x.shape[0]):
        out[j] = w[j] * (x[j] / r)


scale_row_numba = jit(_scale_row_loops, exact=True)     # reassociated, w * x could overflow where x / r does not


def _rms_norm_loops(x, w, eps, out):  # (N, D), (D,), float32 -> out: (N, D)
    N, D = x.shape
    for i in range(N):
        total = np.float32(0)
        for j in range(D):
            total += x[i, j] * x[i, j]
        scale_row_numba(x[i], w, np.float32(np.sqrt(total / np.float32(D) + eps)), out[i])


rms_norm_numba = jit(_rms_norm_loops)


def rms_norm(x, weight, eps):  # (..., D), (D,) -> (..., D) float32
    """The kernel twin of nn.rms_norm."""
    x = np.ascontiguousarray(x, np.float32)
    out = np.empty_like(x)
    rms_norm_numba(x.reshape(-1, x.shape[-1]), np.ascontiguousarray(weight, np.float32), np.float32(eps),
                   out.reshape(-1, x.shape[-1]))
    return out


def warmup_calls():
    yield "rms_norm", lambda: rms_norm(np.ones((1, 4), np.float32), np.ones(4, np.float32), 1e-6)
