"""The INT4 format of K2.5's routed experts: compressed-tensors `pack-quantized`, symmetric, group 32.

Each expert matrix W (O outputs x I inputs) is stored as three tensors [CT pack_quantized/helpers.py]:

    weight_packed  (O, I/8)  int32   eight 4-bit codes per word, element 8j+i in nibble i (low nibble first)
    weight_scale   (O, I/G)  bf16    one scale per group of G = 32 consecutive inputs
    weight_shape   (2,)      int32   [O, I]

A code u in 0..15 stores the signed value q = u - 8 in -8..7, and

    W[o, i] = q[o, i] * scale[o, i // G]                                     [CT lifecycle/forward.py]

compressed-tensors (and so transformers) multiplies in the scale's dtype, `q.to(scale.dtype) * scale`.
K2.5 stores bf16 scales, so the reference weights are bf16(q * scale): the product is exact in float32 and
then rounded to bfloat16 (nearest, ties to even). With F16 scales the product is rounded to float16, with
F32 ones it is the float32 product. `dequantize` does exactly that. Nibble order is a classic trap; tests pin
it with a round trip and a hand-packed word.
"""
from dataclasses import dataclass, field

import numpy as np

from k25ref.checkpoint import bf16_to_f32, f32_to_bf16

SHIFTS = np.arange(0, 32, 4, dtype=np.int32)   # bit offset of nibble i
SCALE_BYTES = {"BF16": 2, "F16": 2, "F32": 4}


@dataclass(frozen=True)
class Int4Weight:
    """One INT4 matrix as stored: packed codes, scales widened to float32, logical shape [O, I], and the
    stored scales' dtype, which sets the rounding of q * scale. Checked on construction: BF16 scales must be
    bf16 values. `scale_max` (largest |scale|, for the kernels' range check) is derived then, once."""
    packed: np.ndarray    # (O, I/8)  int32
    scale: np.ndarray     # (O, I/G)  float32 (exactly the stored values)
    shape: tuple          # (O, I)
    scale_dtype: str = "BF16"                                         # "BF16" (K2.5), "F16" or "F32"
    scale_max: float = field(init=False, repr=False, compare=False)

    def __post_init__(self):
        if self.scale_dtype not in SCALE_BYTES:
            raise ValueError(f"INT4 scale dtype {self.scale_dtype!r}: expected one of {sorted(SCALE_BYTES)}")
        if self.scale_dtype == "BF16" and np.any(np.ascontiguousarray(self.scale, np.float32).view(np.uint32)
                                                 & np.uint32(0xFFFF)):
            raise ValueError("INT4 scales declared BF16 are not all bfloat16 values")
        object.__setattr__(self, "scale_max", float(np.abs(self.scale).max(initial=0.0)))

    @property
    def group_size(self):
        return self.shape[1] // self.scale.shape[1]

    @property
    def nbytes(self):
        return self.packed.nbytes + self.scale.size * SCALE_BYTES[self.scale_dtype]    # as stored on disk


def unpack(packed, n_in):  # (O, I/8) int32 -> (O, I) int8 in -8..7
    """Nibble i of word j is element 8j+i; subtract the offset 8 to get the signed code."""
    u = (packed[..., None] >> SHIFTS) & 0xF                        # (O, I/8, 8)  0..15 ('>>' is arithmetic; the mask fixes it)
    return (u.reshape(packed.shape[0], -1)[:, :n_in] - 8).astype(np.int8)   # (O, I)


def pack(q):  # (O, I) ints in -8..7 -> (O, ceil(I/8)) int32
    """The exact inverse of `unpack`: u = q + 8, eight codes per int32, low nibble first, zero-padded."""
    q = np.asarray(q)
    if q.size and (q.min() < -8 or q.max() > 7):
        raise ValueError("INT4 codes must lie in -8..7")
    O, I = q.shape
    u = np.zeros((O, -(-I // 8) * 8), dtype=np.uint32)
    u[:, :I] = q + 8
    words = (u.reshape(O, -1, 8) << SHIFTS.astype(np.uint32)).sum(axis=2, dtype=np.uint32)   # (O, I/8)
    return words.view(np.int32)


def dequantize(w: Int4Weight):  # -> (O, I) float32
    """W = q * scale in the scale's dtype (bf16 for K2.5): expand each group scale over its G inputs, multiply
    in float32, round to the scale's dtype, as compressed-tensors does."""
    O, I = w.shape
    q = unpack(w.packed, I).astype(np.float32).reshape(O, I // w.group_size, w.group_size)   # (O, I/G, G)
    product = (q * w.scale[:, :, None]).reshape(O, I)   # exact for bf16/f16 scales (4 x 8 or 4 x 11 bits)
    if w.scale_dtype == "BF16":
        return bf16_to_f32(f32_to_bf16(product))
    if w.scale_dtype == "F16":
        return product.astype(np.float16).astype(np.float32)
    return product                                      # F32: the float32 product is the weight


def quantize(W, group_size=32):  # (O, I) float32 -> Int4Weight
    """Symmetric min-max quantization (the compressed-tensors observer): scale = max|W_group| / 7.5 in bf16.

    Used to make test checkpoints and the trained nano model. q = clamp(round(W / scale), -8, 7).
    """
    O, I = W.shape
    g = W.reshape(O, I // group_size, group_size).astype(np.float32)
    scale = bf16_to_f32(f32_to_bf16(np.abs(g).max(axis=2) / 7.5))            # (O, I/G) bf16-exact
    scale = np.where(scale == 0, np.float32(1.0), scale)
    q = np.clip(np.rint(g / scale[:, :, None]), -8, 7).astype(np.int8).reshape(O, I)
    return Int4Weight(pack(q), scale.astype(np.float32), (O, I))


def linear(x, w):  # (T, I), (O, I) dense or Int4Weight -> (T, O)
    """y = x W^T for a float32 matrix or an INT4 one (dequantized here; the fused kernel never materialises W)."""
    if isinstance(w, Int4Weight):
        return x @ dequantize(w).T
    return x @ w.T
