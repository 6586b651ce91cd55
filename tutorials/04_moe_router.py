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
# # 04 · The MoE router: sigmoid scores, a bias that only steers, groups, and routed scaling
#
# **You will learn** how each token picks A of E experts (K2.5: 8 of 384), why the load-balancing bias
# changes *which* experts are chosen but never *how much* they weigh, what group-limited routing does,
# and how the chosen experts' outputs are mixed. **Needs** 01. **Runs in** about 2 s, no downloads.
# **Code** `k25ref/moe.py` (`route`, `expert_ffn`, `moe`). **Docs** docs/moe.md. **Paper** [DSV3 §2.1.2, eqs. 12-16].
#
# $$ s_{t,i} = \sigma(u_t^\top e_i) \qquad
#    \mathcal{K}_t = \operatorname{TopK}_A\{\, s_{t,i} + b_i : i \text{ in the best } k_g \text{ groups} \}$$
#
# $$ g_{t,i} = \rho\,\frac{s_{t,i}}{\sum_{j\in\mathcal{K}_t} s_{t,j}} \qquad
#    h_t = \sum_{i\in\mathcal{K}_t} g_{t,i}\,\mathrm{FFN}_i(u_t) + \mathrm{FFN}_{\text{shared}}(u_t) $$
#
# ρ is `routed_scaling_factor` (2.827 in K2.5); a group's score is the sum of its two best s + b.

# %%
import os
import sys

import numpy as np
from matplotlib.figure import Figure

import k25ref
from k25ref.moe import expert_ffn, moe, route

FIGURES = os.environ.get("K25REF_FIGURES") or (
    sys.argv[sys.argv.index("--figures") + 1] if "--figures" in sys.argv else "k25ref-figures")
os.makedirs(FIGURES, exist_ok=True)
print(f"figures go to {os.path.abspath(FIGURES)} (--figures DIR or K25REF_FIGURES=DIR chooses)")
rng = np.random.default_rng(0)

# %%
model = k25ref.load_model(k25ref.default_model_path())
cfg = model.cfg.text
E, A, G, Gk = cfg.n_routed_experts, cfg.num_experts_per_tok, cfg.n_group, cfg.topk_group
layer = cfg.first_k_dense_replace                                      # the first MoE layer
gate, bias = model.weights.router(layer)                               # (E, D), (E,)
print(f"E={E} experts in G={G} groups, a token may use {Gk} groups, picks A={A}; rho={cfg.routed_scaling_factor}")

# %% [markdown]
# ## The router from the equations
# Eight lines, written straight from the equations, then checked against `moe.route`.

# %%
def my_route(u, gate, bias):                                           # (T, D) -> (T, A), (T, A)
    s = 1 / (1 + np.exp(-(u @ gate.T)))                                # (T, E) affinities
    pick = s + bias                                                    # (T, E) the bias steers the choice
    group = np.sort(pick.reshape(len(u), G, E // G), -1)[..., -2:].sum(-1)       # (T, G) top-2 sum
    keep = np.argsort(-group, -1, kind="stable")[:, :Gk]                          # (T, Gk) best groups
    allowed = (np.arange(E)[None, None] // (E // G) == keep[:, :, None]).any(1)   # (T, E) in a kept group
    idx = np.argsort(-np.where(allowed, pick, -np.inf), -1, kind="stable")[:, :A]  # (T, A)
    g = np.take_along_axis(s, idx, -1)                                 # (T, A) weights come from s alone
    g = g / g.sum(-1, keepdims=True) if cfg.norm_topk_prob else g
    return idx, cfg.routed_scaling_factor * g

u = rng.standard_normal((16, cfg.hidden_size)).astype(np.float32)     # (T, D) 16 stand-in tokens
idx, g = route(u, gate, bias, cfg)                                     # (T, A), (T, A)
my_idx, my_g = my_route(u, gate, bias)
assert (idx == my_idx).all() and np.allclose(g, my_g, rtol=1e-5, atol=1e-6)
print("token 0 picks", idx[0], "with weights", np.round(g[0], 3))

# %% [markdown]
# ## Three claims, checked
# 1. Every token picks exactly A distinct experts, from at most `topk_group` groups.
# 2. With `norm_topk_prob`, the weights sum to ρ.
# 3. The bias only steers: a huge bias on one expert forces it into every token's choice, yet its
#    weight is still computed from s (without b).

# %%
assert all(len(set(row)) == A for row in idx)                                        # claim 1
assert all(len(set(row // (E // G))) <= Gk for row in idx)
if cfg.norm_topk_prob:
    assert np.allclose(g.sum(-1), cfg.routed_scaling_factor, rtol=1e-5)              # claim 2
forced = bias.copy()
forced[E - 1] += 1e3
f_idx, f_g = route(u, gate, forced, cfg)
s = 1 / (1 + np.exp(-(u @ gate.T)))                                                  # (T, E)
slot = np.argmax(f_idx == E - 1, axis=-1)                                            # (T,) where it landed
assert (f_idx == E - 1).any(-1).all()                                                # claim 3: always chosen
expected = s[np.arange(len(u)), E - 1] / np.take_along_axis(s, f_idx, -1).sum(-1) * cfg.routed_scaling_factor
got = f_g[np.arange(len(u)), slot]
assert np.allclose(got, expected if cfg.norm_topk_prob else s[:, E - 1] * cfg.routed_scaling_factor, rtol=1e-5)
print(f"forced expert {E - 1}: chosen by all {len(u)} tokens, mean weight {got.mean():.3f} (from s, not s + b)")

# %% [markdown]
# ## Mixing the experts
# `moe` runs each chosen expert once on the tokens that chose it. Claim: that equals the per-token sum
# in the equation. Routed experts are INT4 here; `expert_ffn` dequantizes them (tutorial 05).

# %%
expert = lambda e: model.weights.expert(layer, e)                      # (gate, up, down) of expert e
shared = model.weights.mlp(f"language_model.model.layers.{layer}.mlp.shared_experts.")
out = moe(u, idx, g, expert, shared)                                   # (T, D)
by_token = np.stack([sum(g[t, a] * expert_ffn(u[t:t + 1], *expert(int(idx[t, a])))[0] for a in range(A))
                     + expert_ffn(u[t:t + 1], *shared)[0] for t in range(len(u))])   # (T, D)
assert np.allclose(out, by_token, rtol=1e-4, atol=1e-5)

# %% [markdown]
# ## Expert load over a real text
# `Model.logits(..., capture=acts)` records each MoE layer's choices. Claim: every layer makes exactly
# T × A assignments. The picture shows how unevenly they fall on the experts (with trained weights the
# correction bias evens this out over a large corpus; random weights show whatever they show).

# %%
text = ("ROMEO: But soft, what light through yonder window breaks? It is the east, and Juliet is the sun. "
        "Arise, fair sun, and kill the envious moon, who is already sick and pale with grief.")
ids = k25ref.Tokenizer.from_pretrained(k25ref.default_model_path()).encode(text)
acts = {}
model.logits(ids, capture=acts)
moe_layers = [i for i in range(cfg.num_hidden_layers) if cfg.is_moe_layer(i)]
load = np.stack([np.bincount(acts[f"layers.{i}.router_indices"].ravel(), minlength=E) for i in moe_layers])  # (L_moe, E)
assert (load.sum(-1) == len(ids) * A).all()
print(f"{len(ids)} tokens x {A} = {len(ids) * A} assignments per MoE layer; busiest expert per layer:", load.max(-1))

# %%
fig = Figure(figsize=(7, 1.2 + 0.5 * len(moe_layers)))
ax = fig.add_subplot()
im = ax.imshow(load, aspect="auto", cmap="viridis", interpolation="nearest")
ax.set_yticks(range(len(moe_layers)), labels=[f"layer {i}" for i in moe_layers])
ax.set_xlabel(f"routed expert (groups of {E // G} between white lines)")
for b in range(1, G):
    ax.axvline(b * E // G - 0.5, color="white", lw=1)
fig.colorbar(im, ax=ax, label="tokens")
ax.set_title(f"04 expert load over {len(ids)} tokens of Romeo and Juliet (A = {A} per token)", fontsize=9)
fig.tight_layout()
fig.savefig(os.path.join(FIGURES, "04_expert_load.png"), dpi=90)

# %% [markdown]
# **Exercise.** Set `topk_group = n_group` with `dataclasses.replace(cfg, topk_group=G)` and count how many
# tokens change their choice. Which claim above would fail if groups were scored by their single best
# expert instead of their top two?
