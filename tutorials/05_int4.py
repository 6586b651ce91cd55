# ---
# jupyter:
#   jupytext:
#     formats: py:percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 05 · INT4 experts: nibbles, scales, rounding error, and a fused kernel
#
# **You will learn** how K2.5 stores its routed experts (compressed-tensors `pack-quantized`: eight 4-bit
# codes per int32, one bf16 scale per 32 inputs), where each code sits in the word, how large the
# quantization error is, and why decoding wants a kernel that never materialises the float matrix.
# **Needs** 01. **Runs in** about 4 s (the first run compiles the Numba kernel once), no downloads.
# **Code** `k25ref/int4.py` (`pack`, `unpack`, `dequantize`, `quantize`, `linear`),
# `k25ref/kernels/int4_matvec.py` (`int4_matmul`). **Docs** docs/int4.md, docs/kernels.md. **Source** [CT pack_quantized].
#
# $$ u = q + 8 \in [0, 15] \qquad \text{word}_{o,j} = \sum_{i=0}^{7} u_{o,\,8j+i}\; 2^{4i} \qquad
#    W_{o,n} = \mathrm{bf16}\big(q_{o,n}\cdot \text{scale}_{o,\lfloor n/G\rfloor}\big) $$

# %%
import os
import sys
import time

import numpy as np
from matplotlib.figure import Figure

from k25ref.checkpoint import bf16_to_f32, f32_to_bf16
from k25ref.int4 import Int4Weight, dequantize, linear, pack, quantize, unpack

FIGURES = os.environ.get("K25REF_FIGURES") or (
    sys.argv[sys.argv.index("--figures") + 1] if "--figures" in sys.argv else "k25ref-figures")
os.makedirs(FIGURES, exist_ok=True)
print(f"figures go to {os.path.abspath(FIGURES)} (--figures DIR or K25REF_FIGURES=DIR chooses)")
rng = np.random.default_rng(0)

# %% [markdown]
# ## Pack a matrix and look at the nibbles
# Quantize a small float matrix, then read word 0 of row 0 by hand: nibble i (bits 4i..4i+3, low nibble
# first) holds input i, offset by 8.

# %%
W = (rng.standard_normal((4, 64)) * 0.05).astype(np.float32)          # (O, I)
w = quantize(W, group_size=32)                                         # packed (O, I/8) int32, scale (O, I/G)
print("packed", w.packed.shape, w.packed.dtype, "| scale", w.scale.shape, "| shape", w.shape)
word = int(w.packed[0, 0]) & 0xFFFFFFFF
nibbles = [(word >> (4 * i)) & 0xF for i in range(8)]
codes = unpack(w.packed, 64)                                           # (O, I) int8 in -8..7
print(f"word 0x{word:08x} -> nibbles (low first) {nibbles} -> codes {[n - 8 for n in nibbles]}")
assert [n - 8 for n in nibbles] == codes[0, :8].tolist()
assert (pack(codes) == w.packed).all()                                 # pack is the exact inverse of unpack
assert codes.min() >= -8 and codes.max() <= 7

# %% [markdown]
# ## Claims about size and error
# 1. Storage is 4 bits per weight plus one 16-bit scale per 32 weights: 4.5 bits, 7.1x smaller than float32.
# 2. Symmetric min-max quantization (scale = max|W_group| / 7.5) rounds to the nearest code, so the error
#    is at most half a step -- plus two bf16 roundings (relative 2^-8 each): of the scale itself, which can
#    push the largest weight just past code 7 (the clamp), and of the product q·scale.

# %%
O, I = 256, 1024
W = (rng.standard_normal((O, I)) * 0.02).astype(np.float32)
w = quantize(W, 32)
bits = w.nbytes * 8 / (O * I)
assert bits == 4.5
err = dequantize(w) - W                                                # (O, I)
step = np.repeat(w.scale, 32, axis=1)                                  # (O, I) the scale of each weight
assert np.all(np.abs(err) <= (0.5 + 7.5 * 2.0 ** -8) * step + np.abs(dequantize(w)) * 2.0 ** -8)
print(f"{bits} bits/weight; |error| / scale: mean {np.mean(np.abs(err) / step):.3f}, max {np.max(np.abs(err) / step):.3f}")

# %%
fig = Figure(figsize=(9, 3))
ax = fig.add_subplot(1, 2, 1)
ax.hist((err / step).ravel(), bins=80, color="tab:blue")
ax.set_xlabel("dequantized − original, in units of the group's scale")
ax.set_ylabel("weights")
ax.set_title("rounding error is uniform in ±½ step", fontsize=9)
ax2 = fig.add_subplot(1, 2, 2)
ax2.hist(unpack(w.packed, I).ravel(), bins=np.arange(-8.5, 8.5), color="tab:orange", rwidth=0.85)
ax2.set_xlabel("stored code q (u − 8)")
ax2.set_title("codes of a Gaussian matrix: −8 is rare, 7 is the clamp", fontsize=9)
fig.tight_layout()
fig.savefig(os.path.join(FIGURES, "05_int4_error.png"), dpi=90)

# %% [markdown]
# ## Speed: dequantize-then-matmul vs the fused kernel
# One K2.5 expert matrix (`gate_proj`, 2048 × 7168) times one token, as in decoding. The reference
# `int4.linear` builds the whole float32 matrix (59 MB) first; the Numba kernel dequantizes a row at a
# time into a small buffer. Claim: both give the same numbers (same bf16 rounding, float32 sums). The
# timings are this machine's; docs/kernels.md and docs/performance.md have measured tables.

# %%
O, I = 2048, 7168
big = Int4Weight(rng.integers(-2**31, 2**31, size=(O, I // 8), dtype=np.int64).astype(np.int32),
                 bf16_to_f32(f32_to_bf16((rng.random((O, I // 32)) * 1e-3 + 1e-4).astype(np.float32))), (O, I))
x = rng.standard_normal((1, I)).astype(np.float32)                     # (T=1, I)

def best_of(fn, n=3):
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return out, min(times)

Wf = dequantize(big)                                                   # float32 copy, for the last row
ref, t_ref = best_of(lambda: linear(x, big), 2)                        # dequantize, then x @ W.T
_, t_f32 = best_of(lambda: x @ Wf.T)
timings = {"dequantize + matmul\n(int4.linear)": t_ref, "float32 matmul\n(59 MB resident)": t_f32}
try:
    from k25ref.kernels.int4_matvec import int4_matmul
    int4_matmul(big, x)                                                # compile (or load from the cache)
    fused, t_fused = best_of(lambda: int4_matmul(big, x))
    assert np.allclose(fused, ref, rtol=1e-4, atol=1e-4 * np.abs(ref).max())
    timings["fused INT4 kernel\n(kernels/int4_matvec)"] = t_fused
except ImportError:
    print("k25ref.kernels.int4_matvec is not available: see docs/kernels.md")
for name, sec in timings.items():
    print(f"{name.splitlines()[0]:<22} {sec * 1e3:8.2f} ms")

# %%
fig = Figure(figsize=(6.5, 2.6))
ax = fig.add_subplot()
ms = [s * 1e3 for s in timings.values()]
ax.barh(list(timings), ms, color="tab:green")
for k, v in enumerate(ms):
    ax.text(v, k, f" {v:.1f} ms", va="center", fontsize=8)
ax.set_xlim(0, max(ms) * 1.25)
ax.set_xlabel("ms for y = W x, W: 2048 x 7168 INT4 (one expert matrix), best of 3")
ax.tick_params(axis="y", labelsize=7)
fig.tight_layout()
fig.savefig(os.path.join(FIGURES, "05_int4_speed.png"), dpi=90)

# %% [markdown]
# **Exercise.** Swap the nibble order in a copy of `unpack` (high nibble first) and run the quantize →
# dequantize round trip again. Which assertion catches it, and why would a model still "run"?
