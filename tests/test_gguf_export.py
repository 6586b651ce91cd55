"""`k25ref export-gguf`: read the file back with gguf's own reader and hold every tensor and key to the checkpoint.

Expected values come from k25ref's loader (Weights, by concept) and expected names from llama.cpp's deepseek2
tensor names written out here, never from the exporter's own tables. Q4_0 blocks are decoded by gguf's
dequantizer (an implementation independent of the exporter) and must equal the exact product q * scale.
"""
import os
import shutil

import numpy as np
import pytest
from click.testing import CliRunner

gguf = pytest.importorskip("gguf")

from k25ref.checkpoint import Checkpoint, bf16_to_f32, f32_to_bf16  # noqa: E402
from k25ref.cli import main  # noqa: E402
from k25ref.config import load_config  # noqa: E402
from k25ref.errors import ConfigError, K25RefError  # noqa: E402
from k25ref.gguf_export import bytes_to_unicode, export_gguf, q4_0_blocks, q4_0_values  # noqa: E402
from k25ref.int4 import dequantize, pack, unpack  # noqa: E402
from k25ref.model import default_model_path  # noqa: E402
from k25ref.streaming import WeightCache  # noqa: E402
from k25ref.weights import Weights, layer_prefix  # noqa: E402

GOLDENS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "goldens")
EXPORTABLE = ["yarn-groups", "many-groups", "dense-stack", "k25-shape"]   # plain-bias has attention biases
GGML = gguf.GGMLQuantizationType


def golden(case):
    return os.path.join(GOLDENS, case, "checkpoint")


def read(path):
    """GGUF file -> ({key: value}, {tensor name: (type name, numpy shape, float32 values or raw data)})."""
    r = gguf.GGUFReader(path)
    keys = {k: f.contents() for k, f in r.fields.items() if not k.startswith("GGUF.")}
    tensors = {}
    for t in r.tensors:
        data = np.asarray(t.data)
        if t.tensor_type == GGML.BF16:
            values = bf16_to_f32(data.view(np.uint16))
        elif t.tensor_type in (GGML.F32, GGML.F16):
            values = data.astype(np.float32)
        else:
            values = gguf.quants.dequantize(data, t.tensor_type)
        tensors[t.name] = (t.tensor_type.name, values.shape, values)
    return keys, tensors


def expected_names(cfg):
    """llama.cpp's deepseek2 tensor names (src/llama-arch.cpp), spelled out for the config."""
    t = cfg.text
    names = ["token_embd.weight", "output_norm.weight"] + ([] if t.tie_word_embeddings else ["output.weight"])
    for i in range(t.num_hidden_layers):
        b = f"blk.{i}."
        attn = ["attn_norm", "attn_kv_a_mqa", "attn_kv_a_norm", "attn_k_b", "attn_v_b", "attn_output", "ffn_norm"]
        attn += ["attn_q"] if t.q_lora_rank is None else ["attn_q_a", "attn_q_a_norm", "attn_q_b"]
        ffn = (["ffn_gate", "ffn_up", "ffn_down"] if not t.is_moe_layer(i) else
               ["ffn_gate_inp", "ffn_gate_exps", "ffn_up_exps", "ffn_down_exps", "ffn_gate_shexp", "ffn_up_shexp",
                "ffn_down_shexp"])
        names += [f"{b}{n}.weight" for n in attn + ffn]
        names += [f"{b}exp_probs_b.bias"] if t.is_moe_layer(i) else []
    return sorted(names)


def reference_values(W, cfg, experts):
    """GGUF name -> the float32 values it must hold, from k25ref's loader."""
    t, out = cfg.text, {}
    out["token_embd.weight"] = W.f32("language_model.model.embed_tokens.weight")
    out["output_norm.weight"] = W.f32("language_model.model.norm.weight")
    out["output.weight"] = W.f32("language_model.lm_head.weight")
    H, Dn, Dv, C = t.num_attention_heads, t.qk_nope_head_dim, t.v_head_dim, t.kv_lora_rank
    for i in range(t.num_hidden_layers):
        b, a = f"blk.{i}.", W.attention(i)
        p = layer_prefix(i)
        out[b + "attn_norm.weight"] = W.f32(f"{p}input_layernorm.weight")
        out[b + "ffn_norm.weight"] = W.f32(f"{p}post_attention_layernorm.weight")
        for name, value in (("attn_q_a", a.q_a_proj), ("attn_q_a_norm", a.q_a_layernorm), ("attn_q_b", a.q_b_proj),
                            ("attn_q", a.q_proj), ("attn_kv_a_mqa", a.kv_a_proj_with_mqa),
                            ("attn_kv_a_norm", a.kv_a_layernorm), ("attn_output", a.o_proj)):
            if value is not None:
                out[f"{b}{name}.weight"] = value
        kv_b = a.kv_b_proj.reshape(H, Dn + Dv, C)
        out[b + "attn_k_b.weight"] = kv_b[:, :Dn].transpose(0, 2, 1)       # W_UK^T per head (H, C, Dn)
        out[b + "attn_v_b.weight"] = kv_b[:, Dn:]                           # W_UV per head (H, Dv, C)
        if not t.is_moe_layer(i):
            for gg, m in zip(("ffn_gate", "ffn_up", "ffn_down"), W.mlp(f"{p}mlp.")):
                out[f"{b}{gg}.weight"] = m
            continue
        gate, bias = W.router(i)
        out[b + "ffn_gate_inp.weight"], out[b + "exp_probs_b.bias"] = gate, bias
        for gg, m in zip(("ffn_gate_shexp", "ffn_up_shexp", "ffn_down_shexp"), W.mlp(f"{p}mlp.shared_experts.")):
            out[f"{b}{gg}.weight"] = m
        for k, gg in enumerate(("ffn_gate_exps", "ffn_up_exps", "ffn_down_exps")):
            mats = [W.expert(i, e)[k] for e in range(t.n_routed_experts)]
            if cfg.quant is not None:
                exact = lambda w: (unpack(w.packed, w.shape[1]).astype(np.float32)   # noqa: E731
                                   * np.repeat(w.scale, w.group_size, axis=1))
                mats = [exact(w) if experts == "q4_0" else dequantize(w) for w in mats]
            out[f"{b}{gg}.weight"] = np.stack(mats)
    return out


@pytest.mark.parametrize("case,experts,dense", [("yarn-groups", "q4_0", "f32"), ("yarn-groups", "bf16", "bf16"),
                                                ("many-groups", "f32", "f32"), ("dense-stack", "q4_0", "bf16"),
                                                ("k25-shape", "bf16", "f32")])
def test_round_trip_is_bit_exact(case, experts, dense, tmp_path):
    """Names, shapes, types and every value: what gguf reads back is what k25ref computes with."""
    out = str(tmp_path / "m.gguf")
    report = export_gguf(golden(case), out, experts=experts, dense=dense)
    cfg = load_config(golden(case))
    keys, tensors = read(out)
    assert sorted(tensors) == expected_names(cfg)
    W = Weights(Checkpoint(golden(case)), cfg, WeightCache())
    ref = reference_values(W, cfg, experts)
    for name, (kind, shape, values) in tensors.items():
        want = {"q4_0": "Q4_0", "bf16": "BF16", "f32": "F32"}[experts] if "_exps" in name else \
            "F32" if values.ndim == 1 or "ffn_gate_inp" in name else dense.upper()
        assert kind == want, f"{name}: {kind}, expected {want}"
        assert shape == ref[name].shape, f"{name}: shape {shape}, expected {ref[name].shape}"
        assert np.array_equal(values, ref[name]), f"{name}: values differ from the checkpoint's"
    assert report.q4_0_groups_lossy == 0 and not report.lossy_elements


def test_metadata_complete(tmp_path):
    """Every deepseek2 key llama.cpp reads, with the config's value."""
    case = "yarn-groups"
    out = str(tmp_path / "m.gguf")
    export_gguf(golden(case), out)
    t = load_config(golden(case)).text
    keys, _ = read(out)
    a = "deepseek2."
    want = {"general.architecture": "deepseek2", a + "block_count": t.num_hidden_layers,
            a + "context_length": t.max_position_embeddings, a + "embedding_length": t.hidden_size,
            a + "feed_forward_length": t.intermediate_size, a + "attention.head_count": t.num_attention_heads,
            a + "attention.head_count_kv": 1, a + "attention.q_lora_rank": t.q_lora_rank,
            a + "attention.kv_lora_rank": t.kv_lora_rank,
            a + "attention.key_length": t.kv_lora_rank + t.qk_rope_head_dim,
            a + "attention.value_length": t.kv_lora_rank, a + "attention.key_length_mla": t.qk_head_dim,
            a + "attention.value_length_mla": t.v_head_dim, a + "vocab_size": t.vocab_size,
            a + "leading_dense_block_count": t.first_k_dense_replace,
            a + "expert_feed_forward_length": t.moe_intermediate_size, a + "expert_count": t.n_routed_experts,
            a + "expert_used_count": t.num_experts_per_tok, a + "expert_shared_count": t.n_shared_experts,
            a + "expert_group_count": t.n_group, a + "expert_group_used_count": t.topk_group,
            a + "expert_weights_norm": t.norm_topk_prob, a + "expert_gating_func": 2,    # llama.cpp: 2 = sigmoid
            a + "rope.dimension_count": t.qk_rope_head_dim, a + "rope.scaling.type": "yarn",
            a + "rope.scaling.original_context_length": t.rope.original_max_position_embeddings,
            "general.file_type": int(gguf.LlamaFileType.MOSTLY_Q4_0), "tokenizer.ggml.model": "none"}
    floats = {a + "attention.layer_norm_rms_epsilon": t.rms_norm_eps, a + "expert_weights_scale":
              t.routed_scaling_factor, a + "rope.freq_base": t.rope.theta, a + "rope.scaling.factor": t.rope.factor,
              a + "rope.scaling.yarn_beta_fast": t.rope.beta_fast, a + "rope.scaling.yarn_beta_slow": t.rope.beta_slow,
              a + "rope.scaling.yarn_log_multiplier": 0.1 * t.rope.mscale_all_dim}
    for k, v in want.items():
        assert keys.get(k) == v, f"{k}: {keys.get(k)!r}, expected {v!r}"
    for k, v in floats.items():
        assert keys[k] == pytest.approx(v, rel=1e-7), k


def test_group_limit_of_all_groups_is_written_as_none(tmp_path):
    """topk_group == n_group limits nothing; llama.cpp asserts used < count, so it is written as 1 of 1."""
    ckpt = shutil.copytree(golden("yarn-groups"), tmp_path / "ckpt")
    import json
    hub = json.loads((ckpt / "config.json").read_text())
    hub["text_config"]["topk_group"] = hub["text_config"]["n_group"]
    (ckpt / "config.json").write_text(json.dumps(hub))
    keys, _ = read(str(export_gguf(str(ckpt), str(tmp_path / "m.gguf")).path))
    assert (keys["deepseek2.expert_group_count"], keys["deepseek2.expert_group_used_count"]) == (1, 1)


def test_tokenizer_is_exported_with_the_kimi_pre_tokenizer(tmp_path):
    """The nano model's tiktoken.model: every rank's bytes, the special names, merges that rebuild each token."""
    from k25ref.tokenizer import Tokenizer
    out = str(tmp_path / "nano.gguf")
    export_gguf(default_model_path(), out)
    keys, _ = read(out)
    tok = Tokenizer.from_pretrained(default_model_path())
    assert keys["tokenizer.ggml.model"] == "gpt2" and keys["tokenizer.ggml.pre"] == "kimi-k2"
    tokens, types = keys["tokenizer.ggml.tokens"], keys["tokenizer.ggml.token_type"]
    assert len(tokens) == len(types) == load_config(default_model_path()).text.vocab_size
    unspell = {c: b for b, c in bytes_to_unicode().items()}
    for token, rank in tok.ranks.items():
        assert bytes(unspell[c] for c in tokens[rank]) == token and types[rank] == 1
    for name, i in tok.special_tokens.items():
        assert tokens[i] == name and types[i] == 3
    merges = keys["tokenizer.ggml.merges"]
    assert len(merges) > 0.9 * (tok.n_base - 256)
    for m in merges:
        left, right = m.split(" ")
        assert bytes(unspell[c] for c in left + right) in tok.ranks
    assert keys["tokenizer.ggml.bos_token_id"] == tok.bos_id and keys["tokenizer.ggml.eos_token_id"] == tok.eos_id


# ----------------------------------------------------------------------------
# the Q4_0 repack


def test_q4_0_blocks_decode_to_q_times_d(rng):
    """A hand-checked block layout (d, then u[j] | u[j+16] << 4) and gguf's own decoder agree on q * scale."""
    q = rng.integers(-8, 8, (3, 64))
    scale = bf16_to_f32(f32_to_bf16(rng.uniform(0.001, 0.1, (3, 2)).astype(np.float32)))
    blocks, lossy = q4_0_blocks(pack(q), scale, (3, 64), 32)
    exact = q * np.repeat(scale, 32, axis=1)
    assert lossy == 0
    assert blocks.shape == (3, 36) and blocks[0, 2] == (q[0, 0] + 8) | ((q[0, 16] + 8) << 4)
    assert np.array_equal(blocks[0, :2].view(np.float16)[0], np.float16(scale[0, 0]))
    assert np.array_equal(gguf.quants.dequantize(blocks, GGML.Q4_0), exact)
    assert np.array_equal(q4_0_values(blocks, (3, 64)), exact)


def test_q4_0_counts_the_groups_float16_cannot_hold(rng):
    """bf16 scales outside float16 (too small, too large) are counted; the others stay exact."""
    q = rng.integers(-8, 8, (2, 128))
    scale = np.array([[0.015625, 2.0**-26, 3.0, 2.0**17], [1.5, 0.25, 2.0**-13, 1.0 + 2.0**-7]], np.float32)
    blocks, lossy = q4_0_blocks(pack(q), scale, (2, 128), 32)
    assert lossy == 2
    values = gguf.quants.dequantize(blocks, GGML.Q4_0).reshape(2, 4, 32)
    exact = (q * np.repeat(scale, 32, axis=1)).reshape(2, 4, 32)
    fits = np.array([[True, False, True, False], [True, True, True, True]])
    assert np.array_equal(values[fits], exact[fits]) and not np.array_equal(values[~fits], exact[~fits])


def test_q4_0_with_group_64_repeats_the_scale(rng):
    q = rng.integers(-8, 8, (2, 128))
    scale = np.array([[0.5, 0.125], [2.0, 0.0078125]], np.float32)
    blocks, _ = q4_0_blocks(pack(q), scale, (2, 128), 64)
    assert np.array_equal(gguf.quants.dequantize(blocks, GGML.Q4_0), q * np.repeat(scale, 64, axis=1))


def test_f16_dense_values_and_counts(tmp_path):
    """f16 dense: every matrix is the float16 rounding of the checkpoint's values, and the report counts the
    values that rounding changed (bf16 values between 2^-17 and 65504 survive; smaller and larger ones do not)."""
    ckpt = golden("yarn-groups")
    out = str(tmp_path / "m.gguf")
    report = export_gguf(ckpt, out, dense="f16")
    _, tensors = read(out)
    ref = reference_values(Weights(Checkpoint(ckpt), load_config(ckpt), WeightCache()), load_config(ckpt), "q4_0")
    for name, (kind, _, values) in tensors.items():
        if kind == "F16":
            rounded = ref[name].astype(np.float16)
            assert np.array_equal(values, rounded.astype(np.float32)), name
            assert report.lossy_elements.get(name, 0) == int((rounded != ref[name]).sum()), name
    from k25ref.gguf_export import as_type
    x = bf16_to_f32(f32_to_bf16(np.array([1.0, 0.1, 2.0**-17, 2.0**-20 * 1.0078125, 1e5, -3e-9], np.float32)))
    assert as_type(x, "f16")[1] == 3 and as_type(x, "bf16")[1] == 0 and as_type(x, "f32")[1] == 0


# ----------------------------------------------------------------------------
# refusals and the command line


def test_refuses_what_deepseek2_cannot_hold(tmp_path):
    with pytest.raises(ConfigError, match="attention_bias"):
        export_gguf(golden("plain-bias"), str(tmp_path / "a.gguf"))
    with pytest.raises(ConfigError, match="not INT4"):
        export_gguf(golden("k25-shape"), str(tmp_path / "b.gguf"), experts="q4_0")
    assert not os.listdir(tmp_path)


def test_never_overwrites_unasked(tmp_path):
    out = tmp_path / "m.gguf"
    out.write_bytes(b"mine")
    with pytest.raises(K25RefError, match="exists"):
        export_gguf(golden("yarn-groups"), str(out))
    assert out.read_bytes() == b"mine"
    r = CliRunner().invoke(main, ["export-gguf", golden("yarn-groups"), str(out)])
    assert r.exit_code == 2 and "exists" in r.output and out.read_bytes() == b"mine"
    r = CliRunner().invoke(main, ["export-gguf", golden("yarn-groups"), str(out), "--force", "--experts", "f32"])
    assert r.exit_code == 0, r.output
    assert "Q4_0" not in r.output and read(str(out))[1]["blk.1.ffn_up_exps.weight"][0] == "F32"


def test_cli_reports_and_rejects_bad_options(tmp_path):
    r = CliRunner().invoke(main, ["export-gguf", golden("yarn-groups"), str(tmp_path / "m.gguf")])
    assert r.exit_code == 0, r.output
    assert "6144 groups repacked from INT4, 0 lose precision" in r.output and "1e-6" in r.output
    r = CliRunner().invoke(main, ["export-gguf", golden("yarn-groups"), str(tmp_path / "x.gguf"), "--dense", "q8"])
    assert r.exit_code == 2 and not (tmp_path / "x.gguf").exists()
    r = CliRunner().invoke(main, ["export-gguf", golden("plain-bias"), str(tmp_path / "y.gguf")])
    assert r.exit_code == 3 and "attention_bias" in r.output and "Traceback" not in r.output



@pytest.mark.parametrize("name, message", [("m.bin", "must end in .gguf"), ("no-such-folder/m.gguf", "does not exist")])
def test_output_path_is_checked_before_any_work(tmp_path, name, message):
    r = CliRunner().invoke(main, ["export-gguf", golden("yarn-groups"), str(tmp_path / name)])
    assert r.exit_code == 2 and message in r.output and os.listdir(tmp_path) == []


def test_a_symlinked_output_is_replaced_not_written_through(tmp_path):
    target, link = tmp_path / "elsewhere.gguf", tmp_path / "m.gguf"
    target.write_bytes(b"mine")
    link.symlink_to(target)
    r = CliRunner().invoke(main, ["export-gguf", golden("yarn-groups"), str(link), "--force", "--experts", "f32"])
    assert r.exit_code == 0, r.output
    assert target.read_bytes() == b"mine" and not link.is_symlink() and read(str(link))[1]
