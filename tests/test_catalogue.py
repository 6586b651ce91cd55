"""The malformed-checkpoint catalogue: every way a checkpoint folder can be damaged or hostile, each built
here from a valid tiny checkpoint, each refused with k25ref's own error.

One table, `CASES`, covers the safetensors format (lengths, header encoding and JSON, entries, dtypes,
shapes, offsets, names, file kinds), the shard index, the model-level checks against config.json (INT4
triplets included) and config.json itself. For every case three things are asserted:

  * the error: its exact class, its `code` (CheckpointError) and exit code, a one-line message that names
    the file and, where one exists, the tensor (or the config field);
  * no allocation proportional to a claimed size: several cases claim 2^40 bytes or more, and loading
    stays under a few MB (tracemalloc);
  * `k25ref inspect DIR` prints one line (or, for model-level problems, the problem list) and exits with
    the documented code -- never a traceback.

Then: a failed load leaves nothing behind, and a shard truncated after loading becomes a CheckpointError
(never SIGBUS) and the model recovers once the file is whole again.
"""
import gc
import json
import math
import os
import pathlib
import resource
import shutil
import struct
import subprocess
import sys
import textwrap
import tracemalloc
from collections import namedtuple

import numpy as np
import pytest
from click.testing import CliRunner

import k25ref
from k25ref.checkpoint import INDEX_FILE, MAX_HEADER_BYTES, MAX_INDEX_BYTES, Checkpoint, read_header
from k25ref.cli import main
from k25ref.errors import CheckpointError, ConfigError
from k25ref.make_tiny import make_tiny
from k25ref.model import Model

SHARD1, SHARD2 = "model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"
CONFIG = "config.json"
LAYER = "language_model.model.layers."
FIRST = f"{LAYER}0.input_layernorm.weight"           # BF16 (64,), bytes [0, 128) of shard 1
SECOND = f"{LAYER}0.self_attn.q_proj.weight"          # right after FIRST
EXPERT = f"{LAYER}2.mlp.experts.0.gate_proj."         # INT4: packed (32, 8) I32, scale (32, 2) BF16, shape (2,)
PEAK_BYTES = 16 * 2**20                               # loading any case stays under this (claims reach 2^60)


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    """A valid tiny-plain checkpoint (INT4 experts, biases, q_proj), two shards."""
    return make_tiny(str(tmp_path_factory.mktemp("catalogue") / "base"), "tiny-plain", seed=3, shards=2,
                     tokenizer=False)


@pytest.fixture
def damaged(base, tmp_path):
    """A fresh copy of the base checkpoint to damage."""
    d = tmp_path / "ck"
    shutil.copytree(base, d)
    return d


# ----------------------------------------------------------------------------
# building damaged files


def read_shard(path):
    """-> (header dict, byte buffer) of a safetensors file."""
    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    return json.loads(raw[8:8 + n]), raw[8 + n:]


def write_shard(path, header, data):
    """header: a dict (serialised, space-padded to 8 bytes) or raw header bytes written as they are."""
    if isinstance(header, dict):
        header = json.dumps(header).encode()
        header += b" " * (-len(header) % 8)
    path.write_bytes(struct.pack("<Q", len(header)) + header + data)


def header_text(h):
    """The header as JSON text without the closing brace, to splice duplicate keys onto."""
    return json.dumps(h)[:-1]


def edit(fn, shard=SHARD1):
    """A damage that rewrites one shard: fn(header, data) edits in place or returns a (header, data) tuple."""
    def damage(d):
        h, data = read_shard(d / shard)
        out = fn(h, data)
        write_shard(d / shard, *(out if isinstance(out, tuple) else (h, data)))
    return damage


def raw_file(content):
    """A damage that replaces shard 1 with `content` bytes (a callable gets the original bytes)."""
    def damage(d):
        old = (d / SHARD1).read_bytes()
        (d / SHARD1).write_bytes(content(old) if callable(content) else content)
    return damage


def entry(field, value, name=FIRST):
    def fn(h, data):
        h[name][field] = value
    return edit(fn)


def index(fn):
    """A damage that edits the index dict (fn may return raw bytes to write instead)."""
    def damage(d):
        p = d / INDEX_FILE
        wm = json.loads(p.read_text())
        out = fn(wm)
        p.write_bytes(out if isinstance(out, bytes) else json.dumps(wm).encode())
    return damage


def config(fn):
    def damage(d):
        p = d / CONFIG
        c = json.loads(p.read_text())
        out = fn(c)
        p.write_bytes(out if isinstance(out, bytes) else json.dumps(c).encode())
    return damage


def append_tensor(h, data, name, dtype, shape, payload):
    end = len(data)
    h[name] = {"dtype": dtype, "shape": shape, "data_offsets": [end, end + len(payload)]}
    return h, data + payload


def set_bytes(h, data, name, payload):
    begin, end = h[name]["data_offsets"]
    assert len(payload) == end - begin
    return h, data[:begin] + payload + data[end:]


def shift_from(h, data, name, by):
    """Move `name` and every tensor after it `by` bytes later, leaving a gap of zeros."""
    start = h[name]["data_offsets"][0]
    for k, v in h.items():
        if k != "__metadata__" and v["data_offsets"][0] >= start:
            v["data_offsets"] = [o + by for o in v["data_offsets"]]
    return h, data[:start] + b"\0" * by + data[start:]


def alias_many(h, data):
    for i in range(1000):                              # the format's DoS amplifier: one range, many names
        h[f"alias.{i}"] = dict(h[FIRST])


def last_far_past_eof(h, data):
    last = max((k for k in h if k != "__metadata__"), key=lambda k: h[k]["data_offsets"][1])
    begin = h[last]["data_offsets"][0]
    h[last] = {"dtype": "U8", "shape": [2**40, 2**20], "data_offsets": [begin, begin + 2**60]}


def replace_with_fifo(d):
    if not hasattr(os, "mkfifo"):
        pytest.skip("no FIFOs on this platform")
    os.remove(d / SHARD1)
    os.mkfifo(d / SHARD1)


def replace_index_with_fifo(d):
    if not hasattr(os, "mkfifo"):
        pytest.skip("no FIFOs on this platform")
    os.remove(d / INDEX_FILE)
    os.mkfifo(d / INDEX_FILE)


def replace_with_dir(d):
    os.remove(d / SHARD1)
    os.mkdir(d / SHARD1)


def symlink_to_device(d):
    os.remove(d / SHARD1)
    os.symlink("/dev/zero", d / SHARD1)


def sparse_index(d):
    with open(d / INDEX_FILE, "r+b") as f:
        f.truncate(MAX_INDEX_BYTES + 1)                # a hole: no disk used, 100 MB if read


def tensor_in_both_shards(d):
    h1, data1 = read_shard(d / SHARD1)
    begin, end = h1[FIRST]["data_offsets"]
    h2, data2 = read_shard(d / SHARD2)
    write_shard(d / SHARD2, *append_tensor(h2, data2, FIRST, "BF16", h1[FIRST]["shape"], data1[begin:end]))


def extra_tensor(d):
    name = f"{LAYER}0.self_attn.extra.weight"
    edit(lambda h, data: append_tensor(h, data, name, "BF16", [4], b"\0" * 8))(d)
    index(lambda wm: wm["weight_map"].__setitem__(name, SHARD1))(d)


def int4_values(suffix, payload):
    return edit(lambda h, data: set_bytes(h, data, EXPERT + suffix, payload))


def nested(depth):
    return "[" * depth + "]" * depth


def remove_weights(d):
    for name in (INDEX_FILE, SHARD1, SHARD2):
        os.remove(d / name)


def load(d):
    return k25ref.load_model(str(d))


def read_first(d):
    return Checkpoint(str(d)).raw(FIRST)


def load_expert(d):
    return load(d).weights.expert(2, 0)


# ----------------------------------------------------------------------------
# the catalogue: (id, damage, error class, code, file named, tensor or field named, how it is loaded, level)

Case = namedtuple("Case", "id damage error code file name action level")


def case(id, damage, code, file=SHARD1, name=None, error=CheckpointError, action=load, level="header"):
    return Case(id, damage, error, code, file, name, action, level)


def L(x):
    return struct.pack("<Q", x)


CASES = [
    # --- lengths: the first 8 bytes
    case("empty_file", raw_file(b""), "header_too_small"),
    case("shorter_than_length_field", raw_file(b"\x10\x00\x00"), "header_too_small"),
    case("header_length_zero", raw_file(lambda old: L(0) + old[8:]), "header_not_object"),
    case("header_length_over_100MB_cap", raw_file(lambda old: L(MAX_HEADER_BYTES + 1) + old[8:]), "header_too_large"),
    case("header_length_2^64-1", raw_file(lambda old: L(2**64 - 1) + old[8:]), "header_too_large"),
    case("header_length_one_past_eof", raw_file(lambda old: L(len(old) - 7) + old[8:]), "header_length"),
    case("file_cut_inside_header", raw_file(lambda old: old[:8 + struct.unpack("<Q", old[:8])[0] // 2]),
         "header_length"),
    # --- the header's bytes and JSON
    case("header_not_utf8", edit(lambda h, data: (json.dumps(h).encode().replace(b"layers.0.", b"layers.\xff.", 1),
                                                  data)), "header_not_utf8"),
    case("header_truncated_json", edit(lambda h, data: (json.dumps(h).encode()[:100], data)), "header_not_json"),
    case("header_is_json_array", edit(lambda h, data: (b"[]" + b" " * 6, data)), "header_not_object"),
    case("header_nul_padded", edit(lambda h, data: (json.dumps(h).encode() + b"\0" * 8, data)), "header_not_json"),
    case("header_nested_100k_deep", edit(lambda h, data: (f'{{"x": {nested(100_000)}}}'.encode(), data)),
         "header_not_json"),
    case("header_5000_digit_integer", edit(lambda h, data: (json.dumps(h).replace('"shape": [64]', '"shape": [' +
                                                                                "9" * 5000 + "]", 1).encode(), data)),
         "header_not_json"),
    case("duplicate_tensor_key", edit(lambda h, data: ((header_text(h) + f', "{FIRST}": ' + json.dumps(h[FIRST]) + "}")
                                                       .encode(), data)), "duplicate_key", name=FIRST),
    case("duplicate_metadata_key", edit(lambda h, data: ((header_text(h) + ', "__metadata__": {"a": "1"}, '
                                                          '"__metadata__": {"a": "1"}}').encode(), data)),
         "duplicate_key", name="__metadata__"),
    case("metadata_non_string_value", edit(lambda h, data: h.__setitem__("__metadata__", {"format": 1})),
         "bad_metadata"),
    case("metadata_not_an_object", edit(lambda h, data: h.__setitem__("__metadata__", ["pt"])), "bad_metadata"),
    # --- one entry
    case("entry_without_data_offsets", edit(lambda h, data: h[FIRST].pop("data_offsets")), "bad_entry", name=FIRST),
    case("entry_with_extra_field", entry("byteorder", "big"), "bad_entry", name=FIRST),
    case("entry_not_an_object", edit(lambda h, data: h.__setitem__(FIRST, list(h[FIRST].values()))), "bad_entry",
         name=FIRST),
    case("unknown_dtype_F128", entry("dtype", "F128"), "unknown_dtype", name=FIRST),
    case("lowercase_dtype_bf16", entry("dtype", "bf16"), "unknown_dtype", name=FIRST),
    case("dtype_not_a_string", entry("dtype", ["BF16"]), "unknown_dtype", name=FIRST),
    case("negative_dimension", entry("shape", [-64]), "bad_shape", name=FIRST),
    case("float_dimension", entry("shape", [64.0]), "bad_shape", name=FIRST),
    case("bool_dimension", entry("shape", [True]), "bad_shape", name=FIRST),
    case("shape_not_a_list", entry("shape", "64"), "bad_shape", name=FIRST),
    case("dimension_over_2^48", entry("shape", [2**48]), "bad_shape", name=FIRST),
    case("rank_65", entry("shape", [1] * 65), "bad_shape", name=FIRST),
    case("element_count_overflows_64_bits", entry("shape", [2**40, 2**40, 2**40]), "overflow", name=FIRST),
    case("empty_tensor_overflowing_numpy", entry("shape", [0, 2**40, 2**40]), "overflow", name=FIRST),
    case("sub_byte_dtype_partial_byte", edit(lambda h, data: append_tensor(h, data, "f4.odd", "F4", [3], b"\0\0")),
         "misaligned", name="f4.odd"),
    case("byte_size_disagrees_with_shape", entry("shape", [128]), "size_mismatch", name=FIRST),
    case("known_dtype_k25ref_cannot_use", edit(lambda h, data: h[FIRST].update(dtype="F8_E5M2", shape=[128])),
         "unsupported_dtype", name=FIRST, action=read_first),
    # --- offsets: the tensors must tile the buffer
    case("offsets_one_number", entry("data_offsets", [0]), "invalid_offset", name=FIRST),
    case("offsets_negative", entry("data_offsets", [-128, 0]), "invalid_offset", name=FIRST),
    case("offsets_reversed", entry("data_offsets", [128, 0]), "invalid_offset", name=FIRST),
    case("offsets_strings", entry("data_offsets", ["0", "128"]), "invalid_offset", name=FIRST),
    case("hole_before_first_tensor", edit(lambda h, data: shift_from(h, data, FIRST, 8)), "offset_gap", name=FIRST),
    case("gap_between_tensors", edit(lambda h, data: shift_from(h, data, SECOND, 8)), "offset_gap", name=SECOND),
    case("1000_tensors_aliasing_one_range", edit(alias_many), "offset_overlap", name="alias.0"),
    case("trailing_bytes_polyglot", raw_file(lambda old: old + b"<script>" * 2), "trailing_bytes"),
    case("last_tensor_claims_2^60_bytes", edit(last_far_past_eof), "truncated"),
    # --- names and kinds of file
    case("empty_tensor_name", edit(lambda h, data: h.__setitem__("", h.pop(FIRST))), "bad_name", name=""),
    case("nul_in_tensor_name", edit(lambda h, data: h.__setitem__(FIRST + "\0.hidden", h.pop(FIRST))), "bad_name",
         name=FIRST + "\0.hidden"),
    case("newline_in_tensor_name", edit(lambda h, data: h.__setitem__(FIRST + "\n", h.pop(FIRST))), "bad_name",
         name=FIRST + "\n"),
    case("shard_is_a_directory", replace_with_dir, "not_a_file"),
    case("shard_is_a_fifo", replace_with_fifo, "not_a_file"),
    case("shard_symlinked_to_a_device", symlink_to_device, "not_a_file"),
    # --- the shard index
    case("index_not_json", index(lambda wm: b'{"weight_map": {'), "bad_index", file=INDEX_FILE, level="index"),
    case("index_not_utf8", index(lambda wm: b'{"weight_map": {"\xff": 1}}'), "bad_index", file=INDEX_FILE,
         level="index"),
    case("index_nested_100k_deep", index(lambda wm: f'{{"weight_map": {nested(100_000)}}}'.encode()), "bad_index",
         file=INDEX_FILE, level="index"),
    case("index_without_weight_map", index(lambda wm: wm.pop("weight_map")), "bad_index", file=INDEX_FILE,
         level="index"),
    case("index_over_100MB_cap", sparse_index, "bad_index", file=INDEX_FILE, level="index"),
    case("index_is_a_fifo", replace_index_with_fifo, "not_a_file", file=INDEX_FILE, level="index"),
    case("index_duplicate_key", index(lambda wm: (json.dumps(wm)[:-2] + f', "{FIRST}": "{SHARD1}"}}}}').encode()),
         "duplicate_key", file=INDEX_FILE, name=FIRST, level="index"),
    case("shard_name_absolute_path", index(lambda wm: wm["weight_map"].__setitem__(FIRST, "/etc/passwd")),
         "bad_shard_name", file=INDEX_FILE, name="/etc/passwd", level="index"),
    case("shard_name_backslash_escape", index(lambda wm: wm["weight_map"].__setitem__(FIRST, "..\\x.safetensors")),
         "bad_shard_name", file=INDEX_FILE, name="..\\\\x.safetensors", level="index"),
    case("shard_name_not_a_string", index(lambda wm: wm["weight_map"].__setitem__(FIRST, 7)), "bad_shard_name",
         file=INDEX_FILE, level="index"),
    case("index_names_missing_shard", index(lambda wm: wm["weight_map"].__setitem__(FIRST, "model-00003.safetensors")),
         "missing_shard", file="model-00003.safetensors", level="index"),
    case("index_lists_absent_tensor", index(lambda wm: wm["weight_map"].__setitem__(f"{LAYER}0.ghost", SHARD1)),
         "index_mismatch", file=INDEX_FILE, name=f"{LAYER}0.ghost", level="index"),
    case("index_points_at_wrong_shard", index(lambda wm: wm["weight_map"].__setitem__(FIRST, SHARD2)),
         "index_mismatch", file=INDEX_FILE, name=FIRST, level="index"),
    case("tensor_in_two_shards", tensor_in_both_shards, "duplicate_tensor", file=SHARD2, name=FIRST, level="index"),
    case("no_index_and_no_single_file", remove_weights, "no_weights", file=".", level="index"),
    # --- the checkpoint against config.json (headers only), INT4 triplets included
    case("float_weight_stored_as_I16", entry("dtype", "I16"), "wrong_dtype", name=FIRST, level="model"),
    case("tensor_config_does_not_describe", extra_tensor, "unexpected_tensor", name=f"{LAYER}0.self_attn.extra.weight",
         level="model"),
    case("int4_weight_packed_not_I32", entry("dtype", "F32", EXPERT + "weight_packed"), "wrong_dtype",
         name=EXPERT + "weight_packed", level="model"),
    case("int4_weight_packed_too_narrow", entry("shape", [64, 4], EXPERT + "weight_packed"), "wrong_shape",
         name=EXPERT + "weight_packed", level="model"),
    case("int4_scale_groups_do_not_divide", entry("shape", [64, 1], EXPERT + "weight_scale"), "wrong_shape",
         name=EXPERT + "weight_scale", level="model"),
    case("int4_weight_shape_not_integer", entry("dtype", "F32", EXPERT + "weight_shape"), "wrong_dtype",
         name=EXPERT + "weight_shape", level="model"),
    case("int4_weight_shape_disagrees", int4_values("weight_shape", np.array([32, 128], "<i4").tobytes()),
         "int4_shape", name=EXPERT + "weight_shape", action=load_expert, level="int4"),
    case("int4_nan_scale", int4_values("weight_scale", np.full(64, 0x7FC0, "<u2").tobytes()), "int4_scale",
         name=EXPERT + "weight_scale", action=load_expert, level="data"),
    case("int4_inf_scale", int4_values("weight_scale", np.r_[np.full(63, 0x3F80), 0xFF80].astype("<u2").tobytes()),
         "int4_scale", name=EXPERT + "weight_scale", action=load_expert, level="data"),
    # --- config.json
    case("config_dimension_is_a_list", config(lambda c: c["text_config"].__setitem__("num_hidden_layers", [4])),
         None, file=CONFIG, name="num_hidden_layers", error=ConfigError, level="config"),
    case("config_fractional_vocab", config(lambda c: c["text_config"].__setitem__("vocab_size", 512.5)),
         None, file=CONFIG, name="vocab_size", error=ConfigError, level="config"),
    case("config_group_size_does_not_divide",
         config(lambda c: c["text_config"]["quantization_config"]["config_groups"]["group_0"]["weights"]
                .__setitem__("group_size", 24)), None, file=CONFIG, name="group_size", error=ConfigError,
         level="config"),
    case("config_rope_scaling_not_an_object", config(lambda c: c["text_config"].__setitem__("rope_scaling", [4.0])),
         None, file=CONFIG, name="rope_scaling", error=ConfigError, level="config"),
    case("config_eps_is_a_string", config(lambda c: c["text_config"].__setitem__("rms_norm_eps", "1e-5")),
         None, file=CONFIG, name="rms_norm_eps", error=ConfigError, level="config"),
    case("config_5000_digit_integer", config(lambda c: json.dumps(c).replace('"vocab_size": 512', '"vocab_size": ' +
                                                                             "9" * 5000).encode()),
         None, file=CONFIG, name="config", error=ConfigError, level="config-json"),
    case("config_nested_100k_deep", config(lambda c: f'{{"model_type": {nested(100_000)}}}'.encode()),
         None, file=CONFIG, name="config", error=ConfigError, level="config-json"),
]


def params(cases, marks=lambda c: ()):
    return [pytest.param(c, id=c.id, marks=marks(c)) for c in cases]


def test_catalogue_is_large_and_distinct():
    assert len({c.id for c in CASES}) == len(CASES) >= 35
    assert len({c.code for c in CASES if c.code}) >= 30          # distinct failure modes, not one rule repeated


def test_base_layout_is_what_the_cases_assume(base):
    h = read_header(os.path.join(base, SHARD1))[1]
    assert (h[FIRST].begin, h[FIRST].end, h[FIRST].dtype, h[FIRST].shape) == (0, 128, "BF16", (64,))
    assert h[SECOND].begin == 128
    assert h[EXPERT + "weight_packed"].shape == (32, 8) and h[EXPERT + "weight_scale"].shape == (32, 2)
    k25ref.load_model(base).weights.expert(2, 0)                  # and the undamaged checkpoint loads


@pytest.mark.parametrize("c", params(CASES))
def test_malformed_checkpoint_is_refused(c, damaged):
    c.damage(damaged)
    tracemalloc.start()
    try:
        with pytest.raises(k25ref.K25RefError) as info:
            c.action(damaged)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    err, message = info.value, str(info.value)
    assert type(err) is c.error
    assert "\n" not in message
    file = str(damaged) if c.file == "." else str(damaged / c.file)
    assert file in message
    if c.error is CheckpointError:
        assert err.code == c.code and err.path == file and f"[{c.code}]" in message
        assert err.exit_code == 4
        if err.tensor is not None:
            assert err.tensor == c.name
    else:
        assert err.exit_code == 3
    if c.name is not None:
        assert c.name in message or repr(c.name) in message
    assert peak < PEAK_BYTES, f"{c.id}: {peak} bytes allocated"


# ----------------------------------------------------------------------------
# the same catalogue through `k25ref inspect`

SUMMARY_INDEX_XFAIL = ("summary.summarize json-loads the index itself (traceback on bad JSON/UTF-8/weight_map) and "
                       "falls back to index-only mode when any shard is missing; it should call "
                       "checkpoint.read_index and use index-only mode only when no shard is present")
# inspect lists these among the problems against the config, under this code
LISTED = {"known_dtype_k25ref_cannot_use": "wrong_dtype", "int4_weight_shape_disagrees": "int4_shape"}
INSPECT_SKIP = {
    "int4_nan_scale": "scales are tensor data; inspect reads headers only (checked when an expert is first used)",
    "int4_inf_scale": "scales are tensor data; inspect reads headers only (checked when an expert is first used)",
}


def _inspect_marks(c):
    if c.id in INSPECT_SKIP:
        return [pytest.mark.skip(reason=INSPECT_SKIP[c.id])]
    return []


def test_inspect_marks_name_real_cases():
    assert set(INSPECT_SKIP) <= {c.id for c in CASES}


@pytest.mark.parametrize("c", params(CASES, _inspect_marks))
def test_inspect_reports_without_traceback(c, damaged):
    c.damage(damaged)
    result = CliRunner().invoke(main, ["inspect", str(damaged)])
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    assert "Traceback" not in result.output + result.stderr
    assert result.exit_code == c.error.exit_code
    if c.level == "model" or c.id in LISTED:  # problems against the config are listed, all of them
        assert f"[{LISTED.get(c.id, c.code)}]" in result.stdout and c.name in result.stdout
    else:                                     # anything else stops at the first problem: one line
        lines = result.stderr.splitlines()
        assert len(lines) == 1 and lines[0].startswith("k25ref: error: ")
        assert c.code is None or f"[{c.code}]" in lines[0]


def test_inspect_subprocess_one_line(base, tmp_path):
    """The installed entry point, not just click's runner: a damaged shard -> one stderr line, exit 4."""
    d = tmp_path / "ck"
    shutil.copytree(base, d)
    raw_file(lambda old: L(2**64 - 1) + old[8:])(d)
    entry_point = [sys.executable, "-c", "from k25ref.cli import main; main()"]   # what the console script runs
    r = subprocess.run(entry_point + ["inspect", str(d)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 4, r.stderr
    assert r.stderr.count("\n") == 1 and "[header_too_large]" in r.stderr and "Traceback" not in r.stderr


# ----------------------------------------------------------------------------
# no partial state


def _open_fds():
    return len(os.listdir("/proc/self/fd")) if os.path.isdir("/proc/self/fd") else 0


@pytest.mark.parametrize("c", params([c for c in CASES if c.id in (
    "shard_is_a_fifo", "gap_between_tensors", "tensor_in_two_shards", "int4_weight_packed_too_narrow",
    "config_group_size_does_not_divide", "index_lists_absent_tensor")]))
def test_failed_load_leaves_nothing_behind(c, damaged):
    """No Model object survives a failed load, and no file descriptor or map is left open."""
    c.damage(damaged)
    gc.collect()
    models, fds = sum(type(o) is Model for o in gc.get_objects()), _open_fds()
    with pytest.raises(k25ref.K25RefError):
        k25ref.load_model(str(damaged))
    gc.collect()
    assert sum(type(o) is Model for o in gc.get_objects()) == models
    assert _open_fds() == fds


def test_shard_truncated_during_generation_recovers(base, tmp_path):
    """Truncate a shard between two tokens: CheckpointError (not SIGBUS); restore it: same tokens again."""
    d = tmp_path / "ck"
    shutil.copytree(base, d)
    model = k25ref.load_model(str(d), memory_budget=0)           # nothing cached: every step re-reads the maps
    prompt = [1, 2, 3, 4]
    expected = list(model.generate(prompt, 6, stop_ids=()))
    shard = d / SHARD1
    whole = shard.read_bytes()
    steps = model.generate(prompt, 6, stop_ids=())
    got = [next(steps), next(steps)]
    os.truncate(shard, 8 + struct.unpack("<Q", whole[:8])[0])     # header only: every data page gone
    with pytest.raises(CheckpointError) as e:
        got.append(next(steps))
    assert e.value.code == "file_changed" and str(shard) in str(e.value)
    assert got == expected[:2]
    with pytest.raises(CheckpointError):
        model.logits(prompt)                                      # still refused while the file is short
    with open(shard, "r+b") as f:                                 # restored in place
        f.write(whole)
    assert list(model.generate(prompt, 6, stop_ids=())) == expected


def test_shard_replaced_with_other_content_is_refused(base, tmp_path):
    """A shard rewritten with another header (same name) before its first use is not read as the old one."""
    d = tmp_path / "ck"
    shutil.copytree(base, d)
    model = k25ref.load_model(str(d))
    edit(lambda h, data: h.__setitem__("__metadata__", {"format": "pt"}))(d)
    with pytest.raises(CheckpointError) as e:
        model.logits([1, 2])
    assert e.value.code == "file_changed"


def test_cached_weights_never_touch_a_truncated_map(base, tmp_path):
    """Cached weights are copies, so a shard truncated after a full pass cannot crash the process (SIGBUS
    would kill it: run in a child). The second pass either succeeds from the cache or names the file."""
    d = tmp_path / "ck"
    shutil.copytree(base, d)
    script = textwrap.dedent(f"""
        import os, struct, numpy as np, k25ref
        from k25ref.errors import CheckpointError
        model = k25ref.load_model({str(d)!r})
        ids = np.arange(1, 40)
        first = model.logits(ids)
        shard = {str(d / SHARD1)!r}
        with open(shard, "rb") as f:
            n = struct.unpack("<Q", f.read(8))[0]
        os.truncate(shard, 8 + n)
        try:
            again = model.logits(ids)
            print("same" if np.array_equal(first, again) else "different")
        except CheckpointError as e:
            print("refused", e.code)
    """)
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.split()[0] in ("same", "refused") and "different" not in r.stdout
    if r.stdout.startswith("refused"):
        assert "file_changed" in r.stdout


def test_absurd_config_sizes_fail_fast(base, tmp_path):
    """A config claiming 10^12 experts must be refused, not enumerated (run in a child with a time limit: a
    minute, far above an import on a loaded machine and far below enumerating 10^12 of anything)."""
    d = tmp_path / "ck"
    shutil.copytree(base, d)
    config(lambda c: c["text_config"].__setitem__("n_routed_experts", 10**12))(d)
    script = f"import k25ref\ntry:\n    k25ref.load_model({str(d)!r})\nexcept k25ref.K25RefError as e:\n    print('refused')"
    try:
        r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    except subprocess.TimeoutExpired:
        r = None
    assert r is not None and r.stdout.strip() == "refused"


# ----------------------------------------------------------------------------
# trust, round two: one table per family of docs/trust.md, each case through the real command line
# (a child process under a time and address-space limit: a hang or an unbounded read fails, never stalls)

CHILD_MEMORY = 3 * 2**30                    # address space of a child; /dev/zero read to the end exceeds it
EXAMPLES = pathlib.Path(__file__).parents[1] / "examples"


def run_cli(args, stdin=b"", timeout=90):
    """`k25ref ARGS` in a child with an address-space limit -> CompletedProcess (text)."""
    def limit():
        resource.setrlimit(resource.RLIMIT_AS, (CHILD_MEMORY, CHILD_MEMORY))
    entry_point = [sys.executable, "-c", "from k25ref.cli import main; main()"]   # what the console script runs
    r = subprocess.run(entry_point + list(map(str, args)), input=stdin, capture_output=True,
                       timeout=timeout, preexec_fn=limit, env={**os.environ, "PYTHONWARNINGS": "ignore"})
    return subprocess.CompletedProcess(r.args, r.returncode, r.stdout.decode(errors="replace"),
                                       r.stderr.decode(errors="replace"))


def one_error_line(r, code, *needles):
    """Exit `code`, one `k25ref: error:` line (a cleared progress bar may precede it on that line)."""
    assert r.returncode == code, (r.returncode, r.stderr[-2000:])
    assert "Traceback" not in r.stderr and r.stderr.count("\n") == 1, r.stderr[-2000:]
    last = r.stderr.rstrip("\n").split("\r")[-1]
    assert last.startswith("k25ref: error: "), r.stderr
    for needle in needles:
        assert needle in last, (needle, last)


@pytest.fixture(scope="module")
def with_tokenizer(tmp_path_factory):
    """The tiny preset with the bundled tokenizer (its vocabulary fits)."""
    return make_tiny(str(tmp_path_factory.mktemp("tok") / "ck"), "tiny", seed=4, shards=3)


def copy_of(folder, tmp_path):
    d = tmp_path / "ck"
    shutil.copytree(folder, d)
    return d


def fifo(path):
    if os.path.lexists(path):
        os.remove(path)
    os.mkfifo(path)


def device(path, target="/dev/zero"):
    if os.path.lexists(path):
        os.remove(path)
    os.symlink(target, path)


def sparse(path, size):
    with open(path, "wb") as f:
        f.truncate(size)


# family 1: every file k25ref opens is a regular file under the cap of its role -> (command, file, make, code)
SPECIAL_FILES = [
    ("inspect", "config.json", fifo, 3),
    ("inspect", "config.json", device, 3),
    ("inspect", "config.json", lambda p: sparse(p, 17 * 2**20), 3),
    ("tokenize", "tiktoken.model", fifo, 3),
    ("tokenize", "tiktoken.model", device, 3),
    ("tokenize", "tokenizer_config.json", device, 3),
    ("tokenize", "tokenizer_config.json", lambda p: device(p, "/dev/urandom"), 3),
    ("generate", "tokenizer_config.json", fifo, 3),
    ("inspect-image", "image.png", fifo, 5),
    ("inspect-image", "image.png", device, 5),
    ("generate-video", "video.gif", device, 5),
    ("generate-video", "video.mp4", fifo, 5),
]


@pytest.mark.parametrize("command, name, make, code", SPECIAL_FILES,
                         ids=[f"{c}-{n}-{i}" for i, (c, n, _, _) in enumerate(SPECIAL_FILES)])
def test_special_files_are_refused_before_reading(command, name, make, code, with_tokenizer, tmp_path):
    if not hasattr(os, "mkfifo"):
        pytest.skip("no FIFOs on this platform")
    d = copy_of(with_tokenizer, tmp_path)
    make(d / name)
    args = {"inspect": ["inspect", d], "tokenize": ["tokenize", d, "hello"],
            "generate": ["generate", "-m", d, "-n", "1", "--backend", "numpy"],
            "inspect-image": ["inspect-image", d / name],
            "generate-video": ["generate", "-m", d, "-n", "1", "--video", d / name]}[command]
    one_error_line(run_cli(args), code, str(d / name))


# family 2: config arithmetic -- every derived quantity finite and in range, for any JSON number
def rope(**kw):
    return config(lambda c: c["text_config"]["rope_scaling"].update(kw))


CONFIG_ARITHMETIC = [
    ("rope_theta_one", config(lambda c: c["text_config"].__setitem__("rope_theta", 1.0)), "theta"),
    ("rope_theta_huge_integer", config(lambda c: c["text_config"].__setitem__("rope_theta", 10**400)), "theta"),
    ("rope_theta_over_float32", config(lambda c: c["text_config"].__setitem__("rope_theta", 1e300)), "rope_theta"),
    ("rope_theta_NaN_literal", config(lambda c: json.dumps(c).replace('"rope_theta": 50000.0', '"rope_theta": NaN')
                                      .encode()), "NaN"),
    ("rope_theta_1e400", config(lambda c: json.dumps(c).replace('"rope_theta": 50000.0', '"rope_theta": 1e400')
                                .encode()), "theta"),
    ("beta_slow_zero", rope(beta_slow=0), "beta_slow"),
    ("beta_fast_negative", rope(beta_fast=-32.0), "beta_fast"),
    ("mscale_all_dim_zero_temperature", rope(mscale_all_dim=-10 / math.log(4.0)), "mscale_all_dim"),
    ("mscale_overflows_yarn_scales", rope(mscale_all_dim=1e300), "mscale_all_dim=1.0/1e+300"),
    ("head_dims_huge_softmax_scale", config(lambda c: c["text_config"]["rope_scaling"].update(mscale_all_dim=1e21,
                                                                                          mscale=1e21)), "softmax scale"),
    ("attention_factor_zero", rope(attention_factor=0.0), "attention_factor"),
    ("factor_huge_integer", rope(factor=10**400), "factor"),
    ("factor_absent_positions_huge", config(lambda c: (c["text_config"]["rope_scaling"].pop("factor"),
                                                       c["text_config"].__setitem__("max_position_embeddings",
                                                                                    10**400))),
     "max_position_embeddings"),
    ("layers_beyond_2^31", config(lambda c: c["text_config"].__setitem__("max_position_embeddings", 2**40)),
     "max_position_embeddings"),
    ("eps_huge_integer", config(lambda c: c["text_config"].__setitem__("rms_norm_eps", 10**400)), "rms_norm_eps"),
]


@pytest.mark.parametrize("damage, field", [pytest.param(d, f, id=i) for i, d, f in CONFIG_ARITHMETIC])
def test_config_arithmetic_is_checked(damage, field, tmp_path, with_tokenizer):
    d = copy_of(with_tokenizer, tmp_path)
    damage(d)
    with pytest.raises(ConfigError) as e:
        k25ref.load_config(str(d))
    assert field in str(e.value) and "\n" not in str(e.value)
    r = CliRunner().invoke(main, ["inspect", str(d)])
    assert r.exit_code == 3 and r.stderr.count("\n") == 1 and field in r.stderr, r.output


# family 3: tokenizer files parsed defensively
def tokenizer_config(fn):
    def damage(d):
        p = d / "tokenizer_config.json"
        c = json.loads(p.read_text())
        out = fn(c)
        p.write_bytes(out if isinstance(out, bytes) else json.dumps(c).encode())
    return damage


def first_added(c):
    return next(iter(c["added_tokens_decoder"]))


def rekey(new):
    return tokenizer_config(lambda c: c["added_tokens_decoder"].__setitem__(new, c["added_tokens_decoder"].pop(
        first_added(c))))


def tiktoken_line(fn):
    def damage(d):
        p = d / "tiktoken.model"
        lines = p.read_bytes().splitlines()
        p.write_bytes(b"\n".join(fn(lines)) + b"\n")
    return damage


def smaller_tokenizer(d):
    tiktoken_line(lambda lines: lines[:3000])(d)
    tokenizer_config(lambda c: c.__setitem__("added_tokens_decoder", {
        str(int(k) - 4096 + 3256): v for k, v in c["added_tokens_decoder"].items()}))(d)


TOKENIZER_FILES = [
    ("id_in_arabic_digits", rekey("\u0661\u0666\u0663\u0668\u0664\u0660"), "tokenize", "added_tokens_decoder"),
    ("id_superscript_digit", rekey("\u00b2"), "tokenize", "added_tokens_decoder"),
    ("id_of_5000_digits", rekey("9" * 5000), "tokenize", "added_tokens_decoder"),
    ("id_colliding_with_a_base_rank", rekey("7"), "tokenize", "outside the special ids"),
    ("config_nested_100k_deep", tokenizer_config(lambda c: ('{"a": ' + "[" * 100_000 + "]" * 100_000 + "}")
                                                 .encode()), "tokenize", "malformed JSON"),
    ("rank_of_5000_digits", tiktoken_line(lambda lines: lines[:-1] + [lines[-1].split()[0] + b" " + b"9" * 5000]),
     "tokenize", "expected 'base64-token rank'"),
    ("rank_in_fullwidth_digits", tiktoken_line(lambda lines: lines[:-1] + [lines[-1].split()[0] + b" \xef\xbc\x91"]),
     "tokenize", "ASCII"),
    ("tokenizer_smaller_than_vocabulary", smaller_tokenizer, "generate", "could not be decoded"),
]


@pytest.mark.parametrize("damage, command, needle", [pytest.param(d, c, n, id=i) for i, d, c, n in TOKENIZER_FILES])
def test_tokenizer_files_are_parsed_defensively(damage, command, needle, tmp_path, with_tokenizer):
    d = copy_of(with_tokenizer, tmp_path)
    damage(d)
    args = ["tokenize", str(d), "hello"] if command == "tokenize" else ["generate", "-m", str(d), "-n", "1",
                                                                        "--backend", "numpy"]
    r = CliRunner().invoke(main, args)
    assert r.exit_code == 3 and r.stderr.count("\n") == 1, (r.exit_code, r.output[-2000:])
    assert needle in r.stderr and "Traceback" not in r.output


# family 4: non-finite numbers
def poison(d, name, value=0x7F80):
    """Set every element of BF16 tensor `name` to `value` (+inf by default) in whichever shard holds it."""
    where = json.loads((d / INDEX_FILE).read_text())["weight_map"][name]
    edit(lambda h, data: set_bytes(h, data, name, np.full(np.prod(h[name]["shape"]), value, "<u2").tobytes()),
         shard=where)(d)


@pytest.mark.parametrize("temperature", [0.0, 0.8])
def test_non_finite_logits_name_their_layer(with_tokenizer, tmp_path, temperature):
    d = copy_of(with_tokenizer, tmp_path)
    poison(d, f"{LAYER}1.post_attention_layernorm.weight")
    model = k25ref.load_model(str(d))
    with pytest.raises(k25ref.NumericsError) as e:
        next(model.generate([1, 2, 3], 4, temperature=temperature, seed=0))
    assert "layers.1." in str(e.value) and e.value.exit_code == 7
    with pytest.raises(k25ref.NumericsError):
        model.logits([1, 2, 3])
    r = run_cli(["generate", "-m", d, "-n", "2", "--temp", str(temperature), "--backend", "numpy"])
    one_error_line(r, 7, "layers.1.")


@pytest.mark.parametrize("args", [
    ["--temp", "nan"], ["--temp", "inf"], ["--temp", "-1"], ["--seed", "-1"], ["--seed", str(2**64)],
    ["--max-memory", "inf"], ["--max-memory", "nan"], ["--max-memory", "-1"], ["--max-memory", "1e400GB"],
    ["--top-p", "0"], ["--top-p", "1.5"], ["--top-p", "nan"], ["--top-k", "-3"], ["-n", "-1"]])
def test_numeric_options_are_usage_errors(args):
    r = CliRunner().invoke(main, ["generate", "-n", "1", *args])
    assert r.exit_code == 2 and r.stderr.count("\n") == 1 and args[0] in r.stderr, r.output


def test_numeric_api_arguments_are_prompt_errors(with_tokenizer):
    model = k25ref.load_model(str(with_tokenizer))
    for kw in ({"temperature": math.nan}, {"temperature": math.inf}, {"seed": -1}, {"top_p": math.nan}):
        with pytest.raises(k25ref.PromptError):
            next(model.generate([1, 2], 2, **kw))


@pytest.mark.parametrize("size, expected", [("4G", 4 * 10**9), ("4GB", 4 * 10**9), ("512MiB", 512 * 2**20),
                                            ("1e9", 10**9), ("0", 0), ("1.5 GiB", 3 * 2**29)])
def test_sizes_take_the_usual_suffixes(size, expected):
    from k25ref.options import Size
    assert Size().convert(size, None, None) == expected


# family 5: media budgets
def animated_gif(path, frames=24, size=(40, 30), durations=None):
    from PIL import Image
    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)) for _ in range(frames)]
    images[0].save(path, save_all=True, append_images=images[1:], loop=0,
                   duration=durations or [int(x) for x in rng.integers(20, 200, frames)])
    return path


def counting_gif_loads(monkeypatch):
    from PIL import GifImagePlugin
    calls, original = [], GifImagePlugin.GifImageFile.load
    monkeypatch.setattr(GifImagePlugin.GifImageFile, "load", lambda self: calls.append(1) or original(self))
    return calls


def test_gif_timings_are_read_without_decoding(tmp_path, monkeypatch):
    from k25ref import media
    path = animated_gif(tmp_path / "v.gif")
    calls = counting_gif_loads(monkeypatch)
    media.preprocess_video(str(path))                          # frame rate from the file's timings
    timed = len(calls)
    calls.clear()
    from PIL import Image
    with Image.open(path) as im:                               # the same rate, given: no timings to read
        n, total = im.n_frames, 0
        for k in range(n):
            im.seek(k)
            total += im.info["duration"]
    calls.clear()
    media.preprocess_video(str(path), fps=n * 1000.0 / total)
    assert timed == len(calls), (timed, len(calls))


def test_video_pixel_budget_is_checked_before_decoding(tmp_path, monkeypatch):
    from k25ref import media
    path = animated_gif(tmp_path / "v.gif", frames=30, size=(64, 48))
    calls = counting_gif_loads(monkeypatch)
    with pytest.raises(k25ref.MediaError) as e:
        media.preprocess_video(str(path), max_total_pixels=29 * 64 * 48)
    assert "max_total_pixels" in str(e.value) and "30 frames of 64x48" in str(e.value) and not calls
    with pytest.raises(k25ref.MediaError):
        media.preprocess_video(str(path), max_frames=29)
    assert not calls


def test_long_text_cut_never_splits_a_special_token():
    from k25ref.tokenizer import MAX_RUN_CHARS, Tokenizer
    tok = Tokenizer.bundled()
    for offset in range(1, len("<|im_end|>")):
        text = "a" * (MAX_RUN_CHARS - offset) + "<|im_end|>" + "b" * 7
        assert tok.encode(text).count(tok.im_end_id) == 1, offset
        assert tok.decode(tok.encode(text)) == text


# family 6: never lose a user's file
def test_make_tiny_refuses_a_non_empty_folder(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    r = CliRunner().invoke(main, ["make-tiny", str(out), "--preset", "tiny-plain"])
    assert r.exit_code == 2 and r.stderr.count("\n") == 1 and "--force" in r.stderr
    assert os.listdir(out) == ["notes.txt"]


def test_make_tiny_force_never_writes_through_a_symlink(tmp_path):
    out, target = tmp_path / "out", tmp_path / "precious.json"
    out.mkdir()
    target.write_text("precious")
    os.symlink(target, out / "config.json")
    r = CliRunner().invoke(main, ["make-tiny", str(out), "--preset", "tiny-plain", "--force"])
    assert r.exit_code == 0, r.output
    assert target.read_text() == "precious" and not os.path.islink(out / "config.json")
    k25ref.load_model(str(out))
    assert not [n for n in os.listdir(out) if ".tmp" in n]


def test_interrupted_write_leaves_no_partial_file(tmp_path):
    from k25ref.files import atomic_open
    path = tmp_path / "report.json"
    path.write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_open(path) as f:
            f.write("half")
            raise RuntimeError("disk full")
    assert path.read_text() == "old" and os.listdir(tmp_path) == ["report.json"]


OUTPUTS = [  # (command line with {} for the output path, extension)
    (["inspect-image", str(EXAMPLES / "red_circle.png"), "--plot", "{}"], ".png"),
    (["swarm", "run", "--quick", "--gantt", "{}"], ".png"),
    (["swarm", "run", "--quick", "--trace", "{}"], ".json"),
    (["swarm", "bench", "--quick", "-K", "2", "--plot", "{}"], ".png"),
    (["eval-nano", "--images", "1", "--videos", "0", "--text-tokens", "8", "--json", "{}"], ".json"),
]


@pytest.mark.parametrize("argv, ext", OUTPUTS, ids=[a[a.index("{}") - 1] + "-" + a[0] for a, _ in OUTPUTS])
def test_output_options_write_exactly_there(argv, ext, tmp_path):
    def invoke(path, *extra):
        return CliRunner().invoke(main, [str(path) if a == "{}" else a for a in argv] + list(extra))
    for bad in (tmp_path / "report", tmp_path / f"report{ext}.txt", tmp_path / "none" / f"r{ext}", tmp_path):
        r = invoke(bad)
        assert r.exit_code == 2 and r.stderr.count("\n") == 1 and "Traceback" not in r.output, (bad, r.output)
        assert os.listdir(tmp_path) == [], os.listdir(tmp_path)
    existing = tmp_path / f"mine{ext}"
    existing.write_text("mine")
    r = invoke(existing)
    assert r.exit_code == 2 and "--force" in r.stderr and existing.read_text() == "mine"
    r = invoke(existing, "--force")
    assert r.exit_code == 0 and existing.read_bytes() != b"mine", r.output
    assert sorted(os.listdir(tmp_path)) == [f"mine{ext}"]


# family 7: one exit code per kind of error, one line, in every command
@pytest.mark.parametrize("argv", [["generate", "-m", "{}"], ["chat", "-m", "{}"], ["inspect", "{}"],
                                  ["tokenize", "{}", "hi"], ["eval-nano", "-m", "{}"],
                                  ["generate", "--image", "{}"], ["inspect-image", "{}"]])
def test_a_missing_path_is_the_same_error_everywhere(argv, tmp_path):
    r = CliRunner().invoke(main, [str(tmp_path / "missing") if a == "{}" else a for a in argv])
    assert r.exit_code == 2 and r.stderr.count("\n") == 1 and r.stderr.startswith("k25ref: error: "), r.output


def test_error_after_a_progress_bar_is_one_line(with_tokenizer, tmp_path):
    d = copy_of(with_tokenizer, tmp_path)
    last = sorted(p for p in os.listdir(d) if p.endswith(".safetensors"))[-1]
    raw_file(lambda old: old[:-3])(d) if last == SHARD1 else (d / last).write_bytes((d / last).read_bytes()[:-3])
    one_error_line(run_cli(["generate", "-m", d, "-n", "1"]), 4, "[truncated]")


def test_chat_keeps_the_session_after_a_bad_line():
    stdin = b"\xff\xfe not utf-8\n" + b"x" * 100_001 + b"\nWho art thou?\n/exit\n"
    r = run_cli(["chat", "-n", "3"], stdin=stdin)
    assert r.returncode == 0, r.stderr
    errors = [line for line in r.stderr.splitlines() if line.startswith("k25ref: error: ")]
    assert len(errors) == 2 and "not UTF-8" in errors[0] and "100,000" in errors[1], r.stderr
    assert r.stdout.count(">>> ") == 4 and "Traceback" not in r.stderr


# family 8: inspect tells the whole truth
def test_inspect_index_only_names_absent_shards(base, tmp_path):
    d = copy_of(base, tmp_path)
    for shard in (SHARD1, SHARD2):
        os.remove(d / shard)
    r = CliRunner().invoke(main, ["inspect", str(d)])
    assert r.exit_code == 0 and "problems: none\n" not in r.stdout
    assert "shards absent" in r.stdout and "2 of 2" in r.stdout and SHARD1 in r.stdout
