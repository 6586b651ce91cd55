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
# # 07 · Streaming the full model: what a token reads, what the cache holds, and the numbers for 595 GB
#
# **You will learn** why a 1-trillion-parameter mixture of experts can run from disk on one machine: each
# decoded token needs only its *active set* (every dense weight, 8 of 384 experts per layer, one embedding
# row, the output head), k25ref reads exactly that on demand, and a byte budget decides what stays in memory.
# **Needs** 01, 04, 05. **Runs in** about 3 s, no downloads (the 595 GB figures come from `config.json` and
# the shard index alone). **Code** `k25ref/summary.py` (`summarize`, `cache_bytes_per_token`),
# `k25ref/streaming.py` (`WeightCache`, `Reader`, `IOStats`), `k25ref/model.py` (`load_model(path, memory_budget)`).
# **Docs** docs/weights.md, docs/streaming.md, docs/performance.md.
#
# $$ \text{bytes per decoded token} \approx \underbrace{\textstyle\sum_{\text{dense}} |W|}_{\text{attention, shared, layer 0, head}}
#    + \underbrace{L_{\text{moe}} \cdot A \cdot 3 \cdot D F \cdot \tfrac{4.5}{8}}_{\text{chosen INT4 experts}} \qquad
#    \text{seconds per token} \ge \frac{\text{bytes per token}}{\text{disk bandwidth}} $$

# %%
import json
import os
import sys
import tempfile

import numpy as np
from matplotlib.figure import Figure

import k25ref
from k25ref.config import from_hf
from k25ref.make_tiny import make_tiny, preset
from k25ref.summary import format_summary, summarize
from k25ref.weights import expected_tensors

FIGURES = os.environ.get("K25REF_FIGURES") or (
    sys.argv[sys.argv.index("--figures") + 1] if "--figures" in sys.argv else "k25ref-figures")
os.makedirs(FIGURES, exist_ok=True)
print(f"figures go to {os.path.abspath(FIGURES)} (--figures DIR or K25REF_FIGURES=DIR chooses)")

# %% [markdown]
# ## The real checkpoint, from its index alone
# Write K2.5's `config.json` and a `model.safetensors.index.json` naming every tensor (as the release's
# does, 64 shards), with no shard on disk. `summarize` sizes everything from the config's shapes.

# %%
scratch = tempfile.TemporaryDirectory(prefix="k25ref-")                # removed when Python exits
full = os.path.join(scratch.name, "full-index")
os.makedirs(full)
hub = preset("full")
with open(os.path.join(full, "config.json"), "w") as f:
    json.dump(hub, f)
cfg = from_hf(hub)
expected = expected_tensors(cfg)
weight_map = {name: f"model-{1 + k * 64 // len(expected):05d}-of-00064.safetensors" for k, name in enumerate(expected)}
with open(os.path.join(full, "model.safetensors.index.json"), "w") as f:
    json.dump({"metadata": {}, "weight_map": weight_map}, f)
s = summarize(full)
print("\n".join(format_summary(s)))

# %% [markdown]
# Claims: about 1.03 T parameters and 595 GB on disk (the release is 64 shards, 595.2 GB), about 33 G
# parameters active per token; a decoded token reads about 33 GB, 1/18 of the checkpoint.

# %%
assert 1.0e12 < s["params_total"] < 1.06e12 and 32e9 < s["params_active_per_token"] < 34e9
assert abs(s["bytes_total"] - 595.2e9) < 1e9
assert s["bytes_total"] / s["bytes_read_per_decoded_token"] > 15
assert s["problems"] == [] and s["shards"] == 64

# %% [markdown]
# ## Where those 33 GB go
# Group the active set by concept. Routed experts are INT4 (4.5 bits/weight with scales); everything else
# is bf16.

# %%
def stored_bytes(dtypes, shape):
    return int(np.prod(shape)) * {"BF16": 2, "F16": 2, "F32": 4, "I32": 4, "I64": 8}[dtypes[0]]

A, D = cfg.text.num_experts_per_tok, cfg.text.hidden_size
parts = {"attention (MLA)": 0, "dense FFN (layer 0)": 0, "shared experts": 0, f"routed experts ({A} of 384)": 0,
         "router + norms": 0, "lm_head": 0, "embedding row": D * 2}
for name, (dtypes, shape) in expected.items():
    if name.startswith(("vision_tower.", "mm_projector.")) or "embed_tokens" in name:
        continue
    if ".mlp.experts." in name:
        if int(name.split(".mlp.experts.")[1].split(".")[0]) < A:                    # any A experts: same sizes
            parts[f"routed experts ({A} of 384)"] += stored_bytes(dtypes, shape)
    elif ".self_attn." in name and "layernorm" not in name:
        parts["attention (MLA)"] += stored_bytes(dtypes, shape)
    elif ".shared_experts." in name:
        parts["shared experts"] += stored_bytes(dtypes, shape)
    elif ".mlp." in name and ".gate." not in name:
        parts["dense FFN (layer 0)"] += stored_bytes(dtypes, shape)
    elif "lm_head" in name:
        parts["lm_head"] += stored_bytes(dtypes, shape)
    else:
        parts["router + norms"] += stored_bytes(dtypes, shape)
for k, v in parts.items():
    print(f"{k:<28} {v / 1e9:7.2f} GB")
assert abs(sum(parts.values()) - s["bytes_read_per_decoded_token"]) < 1e-6 * s["bytes_read_per_decoded_token"]

# %% [markdown]
# ## A tiny model under a memory budget
# The same machinery on a small checkpoint: `load_model(path, memory_budget=bytes)` holds at most that many
# bytes: the working set of one forward pass (`model.working_set`, from the tensor sizes) plus a cache of
# weights in the rest (least recently used go first, routed experts before dense weights); everything else is
# read again when needed.
# Claims: (1) the logits and the greedy tokens do not depend on the budget; (2) the cache never holds more
# than the budget less the working set; (3) with no budget, the first decoded token reads the active set (as
# `summarize` counts it) and later tokens read only what they have not seen (new experts, one embedding row).

# %%
tiny = make_tiny(os.path.join(scratch.name, "tiny"), "tiny", seed=0, shards=3)
size = sum(os.path.getsize(os.path.join(tiny, f)) for f in os.listdir(tiny) if f.endswith(".safetensors"))
ids = [7, 300, 21, 400, 9, 12]
steps = 8

def bytes_per_step(model):                                             # prefill + steps decodes -> reads per call
    cache, reads, token = model.new_cache(), [], np.array(ids)
    for _ in range(steps + 1):
        before = model.stats.snapshot()["bytes_read"]
        token = np.array([int(np.argmax(model.forward(token, cache, absorbed=True)[-1]))])
        reads.append(model.stats.snapshot()["bytes_read"] - before)
    return reads

working = k25ref.load_model(tiny).working_set
budgets = {"no budget": None, "cache = checkpoint / 4": working + size // 4, "budget = 1 byte": 1}
reads, tokens = {}, {}
for label, budget in budgets.items():
    model = k25ref.load_model(tiny, memory_budget=budget)
    tokens[label] = list(model.generate(ids, 6, stop_ids=()))
    reads[label] = bytes_per_step(k25ref.load_model(tiny, memory_budget=budget))
    assert budget is None or model.cache.bytes <= max(budget - working, 0)       # claim 2
    print(f"{label:<24} read {sum(reads[label]) / 1e6:6.2f} MB over {steps + 1} calls; tokens {tokens[label]}")
assert len({tuple(v) for v in tokens.values()}) == 1                                # claim 1
eager, small = k25ref.load_model(tiny), k25ref.load_model(tiny, memory_budget=working + size // 6)
assert np.allclose(eager.logits(ids), small.logits(ids), rtol=1e-6, atol=1e-6)

one = k25ref.load_model(tiny)
one.forward([ids[0]], one.new_cache())
cold, active = one.stats.snapshot()["bytes_read"], summarize(tiny)["bytes_read_per_decoded_token"]
print(f"first token, cold: {cold} bytes read; active set: {active} bytes")
assert active <= cold <= 1.3 * active + 4096                                         # claim 3 (+ weight_shape)
assert max(reads["no budget"][1:]) < reads["no budget"][0]

# %% [markdown]
# ## Which experts a warm cache still holds, layer by layer
# Decode 24 tokens under a budget whose cache holds a sixth of the checkpoint and count, per token and
# per MoE layer, how many of the chosen experts were still cached (`model.stats`: per-layer hits and misses).
# Claim (4): the hit rate starts at 0 (an empty cache) and rises as tokens reuse experts.

# %%
tokens_n = 24
model = k25ref.load_model(tiny, memory_budget=working + size // 6)
cache, token, hit_rates = model.new_cache(), np.array(ids), []
for _ in range(tokens_n):
    before = model.stats.snapshot()
    token = np.array([int(np.argmax(model.forward(token, cache, absorbed=True)[-1]))])
    after = model.stats.snapshot()
    layers = sorted(after["expert_hits"].keys() | after["expert_misses"].keys())
    row = []
    for layer in layers:
        h = after["expert_hits"].get(layer, 0) - before["expert_hits"].get(layer, 0)
        m = after["expert_misses"].get(layer, 0) - before["expert_misses"].get(layer, 0)
        row.append(h / max(h + m, 1))
    hit_rates.append(row)
hit_rates = np.array(hit_rates)                                                  # (tokens, MoE layers)
print("expert hit rate per MoE layer, first call / mean of the last 8:", hit_rates[0].round(2),
      hit_rates[-8:].mean(0).round(2))
assert hit_rates[0].max() == 0 and hit_rates[-8:].mean() > 0.2                    # claim 4

# %%
fig = Figure(figsize=(15, 3.2))
ax = fig.add_subplot(1, 3, 1)
names = list(parts)
ax.barh(names, [parts[k] / 1e9 for k in names], color="tab:blue")
ax.set_xlabel("GB read per decoded token (bf16 / INT4 as stored)")
ax.set_title(f"K2.5: {s['bytes_read_per_decoded_token'] / 1e9:.0f} GB of {s['bytes_total'] / 1e9:.0f} GB "
             f"per token; {s['bytes_read_per_decoded_token'] / 3e9:.0f} s at 3 GB/s if nothing is cached", fontsize=8)
ax.tick_params(axis="y", labelsize=7)
ax2 = fig.add_subplot(1, 3, 2)
for label, r in reads.items():
    ax2.plot(range(len(r)), np.array(r) / 1e3, "o-", ms=3, label=label)
ax2.set_yscale("symlog", linthresh=1)
ax2.set_xlabel("call (0 = prefill of 6 tokens, then one decoded token each)")
ax2.set_ylabel("KB read from disk")
ax2.set_title("tiny model: reads per call under three budgets", fontsize=8)
ax2.legend(fontsize=7)
ax3 = fig.add_subplot(1, 3, 3)
for j, layer in enumerate(layers):
    ax3.plot(range(tokens_n), hit_rates[:, j], "o-", ms=3, label=f"layer {layer}")
ax3.set_xlabel("call (0 = prefill, then one decoded token each)")
ax3.set_ylabel("chosen experts already cached")
ax3.set_ylim(-0.05, 1.05)
ax3.set_title("tiny model, cache = checkpoint / 6: expert hit rate per layer", fontsize=8)
ax3.legend(fontsize=7)
fig.tight_layout()
fig.savefig(os.path.join(FIGURES, "07_streaming.png"), dpi=90)

# %% [markdown]
# **Exercise.** How many bytes would the KV cache add per token at 256K context (`s["cache_bytes_per_token_latent"]`),
# and how does that compare with the weights a token reads? Then run
# `k25ref generate --max-memory 10MB --stats -n 8` (the embedded model's working set is about 8 MB) and read the
# hit rates per layer.
