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
# # 03 · Multi-head Latent Attention: naive, absorbed, and what the cache costs
#
# **You will learn** how MLA caches one 512-dim latent (plus one shared 64-dim roped key) per token instead
# of 64 heads of keys and values, why attention can run directly on that latent ("absorption"), and what
# that saves for K2.5. **Needs** 01, 02. **Runs in** about 2 s, no downloads.
# **Code** `k25ref/mla.py` (`project`, `attend_naive`, `attend_absorbed`, `LatentCache`), `k25ref/summary.py`
# (`cache_bytes_per_token`). **Docs** docs/mla.md. **Paper** [DSV2 §2.1, eqs. 9-19].
#
# $$ c^{KV}_s = \mathrm{RMSNorm}(W^{DKV} x_s) \qquad k^{\text{nope}}_{s,h} = W^{UK}_h c^{KV}_s \qquad v_{s,h} = W^{UV}_h c^{KV}_s $$
#
# $$ \text{score}_{t,s,h} = \big(q^{\text{nope}}_{t,h}\cdot W^{UK}_h c^{KV}_s + q^{\text{rope}}_{t,h}\cdot k^{\text{rope}}_s\big)\,\sigma
#    = \big((W^{UK}_h)^{\top} q^{\text{nope}}_{t,h}\big)\cdot c^{KV}_s + \dots \quad\text{(absorbed)} $$

# %%
import os
import sys

import numpy as np
from matplotlib.figure import Figure

import k25ref
from k25ref.config import KimiK25Config
from k25ref.mla import LatentCache, attend_absorbed, attend_naive, mla, project
from k25ref.summary import cache_bytes_per_token

FIGURES = os.environ.get("K25REF_FIGURES") or (
    sys.argv[sys.argv.index("--figures") + 1] if "--figures" in sys.argv else "k25ref-figures")
os.makedirs(FIGURES, exist_ok=True)
print(f"figures go to {os.path.abspath(FIGURES)} (--figures DIR or K25REF_FIGURES=DIR chooses)")
rng = np.random.default_rng(0)

# %% [markdown]
# ## One layer's attention weights
# Layer 0 of the embedded model, by their checkpoint names (`kv_a_proj_with_mqa`, `kv_b_proj`, ...).

# %%
model = k25ref.load_model(k25ref.default_model_path())
cfg = model.cfg.text
H, Dn, Dr, Dv, Ckv = cfg.num_attention_heads, cfg.qk_nope_head_dim, cfg.qk_rope_head_dim, cfg.v_head_dim, cfg.kv_lora_rank
w = model.weights.attention(0)
T = 6
x = rng.standard_normal((T, cfg.hidden_size)).astype(np.float32)      # (T, D)
cos, sin = model.rope.at(0, T)                                         # (T, Dr/2) each
q_nope, q_rope, c_kv, k_rope = project(x, w, cfg, cos, sin)
print("q_nope", q_nope.shape, "q_rope", q_rope.shape, "c_kv", c_kv.shape, "k_rope", k_rope.shape)
assert c_kv.shape == (T, Ckv) and k_rope.shape == (T, Dr) and q_nope.shape == (T, H, Dn)

# %% [markdown]
# ## The absorption identity, for one head, by hand
# `kv_b_proj` is `[W_UK; W_UV]` per head: reshape it to `(H, Dn+Dv, Ckv)`. Scoring a query against the
# expanded key equals scoring the *absorbed* query against the latent.

# %%
wkv_b = w.kv_b_proj.reshape(H, Dn + Dv, Ckv)                          # (H, Dn+Dv, Ckv)
W_UK = wkv_b[0, :Dn]                                                  # (Dn, Ckv) head 0
expanded = q_nope[-1, 0] @ (W_UK @ c_kv.T)                            # (S,)  q . k_nope, keys expanded
absorbed = (W_UK.T @ q_nope[-1, 0]) @ c_kv.T                          # (S,)  (W_UK^T q) . c, never expanded
assert np.allclose(expanded, absorbed, rtol=1e-4, atol=1e-4)

# %% [markdown]
# ## Naive and absorbed attention agree on every head
# Claim: `attend_naive` (expand K and V for all S positions, as transformers does) and `attend_absorbed`
# (attend in latent space, as DeepSeek's "absorb" mode does) give the same output.

# %%
scale = model.rope.scale
naive = attend_naive(q_nope, q_rope, c_kv, k_rope, w, cfg, scale)     # (T, H*Dv)
fast = attend_absorbed(q_nope, q_rope, c_kv, k_rope, w, cfg, scale)   # (T, H*Dv)
print("max |naive - absorbed| =", float(np.abs(naive - fast).max()))
assert np.allclose(naive, fast, rtol=1e-4, atol=1e-5)

# %% [markdown]
# ## The cache: prefill then decode equals one pass
# Claim: running the first T-1 tokens, then the last one against the cached latents, gives the last
# row of the one-pass output. The cache holds exactly `(Ckv + Dr)` floats per token.

# %%
full = mla(x, w, cfg, cos, sin, scale, LatentCache(Ckv, Dr))                       # (T, D)
cache = LatentCache(Ckv, Dr)
mla(x[:-1], w, cfg, cos[:-1], sin[:-1], scale, cache)
last = mla(x[-1:], w, cfg, cos[-1:], sin[-1:], scale, cache, absorbed=True)        # (1, D)
assert np.allclose(last, full[-1:], rtol=1e-4, atol=1e-5)
assert cache.length == T and cache.nbytes == T * (Ckv + Dr) * 4                   # float32 here
print(f"cache after {T} tokens: {cache.nbytes} bytes = {T} x ({Ckv} + {Dr}) x 4")

# %% [markdown]
# ## What it saves for K2.5
# Per token and layer MLA keeps Ckv + Dr = 576 values. Plain multi-head attention would keep every
# head's key (Dn + Dr = 192) and value (Dv = 128): 64 × 320 = 20480 values. For contrast we also show
# grouped-query attention with 8 KV heads (not used by K2.5; a common alternative).

# %%
k25 = KimiK25Config()                                                 # the real sizes are the defaults
latent, plain = cache_bytes_per_token(k25)                            # bf16, all 61 layers
L = k25.text.num_hidden_layers
assert latent == L * (512 + 64) * 2 and plain == L * 64 * (192 + 128) * 2
gqa8 = L * 8 * (192 + 128) * 2
context = 262144
rows = {"MHA, 64 heads": plain, "GQA, 8 KV heads": gqa8, "MLA (K2.5)": latent}
for name, b in rows.items():
    print(f"{name:<16} {b / 1024:8.1f} KiB/token   {b * context / 2**30:7.1f} GiB at 256K tokens")
print(f"MLA is {plain / latent:.1f}x smaller than MHA")
assert plain / latent > 35

# %%
fig = Figure(figsize=(6, 2.8))
ax = fig.add_subplot()
names = list(rows)
ax.barh(names, [b / 1024 for b in rows.values()], color=["tab:gray", "tab:olive", "tab:blue"])
for k, b in enumerate(rows.values()):
    ax.text(b / 1024, k, f"  {b / 1024:.0f} KiB, {b * context / 2**30:.0f} GiB @256K", va="center", fontsize=8)
ax.set_xlabel("KV cache per token, all 61 layers, bf16 (KiB)")
ax.set_xlim(0, plain / 1024 * 1.6)
ax.set_title("03 K2.5 cache per token: MLA keeps a 576-value latent per layer", fontsize=9)
fig.tight_layout()
fig.savefig(os.path.join(FIGURES, "03_cache_bytes.png"), dpi=90)

# %% [markdown]
# **Exercise.** Count multiply-adds per decoded token for naive and absorbed attention at S = 4096 with
# K2.5's sizes. Which is cheaper, and which moves fewer bytes? (Hint: naive expands S × H × (Dn + Dv).)
