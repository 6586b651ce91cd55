"""e^x in float32 as a polynomial, so that the loops of the softmax and activation kernels vectorize.

Reference (the spec): np.exp. numba's own exp calls the C library once per element, which keeps a loop
scalar; this one inlines. Used by the vision softmax (vision_attention.py), the tower's GELU
(vision_block.py), the MoE kernel's silu (moe_experts.py) and the MLA decode softmax (mla_decode.py).
Checked by tests/test_kernels.py::test_exp_matches_numpy: within 2 ulp over [-87, 88] (also without the JIT).
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
