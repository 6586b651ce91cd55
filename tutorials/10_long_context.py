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
# # 10 · Long context: the online softmax, chunked prefill, and what 256K positions cost
#
# **You will learn** how attention can read keys a block at a time without ever holding a row of scores
# (the online softmax of FlashAttention), why that makes a prompt's attention memory independent of its
# length, how a prompt is run through the layers a chunk at a time, and what K2.5's latent cache costs at
# its full 262,144-position context. **Needs** 03. **Runs in** about 3 s, no downloads.
# **Code** `k25ref/mla.py` (`online_softmax_step`, `attend_blocked`), `k25ref/model.py` (`Model.forward`'s
# `prefill_chunk`, `check_context`), `k25ref/weights.py` (`context_bytes`). **Docs** docs/long-context.md.
# **Paper** [FlashAttention, Dao et al. 2022, §3.1]; [Milakov & Gimelshein 2018].
#
# Over key blocks $b = 1, 2, \dots$ with scores $s_j$, keep a running max $m$, sum $\ell$ and accumulator $a$:
#
# $$ m' = \max\big(m, \max_{j \in b} s_j\big) \qquad \ell' = \ell\, e^{m - m'} + \sum_{j \in b} e^{s_j - m'}
#    \qquad a' = a\, e^{m - m'} + \sum_{j \in b} e^{s_j - m'} v_j \qquad o = a / \ell $$

# %%
import os
import sys
import tempfile

import numpy as np
from matplotlib.figure import Figure

import k25ref
from k25ref import mla
from k25ref.config import KimiK25Config
from k25ref.errors import PromptError
from k25ref.mla import attend_absorbed, attend_blocked, attend_naive, online_softmax_step, project
from k25ref.summary import cache_bytes_per_token

FIGURES = os.environ.get("K25REF_FIGURES") or (
    sys.argv[sys.argv.index("--figures") + 1] if "--figures" in sys.argv else tempfile.mkdtemp(prefix="k25ref-"))
os.makedirs(FIGURES, exist_ok=True)
rng = np.random.default_rng(0)

# %% [markdown]
# ## The recurrence by hand, one query, one head
# Ten scores and values, read in blocks of three. After each block the running result is exactly the
# softmax-weighted mean of the keys seen so far: nothing about later keys is needed, and nothing earlier is kept.

# %%
s, v = rng.standard_normal(10) * 3, rng.standard_normal((10, 4))
m, l, a = -np.inf, 0.0, np.zeros(4)
for start in range(0, 10, 3):
    sb, vb = s[start:start + 3], v[start:start + 3]
    m_new = max(m, sb.max())
    p = np.exp(sb - m_new)
    l, a, m = l * np.exp(m - m_new) + p.sum(), a * np.exp(m - m_new) + p @ vb, m_new
    seen = np.exp(s[:start + 3] - s[:start + 3].max())
    assert np.allclose(a / l, seen @ v[:start + 3] / seen.sum())          # the softmax over the keys so far
print("online softmax over blocks of 3 == softmax over all 10:", a / l)

# %% [markdown]
# ## The same step in k25ref, for all heads and queries of a chunk at once
# `online_softmax_step` takes a block's raw scores (H, T, B), masks what is causally hidden (key j is visible to
# query t iff j <= diag + t), and updates m, l and the accumulator in place; `attend_blocked` wraps it with one
# BLAS product per block. It equals the one-shot attention for every block size, including 1 and sizes that
# do not divide the number of keys.

# %%
model = k25ref.load_model(k25ref.default_model_path())
cfg = model.cfg.text
H, Ckv = cfg.num_attention_heads, cfg.kv_lora_rank
w, T = model.weights.attention(0), 40
cos, sin = model.rope.at(0, T)
q_nope, q_rope, c_kv, k_rope = project(rng.standard_normal((T, cfg.hidden_size)).astype(np.float32), w, cfg, cos, sin)
for absorbed, one_shot in ((False, attend_naive), (True, attend_absorbed)):
    ref = one_shot(q_nope, q_rope, c_kv, k_rope, w, cfg, model.rope.scale)
    for B in (1, 7, 16, 64):
        out = attend_blocked(q_nope, q_rope, c_kv, k_rope, w, cfg, model.rope.scale, absorbed, block=B)
        err = np.abs(out - ref).max() / np.abs(ref).max()
        assert err < 1e-6, (absorbed, B, err)
print("blocked == one shot for B in 1, 7, 16, 64, naive and absorbed")
assert online_softmax_step is mla.online_softmax_step

# %% [markdown]
# ## Chunked prefill: the prompt goes through the layers C tokens at a time
# Each chunk appends its latents to the cache and attends to everything before it, so the logits of a prompt
# run in chunks of 1, 5 or 16 tokens are those of one pass; the default is `prefill_chunk=512`. "Are" up to
# float32 rounding: BLAS sums a product of 5 rows in another order than one of 48, which alone moves this
# model's logits by about 1e-6 of their largest value (one-shot attention in chunks does the same).

# %%
ids = np.arange(2, 2 + 48) * 37 % 200
one_pass = model.logits(ids, prefill_chunk=None)
for C in (1, 5, 16):
    err = np.abs(model.logits(ids, prefill_chunk=C) - one_pass).max() / np.abs(one_pass).max()
    assert err < 2e-6, (C, err)
    print(f"chunked logits, C = {C:2d}: {err:.1e} of the largest logit off one pass")

# %% [markdown]
# ## The limit: positions the rotary embedding is defined for
# The embedded model has 1024 positions; a longer prompt (with the tokens to generate) is refused before any work.

# %%
n = cfg.max_position_embeddings
try:
    model.generate(np.ones(n - 10, np.int64), max_new_tokens=20)
    raise AssertionError("a prompt past the context was accepted")
except PromptError as e:
    print("PromptError:", e)
    assert f"context of {n}" in str(e) and f"need {n + 10} positions" in str(e)

# %% [markdown]
# ## What the scores would cost without blocks, and what the cache costs
# One-shot attention holds H x T x S float32 scores per layer: at K2.5's 64 heads a 4K-token prompt needs 4.3 GB.
# Blocked, with C = 512 queries per chunk and B = 512 keys per block, it holds 64 MiB, whatever the length.
# The cache is what grows with the context: 576 values per token and layer, 61 layers, bf16 in the release:
# 70 KB per token, 18 GB at 256K positions -- against 2.5 MB per token for plain multi-head attention
# (k25ref keeps its cache in float32, twice that).

# %%
k25 = KimiK25Config()
one_shot_bytes = 64 * 4096 * 4096 * 4
blocked_bytes = 64 * 512 * 512 * 4
latent, plain = cache_bytes_per_token(k25)
context = k25.text.max_position_embeddings
print(f"scores at 4K tokens: one shot {one_shot_bytes / 1e9:.1f} GB, blocked {blocked_bytes / 2**20:.0f} MiB")
print(f"cache: {latent / 1e3:.1f} KB/token, {latent * context / 1e9:.1f} GB at {context} positions; "
      f"plain MHA {plain / 1e6:.2f} MB/token")
assert round(one_shot_bytes / 1e9, 1) == 4.3 and blocked_bytes == 64 * 2**20
assert latent == 61 * 576 * 2 and round(latent / 1e3) == 70 and round(latent * context / 1e9) == 18
assert round(plain / 1e6, 1) == 2.5

# %%
lengths = 2.0 ** np.arange(10, 19)                                       # 1K .. 256K tokens
fig = Figure(figsize=(6, 3.4))
ax = fig.add_subplot()
ax.loglog(lengths, 64 * lengths ** 2 * 4, "o-", label="one-shot scores, one layer (64 H T²)")
ax.loglog(lengths, np.full_like(lengths, blocked_bytes), "s-", label="blocked scores (64 x 512 x 512)")
ax.loglog(lengths, lengths * latent, "^-", label="latent cache, 61 layers (bf16)")
ax.loglog(lengths, lengths * plain, "v--", label="plain MHA cache, 61 layers (bf16)")
ax.axhline(24 * 2**30, color="k", lw=0.8, ls=":")
ax.text(lengths[0], 24 * 2**30 * 1.3, "24 GiB", fontsize=7)
ax.set(xlabel="prompt tokens", ylabel="bytes")
ax.set_title("10 K2.5 attention memory: blocked scores stay flat, the latent cache grows linearly", fontsize=8)
ax.legend(fontsize=7)
ax.grid(True, which="both", alpha=0.3)
fig.tight_layout()
fig.savefig(os.path.join(FIGURES, "10_long_context_memory.png"), dpi=90)

# %% [markdown]
# **Exercise.** With `prefill_chunk=C` and `KEY_BLOCK=B`, how many multiply-adds does the absorbed path spend
# on keys a query cannot see (the upper triangle of the last blocks)? What choice of B makes that waste small
# while the (H*C, Ckv) @ (Ckv, B) products stay large enough for BLAS to run near its peak?
