"""k25ref against the committed transformers goldens (tests/goldens/, written by tools/make_goldens.py).

No torch here: each case's tiny checkpoint is loaded with `k25ref.load_model` and every golden input is run
through k25ref, then compared with what the transformers oracle computed on the same checkpoint:

    logits            max|k25ref - oracle| / max|oracle|  <  tolerances.logits_rel (1e-3, the conformance bar)
    intermediates     the same figure per tensor          <  tolerances.intermediate_rel (1e-4)
                      (attn_out, mlp_out, hidden per layer, final_norm)
    router weights    the same figure, experts matched by index, near-ties excluded  (1e-4)
                      and k25ref itself is held to tolerances.k25ref_rel (1e-5) on all three; ~1e-6 is seen
    embed             bit-exact (the stored bf16 row, widened)
    router choice     equal as sets per token, except tokens the oracle itself saw as near-ties
    greedy decoding   32 new tokens from k25ref's latent cache, token for token up to the first step whose
                      oracle top-1/top-2 logit margin is below tolerances.greedy_margin

Tolerances come from MANIFEST.json, never from this file. `measure(case_dir)` returns the figures;
`python tools/make_goldens.py --report` prints them as the table in docs/conformance.md.
"""
import hashlib
import json
import os
import shutil

import numpy as np
import pytest
from conftest import check_close, rel_err

import k25ref

GOLDENS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "goldens")
INTERMEDIATE_KINDS = ("attn_out", "mlp_out", "hidden")


def manifest(root=GOLDENS):
    with open(os.path.join(root, "MANIFEST.json")) as f:
        return json.load(f)


MANIFEST = manifest()
TOL = MANIFEST["tolerances"]
CASES = sorted(MANIFEST["cases"])


def load_golden(case_dir):
    """golden.npz -> {length: {name: array}}, plus the 'greedy' entry."""
    with np.load(os.path.join(case_dir, "golden.npz"), allow_pickle=False) as z:
        flat = {k: z[k] for k in z.files}
    out = {}
    for key, arr in flat.items():
        group, name = key.split(".", 1)
        out.setdefault(int(group[3:]) if group.startswith("seq") else group, {})[name] = arr
    return out


def k25ref_greedy(model, prompt, n):  # (P,) -> (n,) int64
    """Greedy decoding with k25ref's latent cache: prefill the prompt once, then one token per forward."""
    cache = model.new_cache()
    logits = model.forward(np.asarray(prompt), cache)                        # (P, V)
    tokens = [int(np.argmax(logits[-1]))]
    while len(tokens) < n:
        logits = model.forward(np.array(tokens[-1:]), cache)                 # (1, V)
        tokens.append(int(np.argmax(logits[-1])))
    return np.array(tokens, np.int64)


def greedy_steps_to_compare(margins, tol):
    """Steps before the first one whose oracle margin is a near-tie (where either token is a right answer)."""
    close = np.nonzero(margins < tol)[0]
    return int(close[0]) if close.size else len(margins)


def routers_agree(out_idx, ref_idx, margins, tie):  # (T, A), (T, A), (T,) -> (T,) bool mask of compared tokens
    """Which tokens are compared (not near-ties in the oracle); raise if one of them picked other experts."""
    compared = margins >= tie
    for t in np.nonzero(compared)[0]:
        if set(out_idx[t]) != set(ref_idx[t]):
            raise AssertionError(f"router: token {t} chose {sorted(out_idx[t])}, oracle {sorted(ref_idx[t])} "
                                 f"(oracle margin {margins[t]:.2e})")
    return compared


def by_expert(idx, w):  # (T, A), (T, A) -> (T, A): weights ordered by expert index
    return np.take_along_axis(w, np.argsort(idx, axis=-1), axis=-1)


def comparisons(case_dir):
    """Run k25ref on every golden input of a case. Yields (label, kind, k25ref array, oracle array) in forward
    order, so the first failure is nearest its cause; kinds are embed, intermediate, router_weights, logits.
    Router sets are checked on the way (AssertionError)."""
    model, golden = k25ref.load_model(os.path.join(case_dir, "checkpoint")), load_golden(case_dir)
    for T in sorted(k for k in golden if isinstance(k, int)):
        ref, cap = golden[T], {}
        logits = model.logits(ref["input_ids"], capture=cap)
        yield f"seq{T}.embed", "embed", cap["embed"], ref["embed"]
        for i in range(model.cfg.text.num_hidden_layers):
            for kind in INTERMEDIATE_KINDS:
                yield f"seq{T}.layers.{i}.{kind}", "intermediate", cap[f"layers.{i}.{kind}"], ref[f"layers.{i}.{kind}"]
            if f"layers.{i}.router_indices" in ref:
                p = f"layers.{i}.router_"
                ok = routers_agree(cap[p + "indices"], ref[p + "indices"], ref[p + "margin"], TOL["router_tie"])
                yield (f"seq{T}.{p}weights", "router_weights", by_expert(cap[p + "indices"], cap[p + "weights"])[ok],
                       by_expert(ref[p + "indices"], ref[p + "weights"])[ok])
        yield f"seq{T}.final_norm", "intermediate", cap["final_norm"], ref["final_norm"]
        yield f"seq{T}.logits", "logits", logits, ref["logits"]


def measure(case_dir):
    """The figures of one case: worst relative errors per kind, router and greedy counts."""
    worst, where = dict.fromkeys(("logits", "intermediate", "router_weights", "embed"), 0.0), {}
    for label, kind, out, ref in comparisons(case_dir):
        err = rel_err(out, ref) if ref.size else 0.0
        if err >= worst[kind]:
            worst[kind], where[kind] = err, label
    golden = load_golden(case_dir)
    routed = [golden[T][k] for T in golden if isinstance(T, int) for k in golden[T] if k.endswith("router_margin")]
    g = golden["greedy"]
    n = greedy_steps_to_compare(g["margins"], TOL["greedy_margin"])
    tokens = k25ref_greedy(k25ref.load_model(os.path.join(case_dir, "checkpoint")), g["prompt"], len(g["tokens"]))
    return {"logits_rel": worst["logits"], "intermediate_rel": worst["intermediate"],
            "worst_intermediate": where["intermediate"],
            "router_weights_rel": worst["router_weights"], "embed_abs": worst["embed"],
            "router_compared": int(sum((m >= TOL["router_tie"]).sum() for m in routed)),
            "router_skipped": int(sum((m < TOL["router_tie"]).sum() for m in routed)),
            "greedy_compared": n, "greedy_equal": int(np.cumprod(tokens[:n] == g["tokens"][:n]).sum())}


# ----------------------------------------------------------------------------
# tests


def test_golden_files_match_manifest():
    """Every golden file is listed with its sha256, and no file is unlisted."""
    listed = MANIFEST["files"]
    present = sorted(os.path.relpath(os.path.join(d, n), GOLDENS)
                     for d, _, names in os.walk(GOLDENS) for n in names if n != "MANIFEST.json")
    assert present == sorted(listed), f"unlisted or missing golden files: {set(present) ^ set(listed)}"
    for path, digest in listed.items():
        with open(os.path.join(GOLDENS, path), "rb") as f:
            assert hashlib.sha256(f.read()).hexdigest() == digest, f"{path}: sha256 differs from MANIFEST.json"


@pytest.mark.parametrize("case", CASES)
def test_case_matches_oracle(case):
    """Logits, intermediates, router choices and weights of every golden input, within the manifest's tolerances."""
    tight = TOL["k25ref_rel"]                       # k25ref is held to its own, tighter bar (see MANIFEST.json)
    kinds = {"logits": (0.0, min(TOL["logits_rel"], tight)),
             "intermediate": (0.0, min(TOL["intermediate_rel"], tight)),
             "router_weights": (0.0, min(TOL["router_weights_rel"], tight)), "embed": (TOL["embed_abs"], 0.0)}
    worst = 0.0
    for label, kind, out, ref in comparisons(os.path.join(GOLDENS, case)):
        atol, rel = kinds[kind]
        scale = float(np.abs(ref).max()) if ref.size else 0.0
        check_close(out, ref, atol=atol + rel * scale, label=f"{case}/{label}")
        if kind == "logits":
            worst = max(worst, rel_err(out, ref))
    print(f"\n{case}: logits max relative error {worst:.2e} (tolerance {TOL['logits_rel']:.0e})")


@pytest.mark.parametrize("case", CASES)
def test_greedy_matches_oracle(case):
    """k25ref's cached greedy decode reproduces transformers' `generate`, up to the first near-tie step."""
    g = load_golden(os.path.join(GOLDENS, case))["greedy"]
    n = greedy_steps_to_compare(g["margins"], TOL["greedy_margin"])
    assert n >= len(g["tokens"]) // 2, f"{case}: only {n} greedy steps are clear of near-ties; regenerate"
    tokens = k25ref_greedy(k25ref.load_model(os.path.join(GOLDENS, case, "checkpoint")), g["prompt"],
                           len(g["tokens"]))
    diff = np.nonzero(tokens[:n] != g["tokens"][:n])[0]
    assert not diff.size, (f"{case}: greedy token {diff[0]} is {tokens[diff[0]]}, oracle {g['tokens'][diff[0]]} "
                           f"(oracle margin there {g['margins'][diff[0]]:.2e})")


SENSITIVITY = {  # case -> (text_config change the goldens must notice, what it breaks)
    "yarn-groups": ({"rope_scaling": None}, "yarn frequencies and softmax scale"),
    "plain-bias": ({"norm_topk_prob": True}, "unnormalised routing weights"),
    "many-groups": ({"topk_group": 8}, "group-limited routing"),
    "dense-stack": ({"rope_scaling": {"type": "yarn", "factor": 16.0, "original_max_position_embeddings": 16,
                                      "beta_fast": 32.0, "beta_slow": 1.0, "mscale": 1.2, "mscale_all_dim": 1.2}},
                    "the yarn cos/sin attention factor"),
    "k25-shape": ({"routed_scaling_factor": 2.5}, "routed_scaling_factor"),
}


@pytest.mark.parametrize("case", sorted(SENSITIVITY))
def test_goldens_notice_a_wrong_config(case, tmp_path):
    """Negative control: a checkpoint whose config is wrong in one feature fails the logits tolerance."""
    change, feature = SENSITIVITY[case]
    ckpt = shutil.copytree(os.path.join(GOLDENS, case, "checkpoint"), tmp_path / "ckpt")
    hub = json.loads((ckpt / "config.json").read_text())
    hub["text_config"].update(change)
    (ckpt / "config.json").write_text(json.dumps(hub))
    ref = load_golden(os.path.join(GOLDENS, case))[64]
    err = rel_err(k25ref.load_model(str(ckpt)).logits(ref["input_ids"]), ref["logits"])
    assert err > 10 * TOL["logits_rel"], f"{case}: changing {feature} moved the logits by only {err:.1e}"
