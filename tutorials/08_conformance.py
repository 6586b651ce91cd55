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
# # 08 · Conformance: check k25ref against transformers yourself
#
# **You will learn** how k25ref is held to the transformers implementation of Kimi K2.5: committed
# *goldens* (tiny checkpoints plus what the oracle computed on them) that need only NumPy, a live
# comparison when torch and transformers are installed, and how the goldens are made.
# **Needs** 01. **Runs in** about 2 s with NumPy only; about 10 s more for the live part (skipped cleanly
# without torch). **Code** `tests/test_conformance.py`, `tools/make_goldens.py`, `tools/oracle.py`.
# **Docs** docs/conformance.md.
#
# The figure of merit for every tensor (logits, per-layer outputs, routing weights):
#
# $$ \mathrm{rel}(y, y^{\text{oracle}}) = \frac{\max_i |y_i - y^{\text{oracle}}_i|}{\max_i |y^{\text{oracle}}_i|}
#    \;<\; 10^{-3} \text{ (logits)},\; 10^{-4} \text{ (intermediates)} $$

# %%
import hashlib
import importlib.util
import json
import os
import pathlib
import sys
import tempfile

import numpy as np
from matplotlib.figure import Figure

import k25ref

FIGURES = os.environ.get("K25REF_FIGURES") or (
    sys.argv[sys.argv.index("--figures") + 1] if "--figures" in sys.argv else "k25ref-figures")
os.makedirs(FIGURES, exist_ok=True)
print(f"figures go to {os.path.abspath(FIGURES)} (--figures DIR or K25REF_FIGURES=DIR chooses)")
ROOT = pathlib.Path(__file__).resolve().parents[1] if "__file__" in globals() else pathlib.Path.cwd().parent
GOLDENS = ROOT / "tests" / "goldens"

def rel(y, ref):
    return float(np.abs(np.asarray(y, np.float64) - ref).max() / np.abs(ref).max())

# %% [markdown]
# ## What the goldens are
# `tests/goldens/MANIFEST.json` records the command, the software versions, the tolerances, one line per
# case, and the sha256 of every file. Claim: the files on disk are exactly the ones the manifest lists.

# %%
manifest = json.loads((GOLDENS / "MANIFEST.json").read_text())
tol = manifest["tolerances"]
print("made by:", manifest["command"], "|", {k: manifest["generator"][k] for k in ("torch", "transformers")})
print("tolerances:", {k: tol[k] for k in ("logits_rel", "intermediate_rel", "greedy_margin")})
for name, case in manifest["cases"].items():
    print(f"  {name:<12} {case['description'][:90]}")
for path, digest in manifest["files"].items():
    assert hashlib.sha256((GOLDENS / path).read_bytes()).hexdigest() == digest, path

# %% [markdown]
# ## Compare against the committed goldens (NumPy only)
# For every case: load the tiny checkpoint through the real loader, run the 64-token golden input, compare
# logits and each layer's output; compare each token's choice of experts as a set (skipping the tokens the
# oracle itself saw as near-ties); decode greedily with the latent cache and compare tokens up to the first
# step whose oracle top-2 margin is below `greedy_margin`.

# %%
results = {}
for name in sorted(manifest["cases"]):
    model = k25ref.load_model(str(GOLDENS / name / "checkpoint"))
    with np.load(GOLDENS / name / "golden.npz") as z:
        golden = {k: z[k] for k in z.files}
    acts = {}
    logits = model.logits(golden["seq64.input_ids"], capture=acts)
    layers = model.cfg.text.num_hidden_layers
    inter = max(rel(acts[f"layers.{i}.{k}"], golden[f"seq64.layers.{i}.{k}"])
                for i in range(layers) for k in ("attn_out", "mlp_out", "hidden"))
    for i in range(layers):
        if f"seq64.layers.{i}.router_indices" in golden:
            clear = golden[f"seq64.layers.{i}.router_margin"] >= tol["router_tie"]
            ours, theirs = acts[f"layers.{i}.router_indices"], golden[f"seq64.layers.{i}.router_indices"]
            assert all(set(ours[t]) == set(theirs[t]) for t in np.nonzero(clear)[0]), f"{name}: layer {i} router"
    prompt, want, margins = golden["greedy.prompt"], golden["greedy.tokens"], golden["greedy.margins"]
    n = int(np.argmax(margins < tol["greedy_margin"])) if (margins < tol["greedy_margin"]).any() else len(want)
    got = list(model.generate(prompt, len(want), stop_ids=()))
    results[name] = (rel(logits, golden["seq64.logits"]), inter)
    print(f"{name:<12} logits {results[name][0]:.1e}  intermediates {inter:.1e}  greedy {n}/{len(want)} steps compared")
    assert results[name][0] < tol["logits_rel"] and inter < tol["intermediate_rel"]
    assert got[:n] == want[:n].tolist()

# %% [markdown]
# ## The live oracle (only when torch, transformers and compressed-tensors are installed)
# `tools/oracle.py` loads a checkpoint exactly as a transformers user loads the release
# (`Kimi_K25ForConditionalGeneration.from_pretrained`, float32, eager), including compressed-tensors'
# own INT4 decompression. Here we make a new random checkpoint that no golden covers and compare.

# %%
live = all(importlib.util.find_spec(m) is not None for m in ("torch", "transformers", "compressed_tensors"))
if live:
    from k25ref.make_tiny import make_tiny
    sys.path.insert(0, str(ROOT / "tools"))
    import oracle
    scratch = tempfile.TemporaryDirectory(prefix="k25ref-")            # removed when Python exits
    folder = make_tiny(os.path.join(scratch.name, "live"), "tiny-groups", seed=7, shards=2, tokenizer=False)
    ids = np.random.default_rng(7).integers(0, 700, size=64)
    ours = k25ref.load_model(folder).logits(ids)
    theirs = oracle.oracle_logits(oracle.load_oracle(folder), ids)
    results["live: tiny-groups seed 7"] = (rel(ours, theirs), float("nan"))
    print(f"live oracle: logits relative error {results['live: tiny-groups seed 7'][0]:.1e}")
    assert results["live: tiny-groups seed 7"][0] < tol["logits_rel"]
else:
    print("torch / transformers / compressed-tensors not installed: live comparison skipped "
          "(pip install -e '.[oracle]' to run it)")

# %%
fig = Figure(figsize=(7, 0.9 + 0.35 * len(results)))
ax = fig.add_subplot()
names = list(results)
ax.barh(names, [results[k][0] for k in names], color=["tab:purple" if k.startswith("live") else "tab:blue" for k in names])
ax.axvline(tol["logits_rel"], color="red", ls="--", label=f"tolerance {tol['logits_rel']:g}")
ax.set_xscale("log")
ax.set_xlim(1e-9, 1e-2)
ax.set_xlabel("max |k25ref - transformers| / max |transformers|, logits of a 64-token input")
ax.legend(fontsize=7, loc="lower right")
ax.tick_params(axis="y", labelsize=8)
fig.tight_layout()
fig.savefig(os.path.join(FIGURES, "08_conformance.png"), dpi=90)

# %% [markdown]
# ## How the goldens are made
# `python tools/make_goldens.py` (needs the `oracle` extra) writes, for each case, a tiny random checkpoint
# in the released layout with `k25ref.make_tiny`, loads it with `tools/oracle.py`, draws inputs (redrawing
# any whose routing is within 1e-5 of a tie), and saves inputs, logits, per-layer intermediates, router
# choices and margins, and a greedy continuation with its margins, then the manifest. torch runs on one
# thread, so `python tools/make_goldens.py --check` reproduces every byte; `--report` prints the measured
# error table of docs/conformance.md with NumPy only.
#
# **Exercise.** Copy a case's checkpoint, change `routed_scaling_factor` in its `config.json`, and rerun the
# comparison. How far do the logits move? (`tests/test_conformance.py::test_goldens_notice_a_wrong_config`
# does this for five features.)
