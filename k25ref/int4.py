"""The INT4 format of K2.5's routed experts: compressed-tensors `pack-quantized`, symmetric, group 32.

Each expert matrix W (O outputs x I inputs) is stored as three tensors [CT pack_quantized/helpers.py]:

    weight_packed  (O, I/8)  int32   eight 4-bit codes per word, element 8j+i in nibble i (low nibble first)
    weight_scale   (O, I/G)  bf16    one scale per group of G = 32 consecutive inputs
    weight_shape   (2,)      int32   [O, I]

A code u in 0..15 stores the signed value q = u - 8 in -8..7, and

    W[o, i] = q[o, i] * scale[o, i // G]                                     [CT lifecycle/forward.py]

compressed-tensors (and so transformers) multiplies in the scale's dtype, bf16, so the reference
weights are bf16(q * scale): the product is exact in float32 and then rounded to bfloat16 (nearest,
ties to even). `dequantize` does exactly that. Nibble order is a classic trap; tests pin it with a
round trip and a hand-packed word.
"""
from dataclasses import dataclass
from functools import cached_property

import numpy as np

from k25ref.checkpoint import bf16_to_f32, f32_to_bf16

SHIFTS = np.arange(0, 32, 4, dtype=np.int32)   # bit offset of nibble i


@dataclass(frozen=True)
class Int4Weight:
    """One INT4 matrix as stored: packed codes, bf16 scales widened to float32, logical shape [O, I]."""
    packed: np.ndarray    # (O, I/8)  int32
    scale: np.ndarray     # (O, I/G)  float32 (exactly the stored bf16 values)
    shape: tuple          # (O, I)

    @property
    def group_size(self):
        return self.shape[1] // self.scale.shape[1]

    @property
    def nbytes(self):
        return self.packed.nbytes + self.scale.size * 2    # scales are 2 bytes each on disk

    @cached_property
    def scale_summary(self):  # -> (largest |scale|, True if every scale is a bfloat16 value)
        """Computed once (the INT4 kernel asks at every call): scales must not change after the first call."""
        bits = np.ascontiguousarray(self.scale, np.float32).view(np.uint32)
        return float(np.abs(self.scale).max(initial=0.0)), not np.any(bits & np.uint32(0xFFFF))


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
    """W = bf16(q * scale): expand each group scale over its G inputs; rounding as compressed-tensors does."""
    O, I = w.shape
    q = unpack(w.packed, I).astype(np.float32).reshape(O, I // w.group_size, w.group_size)   # (O, I/G, G)
    exact = (q * w.scale[:, :, None]).reshape(O, I)                 # exact in float32 (4 x 8 significant bits)
    return bf16_to_f32(f32_to_bf16(exact))


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
