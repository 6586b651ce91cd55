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
# # 02 · RMSNorm, RoPE on interleaved pairs, and YaRN's frequency ramp
#
# **You will learn** what RMSNorm computes, how RoPE rotates pairs of dims so that q·k depends only on the
# distance between tokens, and how YaRN stretches K2.5's context from 4K to 256K by slowing down only the
# slow dims. **Needs** 01. **Runs in** about 1 s, no downloads.
# **Code** `k25ref/nn.py` (`rms_norm`), `k25ref/rope.py`. **Docs** docs/rope.md. **Papers** [RoFormer], [YaRN], [DSV2 §2.1.3].
#
# $$ \mathrm{RMSNorm}(x) = w \odot \frac{x}{\sqrt{\tfrac1D \sum_j x_j^2 + \epsilon}} \qquad
#    \begin{pmatrix} x_{2i}' \\ x_{2i+1}' \end{pmatrix} =
#    \begin{pmatrix} \cos p f_i & -\sin p f_i \\ \sin p f_i & \cos p f_i \end{pmatrix}
#    \begin{pmatrix} x_{2i} \\ x_{2i+1} \end{pmatrix}, \quad f_i = \theta^{-2i/D_r} $$
#
# $$ \text{YaRN:}\quad f_i' = (1-\gamma_i)\,\frac{f_i}{s} + \gamma_i\, f_i, \qquad
#    \gamma_i = 1 - \mathrm{clip}\!\left(\frac{i - \mathrm{low}}{\mathrm{high} - \mathrm{low}}, 0, 1\right) $$

# %%
import os
import sys

import numpy as np
from matplotlib.figure import Figure

from k25ref.config import RopeConfig
from k25ref.nn import rms_norm
from k25ref.rope import apply_rope_interleaved, cos_sin, inv_frequencies, softmax_scale

FIGURES = os.environ.get("K25REF_FIGURES") or (
    sys.argv[sys.argv.index("--figures") + 1] if "--figures" in sys.argv else "k25ref-figures")
os.makedirs(FIGURES, exist_ok=True)
print(f"figures go to {os.path.abspath(FIGURES)} (--figures DIR or K25REF_FIGURES=DIR chooses)")
rng = np.random.default_rng(0)

# %% [markdown]
# ## RMSNorm in one line
# Derived from the equation, then checked against the library. Claim: RMSNorm ignores the scale of its
# input (up to epsilon), which is why it can sit before every sub-layer.

# %%
def my_rms_norm(x, w, eps):                                            # (T, D), (D,) -> (T, D)
    return w * x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps)

x = rng.standard_normal((5, 64)).astype(np.float32)                    # (T, D)
w = (1 + 0.1 * rng.standard_normal(64)).astype(np.float32)             # (D,)
assert np.allclose(my_rms_norm(x, w, 1e-5), rms_norm(x, w, 1e-5), rtol=1e-6, atol=1e-6)
assert np.allclose(rms_norm(100 * x, w, 1e-5), rms_norm(x, w, 1e-5), rtol=1e-4, atol=1e-4)
print("RMSNorm:", x.shape, "->", rms_norm(x, w, 1e-5).shape)

# %% [markdown]
# ## RoPE as complex multiplication
# Read each pair $(x_{2i}, x_{2i+1})$ as the complex number $x_{2i} + i\,x_{2i+1}$: RoPE multiplies it by
# $e^{i p f_i}$. k25ref returns the rotated pairs as `[all real parts | all imaginary parts]` (the order
# the oracle uses); q and k get the same permutation, so q·k is unchanged.

# %%
cfg = RopeConfig()                                                      # K2.5's: theta 50000, yarn s = 64
Dr = 64
inv_freq, factor = inv_frequencies(cfg, Dr)                            # (Dr/2,), cos/sin scale
positions = np.arange(6)
cos, sin = cos_sin(positions, inv_freq, factor)                        # (T, Dr/2) each
q = rng.standard_normal((6, Dr)).astype(np.float32)                    # (T, Dr)
z = (q[:, 0::2] + 1j * q[:, 1::2]) * np.exp(1j * positions[:, None] * inv_freq) * factor   # (T, Dr/2) complex
ours = apply_rope_interleaved(q, cos, sin)                             # (T, Dr)
assert np.allclose(ours, np.concatenate([z.real, z.imag], axis=-1), atol=1e-4)
print("cos/sin factor (mscale = mscale_all_dim = 1 for K2.5):", factor)

# %% [markdown]
# Claim: after RoPE, q·k depends only on the distance m − n. Same vectors at (5, 2) and at (103, 100):

# %%
k = rng.standard_normal(Dr).astype(np.float32)
def roped(v, p):                                                       # (Dr,), position -> (Dr,)
    c, s = cos_sin([p], inv_freq, factor)
    return apply_rope_interleaved(v[None], c, s)[0]
near, far = roped(q[0], 5) @ roped(k, 2), roped(q[0], 103) @ roped(k, 100)
print(f"q.k at distance 3: {near:.5f} (positions 5, 2)  {far:.5f} (positions 103, 100)")
assert abs(near - far) < 1e-3 * (abs(near) + 1)

# %% [markdown]
# ## YaRN: which dims get stretched
# A dim whose wavelength fits many turns into the original 4096-token context (fast, high frequency) is
# left alone; a dim that never completes a turn there (slow) is divided by s = 64; a linear ramp joins
# them. For K2.5 (beta_fast 32, beta_slow 1): pairs 0..8 are kept, pairs 20..31 interpolated.

# %%
plain = 1.0 / cfg.theta ** (np.arange(0, Dr, 2) / Dr)                  # (Dr/2,) f_i
ratio = inv_freq / plain                                               # 1 = extrapolate, 1/s = interpolate
assert np.allclose(ratio[:9], 1.0, rtol=1e-5) and np.allclose(ratio[20:], 1 / cfg.factor, rtol=1e-5)
assert np.all(np.diff(ratio) <= 1e-7)                                  # a monotone ramp between them
scale = softmax_scale(cfg, 192)                                        # 1/sqrt(Dn+Dr) * mscale^2
print(f"softmax scale {scale:.7f} = 192^-0.5 * {(0.1 * np.log(64) + 1) ** 2:.7f}")
assert abs(scale - 0.1446796) < 1e-6

# %%
fig = Figure(figsize=(11, 3.2))
ax = fig.add_subplot(1, 3, 1)
i = np.arange(Dr // 2)
ax.semilogy(i, plain, "o-", ms=3, label="RoPE $f_i$")
ax.semilogy(i, inv_freq, "s-", ms=3, label="YaRN $f_i'$")
ax.semilogy(i, plain / cfg.factor, ":", label="$f_i / s$")
ax.axvspan(8, 20, color="gold", alpha=0.2, label="ramp")
ax.set_xlabel("pair i")
ax.set_ylabel("radians per position")
ax.legend(fontsize=7)
ax.set_title("K2.5 frequencies: theta 50000, s = 64", fontsize=9)
ax2 = fig.add_subplot(1, 3, 2)                                         # which dims rotate together
dims = np.arange(Dr)
ax2.imshow(np.stack([dims // 2, dims % (Dr // 2)]), aspect="auto", cmap="tab20", interpolation="nearest")
ax2.set_yticks([0, 1], labels=["interleaved\n(K2.5)", "rotate_half"], fontsize=8)
ax2.set_xlabel("dim of the Dr = 64 rope part (colour = pair)")
ax2.set_title("pairs: (2i, 2i+1) vs (i, i+32)", fontsize=9)
ax3 = fig.add_subplot(1, 3, 3)
steps = np.arange(0, 200)
c, _ = cos_sin(steps, inv_freq, factor)                                # (200, Dr/2)
for pair in (0, 6, 12, 24):
    ax3.plot(steps, c[:, pair], lw=1, label=f"pair {pair}")
ax3.set_xlabel("position p")
ax3.set_ylabel("cos(p f_i')")
ax3.legend(fontsize=7, loc="lower left")
ax3.set_title("fast pairs spin, slow pairs barely turn", fontsize=9)
fig.tight_layout()
fig.savefig(os.path.join(FIGURES, "02_yarn_ramp.png"), dpi=90)

# %% [markdown]
# **Exercise.** Set `RopeConfig(type="default")` and redo the distance check at positions 100005 and 100002.
# Why is float32 still good enough there? (Look at how `cos_sin` forms the angle.)
