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
# # 01 · A tour: from text to the next token
#
# **You will learn** how k25ref turns a prompt into ids, ids into logits with one forward pass, and logits
# into a greedy continuation -- and that the cached decode gives the same tokens as recomputing everything.
# **Needs** `pip install -e .` only. **Runs in** about 2 s on a laptop CPU, no downloads.
# **Code** `k25ref/model.py`, `k25ref/decoder.py`, `k25ref/tokenizer.py`. **Docs** docs/architecture.md.
#
# The whole text model in four lines [DSV3 §2] (docs/notation.md has the letters):
#
# $$ h^{(0)} = E[\text{ids}] \qquad h \leftarrow h + \mathrm{MLA}(\mathrm{RMSNorm}(h)) \qquad
#    h \leftarrow h + \mathrm{FFN}(\mathrm{RMSNorm}(h)) \qquad \text{logits} = \mathrm{RMSNorm}(h)\, W_{\text{head}}^\top $$
#
# where FFN is a dense SwiGLU in the first `first_k_dense_replace` layers and a mixture of experts after.
# The assertions below hold for any weights: the embedded model is random until a trained one replaces it.

# %%
import os
import sys

import numpy as np
from matplotlib.figure import Figure

import k25ref

FIGURES = os.environ.get("K25REF_FIGURES") or (
    sys.argv[sys.argv.index("--figures") + 1] if "--figures" in sys.argv else "k25ref-figures")
os.makedirs(FIGURES, exist_ok=True)
print(f"figures go to {os.path.abspath(FIGURES)} (--figures DIR or K25REF_FIGURES=DIR chooses)")

# %% [markdown]
# ## Load the embedded model
# `load_model` reads `config.json` and every shard header and checks each tensor's name, dtype and shape
# against the config. No tensor data is read yet.

# %%
path = k25ref.default_model_path()                                     # the checkpoint inside the package
model = k25ref.load_model(path)
tok = k25ref.Tokenizer.from_pretrained(path)
t = model.cfg.text
print(f"D={t.hidden_size} H={t.num_attention_heads} L={t.num_hidden_layers} V={t.vocab_size} "
      f"E={t.n_routed_experts} A={t.num_experts_per_tok}  (K2.5: 7168 64 61 163840 384 8)")
assert model.stats.snapshot()["bytes_read"] == 0          # headers only so far

# %% [markdown]
# ## Text to ids and back
# Byte-level BPE: every string round-trips exactly.

# %%
prompt = "ROMEO: But soft, what light"
ids = tok.encode(prompt)
print(len(ids), "tokens:", [tok.piece(i) for i in ids])
assert tok.decode(ids) == prompt

# %% [markdown]
# ## One forward pass
# `Model.logits(ids, capture=dict)` returns `(T, V)` logits and fills the dict with named intermediates.
# Claim 1: the logits are exactly the final-normed hidden state times the output head.
# Claim 2: attention is causal, so the logits of a prefix equal the first rows of the full logits.

# %%
acts = {}
logits = model.logits(ids, capture=acts)                              # (T, V)
T = len(ids)
print("logits", logits.shape, "| captured:", sorted(k for k in acts if not k.startswith("layers."))[:4], "...")
assert logits.shape == (T, t.vocab_size) and np.isfinite(logits).all()
head = model.weights.f32("language_model.lm_head.weight")             # (V, D)
assert np.allclose(logits, acts["final_norm"] @ head.T, rtol=1e-5, atol=1e-5)        # claim 1
assert np.allclose(model.logits(ids[:3]), logits[:3], rtol=1e-4, atol=1e-4)           # claim 2

# %% [markdown]
# The residual stream after each layer: one bar per layer, the RMS of the last token's hidden state.

# %%
rms = [float(np.sqrt(np.mean(acts[f"layers.{i}.hidden"][-1] ** 2))) for i in range(t.num_hidden_layers)]
fig = Figure(figsize=(5, 2.6))
ax = fig.add_subplot()
ax.bar(range(t.num_hidden_layers), rms,
       color=["tab:gray" if not t.is_moe_layer(i) else "tab:blue" for i in range(t.num_hidden_layers)])
ax.set_xticks(range(t.num_hidden_layers))
ax.set_xlabel("layer (grey: dense FFN, blue: MoE)")
ax.set_ylabel("RMS of h, last token")
ax.set_title("01 the residual stream through the layers", fontsize=9)
fig.tight_layout()
fig.savefig(os.path.join(FIGURES, "01_residual_rms.png"), dpi=90)
assert all(np.isfinite(rms))

# %% [markdown]
# ## Greedy generation with the latent cache
# `Model.generate` prefills the prompt once, then feeds one token at a time, reusing each layer's latent
# cache (docs/mla.md). Claim 3: every generated token is an argmax of the logits that a full, uncached
# forward pass over the sequence so far computes (up to float rounding near ties).

# %%
new = list(model.generate(ids, max_new_tokens=8, stop_ids=()))
print("continuation ids:", new, "->", repr(tok.decode(new)))
seq = list(ids)
for token in new:
    full = model.logits(seq)[-1]                                       # (V,) recomputed from scratch
    assert full[token] >= full.max() - 1e-4 * np.abs(full).max(), "cached decode left the greedy path"
    seq.append(token)
assert len(new) == 8

# %% [markdown]
# **Exercise.** Pass `temperature=0.8, seed=0` to `generate` twice and check the two runs agree; then change
# the seed. Where does sampling happen? (`k25ref/sampling.py`.)
