"""`k25ref conform`: a runtime against k25ref. The npz adapter must pass k25ref's own dump, and must fail a
dump with an injected error, naming the layer and block where it was injected. The transformers adapter
(marker `oracle`) and the llama.cpp adapter (marker `peer`) run live when their packages are installed."""
import json
import os

import numpy as np
import pytest
from click.testing import CliRunner

from k25ref import conform as cf
from k25ref.cli import main
from k25ref.model import load_model
from k25ref.weights import layer_prefix

GOLDENS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "goldens")
CASE = os.path.join(GOLDENS, "yarn-groups")


def cli(*args):
    return CliRunner().invoke(main, ["conform", *map(str, args)])


@pytest.fixture(scope="module")
def model():
    return load_model(os.path.join(CASE, "checkpoint"))


@pytest.fixture(scope="module")
def reference_dump(tmp_path_factory):
    """k25ref's own dump of the case's committed inputs, written through the command line."""
    path = tmp_path_factory.mktemp("dump") / "k25ref.npz"
    r = cli(CASE, "-r", "k25ref", "--save-dump", path)
    assert r.exit_code == 0, r.output
    return path


def perturbed(dump, tmp_path, key, fn):
    arrays = dict(np.load(dump))
    arrays[key] = fn(arrays[key])
    out = tmp_path / "bad.npz"
    np.savez(out, **arrays)
    return out


def test_bars_are_the_goldens_bars():
    with open(os.path.join(GOLDENS, "MANIFEST.json")) as f:
        tol = json.load(f)["tolerances"]
    assert cf.BARS == {k: tol[k] for k in ("logits_rel", "intermediate_rel", "router_weights_rel", "embed_abs",
                                           "greedy_margin")} | {"router_tie": tol["router_tie"]}


def test_router_margins_match_the_oracle(model):
    """k25ref's margins (NumPy, from the captured router input) agree with those the oracle stored."""
    with np.load(os.path.join(CASE, "golden.npz")) as z:
        for T in (7, 64):
            ref = cf.reference(model, z[f"seq{T}.input_ids"])
            for i in (1, 2):
                np.testing.assert_allclose(ref[f"layers.{i}.router_margin"], z[f"seq{T}.layers.{i}.router_margin"],
                                           atol=2e-6)


def test_k25ref_dump_passes(reference_dump):
    r = cli(CASE, "-r", "npz", "--dump", reference_dump)
    assert r.exit_code == 0, r.output
    assert "PASS" in r.output and "32/32 tokens equal" in r.output
    with np.load(reference_dump) as z:                                 # the documented format, all of it
        assert {"seq7.input_ids", "seq7.logits", "seq7.embed", "seq7.layers.1.router_indices",
                "seq7.layers.1.router_weights", "seq7.layers.2.hidden", "seq7.final_norm", "greedy.prompt",
                "greedy.tokens"} <= set(z.files)


@pytest.mark.parametrize("key", ["seq33.layers.0.attn_out", "seq33.layers.2.mlp_out", "seq7.layers.1.hidden",
                                 "seq2.final_norm", "seq64.embed"])
def test_perturbed_dump_fails_at_the_perturbed_block(reference_dump, tmp_path, key):
    """An error of 1e-3 (relative) injected into one dumped tensor is found there, and first."""
    bad = perturbed(reference_dump, tmp_path, key, lambda x: x + 1e-3 * np.abs(x).max() * np.sign(x))
    r = cli(CASE, "-r", "npz", "--dump", bad, "--json")
    assert r.exit_code == 8, r.output
    report = json.loads(r.stdout)
    T, name = int(key.split(".")[0][3:]), key.split(".", 1)[1]
    rows = {row["length"]: row for row in report["lengths"]}
    assert rows[T]["first_departure"]["name"] == name
    assert all(row["first_departure"] is None for L, row in rows.items() if L != T)
    assert report["passed"] is False


def test_injected_weight_error_is_localised_to_its_layer(model, tmp_path):
    """A runtime with one wrong weight (layer 2's o_proj off by 0.1%) departs at layers.2.attn_out: the dump
    is made by k25ref with that weight replaced, so everything before it still agrees. Both on the reference,
    which caches the matrix as float32 (the kernels keep it as stored): the one weight replaced there is used."""
    right, wrong = (load_model(model.path, backend="numpy") for _ in range(2))
    name = f"{layer_prefix(2)}self_attn.o_proj.weight"
    wrong.weights.cache.get(name, lambda: right.weights.f32(name) * np.float32(1.001))
    inputs = cf.random_inputs(model.cfg, (5, 17), seed=3, greedy_new=0)
    dump = tmp_path / "wrong.npz"
    outputs = {}
    cf.run(cf.K25ref(wrong), right, inputs, outputs=outputs)
    cf.save_dump(dump, outputs, inputs)
    npz = cf.Npz(str(dump))
    report = cf.run(npz, right, npz.inputs())
    assert [row["first_departure"]["name"] for row in report["lengths"]] == ["layers.2.attn_out"] * 2
    assert all(row["intermediates"]["layers.1.hidden"] == 0.0 for row in report["lengths"])


def test_other_experts_are_a_departure(reference_dump, tmp_path):
    """One token routed to another expert in layer 1 is named as the router choice of layer 1."""
    with np.load(reference_dump) as z:
        idx = z["seq33.layers.1.router_indices"].copy()
    unused = next(e for e in range(16) if e not in idx[4])
    idx[4, -1] = unused
    bad = perturbed(reference_dump, tmp_path, "seq33.layers.1.router_indices", lambda x: idx)
    report = json.loads(cli(CASE, "-r", "npz", "--dump", bad, "--json").stdout)
    row = next(r for r in report["lengths"] if r["length"] == 33)
    assert row["first_departure"]["name"] == "layers.1.router_indices"
    assert row["router_sets_differ"]["layers.1.router_indices"] == 1


def test_logits_only_dump_and_greedy_difference(reference_dump, tmp_path):
    """A runtime that exposes nothing but logits is judged on them; a wrong greedy token is reported."""
    with np.load(reference_dump) as z:
        arrays = {k: z[k] for k in z.files if k.endswith((".input_ids", ".logits")) or k.startswith("greedy.")}
    arrays["greedy.tokens"][3] = (arrays["greedy.tokens"][3] + 1) % 1000
    np.savez(tmp_path / "lean.npz", **arrays)
    r = cli(CASE, "-r", "npz", "--dump", tmp_path / "lean.npz")
    assert r.exit_code == 8 and "3/32 tokens equal" in r.output and "no intermediates exposed" in r.output


def test_table_json_and_plot(reference_dump, tmp_path):
    png = tmp_path / "layers.png"
    r = cli(CASE, "-r", "npz", "--dump", reference_dump, "--json", "--plot", png)
    assert r.exit_code == 0
    report = json.loads(r.stdout)
    assert [row["length"] for row in report["lengths"]] == [1, 2, 7, 33, 64]
    assert report["lengths"][0]["logits_rel"] == 0.0 and report["greedy"]["equal_prefix"] == 32
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    r = cli(CASE, "-r", "npz", "--dump", reference_dump, "--plot", png)        # never overwritten unasked
    assert r.exit_code == 2 and "exists" in r.output


def test_random_inputs_on_a_checkpoint_folder(tmp_path):
    """A plain checkpoint folder gets random inputs of the lengths asked for."""
    r = cli(os.path.join(CASE, "checkpoint"), "-r", "k25ref", "--lengths", "3,9", "--greedy", "4", "--json")
    assert r.exit_code == 0, r.output
    report = json.loads(r.stdout)
    assert [row["length"] for row in report["lengths"]] == [3, 9] and report["greedy"]["steps"] == 4


@pytest.mark.parametrize("args,message", [
    (["-r", "npz"], "--dump"), (["-r", "k25ref", "--lengths", "0,3"], "lengths"),
    (["-r", "k25ref", "--lengths", "a"], "comma-separated"), (["-r", "k25ref", "--gguf", __file__], "--gguf")])
def test_bad_options_exit_2(args, message):
    r = cli(CASE, *args)
    assert r.exit_code == 2 and message in r.output and "Traceback" not in r.output


def test_unusable_dump_is_one_line(tmp_path):
    np.savez(tmp_path / "d.npz", **{"seq4.input_ids": np.arange(4)})
    r = cli(CASE, "-r", "npz", "--dump", tmp_path / "d.npz")
    assert r.exit_code == 2 and "seq4.logits is missing" in r.output
    (tmp_path / "e.npz").write_bytes(b"not a zip")
    r = cli(CASE, "-r", "npz", "--dump", tmp_path / "e.npz")
    assert r.exit_code == 2 and "not a readable .npz" in r.output


# ----------------------------------------------------------------------------
# live runtimes


@pytest.mark.oracle
def test_transformers_passes():
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    r = cli(CASE, "-r", "transformers", "--json")
    assert r.exit_code == 0, r.output
    report = json.loads(r.stdout)
    assert max(row["logits_rel"] for row in report["lengths"]) < 1e-5


@pytest.mark.peer
@pytest.mark.parametrize("experts,kv_cache,departs_at", [("f32", "f32", None), ("f32", "f16", "layers.0.attn_out"),
                                                         ("q4_0", "f32", "layers.1.mlp_out")])
def test_llama_cpp(experts, kv_cache, departs_at):
    """llama.cpp on an exported GGUF: with f32 experts and an f32 cache it is within every bar; its f16 KV cache
    departs in the first attention block; Q4_0 experts (activations rounded to 8 bits for its integer dot
    products) depart in the first MoE block. All three are named by the tool."""
    pytest.importorskip("llama_cpp")
    r = cli(CASE, "-r", "llama.cpp", "--experts", experts, "--kv-cache", kv_cache, "--json", "--threads", "1")
    report = json.loads(r.stdout)
    assert r.exit_code == (0 if departs_at is None else 8), r.output
    assert {row["first_departure"] and row["first_departure"]["name"] for row in report["lengths"]} == {departs_at}
    assert all(row["cosine_min"] > 0.99 for row in report["lengths"])


@pytest.mark.peer
def test_llama_cpp_tokenizes_like_k25ref(tmp_path):
    """The exported vocabulary, merges and `kimi-k2` pre-tokenizer give llama.cpp k25ref's ids."""
    llama_cpp = pytest.importorskip("llama_cpp")
    from k25ref.gguf_export import export_gguf
    from k25ref.model import default_model_path
    from k25ref.tokenizer import Tokenizer
    export_gguf(default_model_path(), str(tmp_path / "nano.gguf"))
    llm = llama_cpp.Llama(str(tmp_path / "nano.gguf"), n_ctx=64, verbose=False)
    tok = Tokenizer.from_pretrained(default_model_path())
    for text in ["ROMEO: But soft, what light through yonder window breaks?", "Hello  world\n\n  it's 12345 <|im_end|>",
                 "naïve café 東京 ünïcode\t\r\n", "[BOS]<think>x</think>"]:
        assert llm.tokenize(text.encode(), add_bos=False, special=True) == tok.encode(text), text
