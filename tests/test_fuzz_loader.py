"""Fuzzing the loader's parsers: safetensors headers, the shard index, config.json.

The claim under test: whatever bytes or JSON arrive, k25ref either accepts them or raises its own error
(CheckpointError for shards and the index, ConfigError for the config) -- never IndexError, KeyError,
TypeError, MemoryError, RecursionError, a hang or a crash. Where the `safetensors` package can judge the
same file, the two must agree: everything k25ref accepts, safetensors accepts with the same names, dtypes
and shapes; what safetensors accepts and k25ref refuses must be one of k25ref's deliberate extra rules.

`pytest -m fuzz` runs these; `K25REF_FUZZ_EXAMPLES=20000 pytest -m fuzz` runs a long fuzz (random, not
replayed); the default (150 examples each, derandomized) keeps the whole file near 10 s.

The last tests feed a directory of random and truncated files to `k25ref inspect`, in every role a file
can play (shard, config.json, index), through click's runner and once through a real process.
"""
import json
import os
import shutil
import struct
import subprocess
import sys

import numpy as np
import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from k25ref.checkpoint import DTYPES, INDEX_FILE, KNOWN_UNSUPPORTED, SafetensorsFile, read_header, read_index
from k25ref.cli import main
from k25ref.config import from_hf, load_config
from k25ref.errors import CheckpointError, ConfigError
from k25ref.make_tiny import make_tiny, preset, write_safetensors

LONG = "K25REF_FUZZ_EXAMPLES" in os.environ
EXAMPLES = int(os.environ.get("K25REF_FUZZ_EXAMPLES", 150))
fuzz = settings(max_examples=EXAMPLES, deadline=None, derandomize=not LONG, database=None, print_blob=True,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                       HealthCheck.filter_too_much])
# rules k25ref adds to the reference implementation's: a file only these refuse is still refused on purpose
STRICTER = {"duplicate_key", "bad_name", "bad_shape", "overflow", "unsupported_dtype"}
safetensors = pytest.importorskip("safetensors")


@pytest.fixture(scope="module")
def scratch(tmp_path_factory):
    return tmp_path_factory.mktemp("fuzz")


def put(folder, name, data):
    path = os.path.join(folder, name)
    with open(path, "wb") as f:
        f.write(data)
    return path


def reference_view(path):
    """What the safetensors package makes of a file: {name: (dtype, shape)}, or None if it refuses it."""
    try:
        with safetensors.safe_open(path, framework="np") as f:
            return {k: (f.get_slice(k).get_dtype(), tuple(f.get_slice(k).get_shape())) for k in f.keys()}
    except Exception:                                   # the reference's own error types vary by version
        return None


def ours(path):
    """-> ({name: (dtype, shape)}, None) or (None, CheckpointError). Any other exception fails the test."""
    try:
        _, infos, _ = read_header(path)
    except CheckpointError as e:
        assert e.code and e.path == path and "\n" not in str(e)
        return None, e
    return {n: (t.dtype, t.shape) for n, t in infos.items()}, None


def check_against_reference(path):
    view, err = ours(path)
    ref = reference_view(path)
    if view is not None:
        assert ref == view, "k25ref accepted what safetensors reads differently (or refuses)"
        buffer = os.path.getsize(path) - 8 - struct.unpack("<Q", open(path, "rb").read(8))[0]
        _, infos, _ = read_header(path)
        assert sum(t.nbytes for t in infos.values()) == buffer      # the tensors tile the buffer exactly
    elif ref is not None:
        assert err.code in STRICTER, f"safetensors accepts what k25ref refuses as {err.code}"
    return view


# ----------------------------------------------------------------------------
# safetensors headers

DTYPE_NAMES = sorted(DTYPES) + sorted(KNOWN_UNSUPPORTED) + ["F128", "bf16", "", "I4"]
small_arrays = st.lists(st.tuples(st.sampled_from(["F32", "BF16", "I32", "U8", "F16", "I64", "BOOL"]),
                                  st.lists(st.integers(0, 4), max_size=3)), max_size=5)
NUMPY = {"F32": "<f4", "BF16": "<u2", "I32": "<i4", "U8": "u1", "F16": "<f2", "I64": "<i8", "BOOL": "?"}


def valid_file(arrays, rng_seed=0):
    """A valid safetensors byte string for [(dtype, shape)] with deterministic contents."""
    rng = np.random.default_rng(rng_seed)
    tensors = [(f"t{i}.weight", dt, rng.integers(0, 2, size=shape).astype(NUMPY[dt]))
               for i, (dt, shape) in enumerate(arrays)]
    header, offset = {}, 0
    for name, dt, arr in tensors:
        header[name] = {"dtype": dt, "shape": list(arr.shape), "data_offsets": [offset, offset + arr.nbytes]}
        offset += arr.nbytes
    raw = json.dumps(header).encode()
    return struct.pack("<Q", len(raw)) + raw + b"".join(a.tobytes() for _, _, a in tensors), tensors


@pytest.mark.fuzz
@fuzz
@given(data=st.binary(max_size=512))
def test_random_bytes(scratch, data):
    check_against_reference(put(scratch, "random.safetensors", data))


@pytest.mark.fuzz
@fuzz
@given(length=st.integers(0, 2**64 - 1), rest=st.binary(max_size=256))
def test_any_length_field(scratch, length, rest):
    """Any claimed header length, true or absurd: refused before anything of that size is read."""
    check_against_reference(put(scratch, "length.safetensors", struct.pack("<Q", length) + rest))


@pytest.mark.fuzz
@fuzz
@given(arrays=small_arrays, edits=st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 255)), max_size=4),
       cut=st.none() | st.integers(0, 10**6), grow=st.binary(max_size=8))
def test_mutated_valid_file(scratch, arrays, edits, cut, grow):
    """Byte flips, truncation and appended bytes on a valid file."""
    data, _ = valid_file(arrays)
    data = bytearray(data)
    for pos, value in edits:
        data[pos % len(data)] = value
    if cut is not None:
        data = data[:cut % (len(data) + 1)]
    check_against_reference(put(scratch, "mutated.safetensors", bytes(data) + grow))


json_scalars = st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats(allow_nan=False) | st.text(max_size=8)
json_values = st.recursive(json_scalars, lambda inner: st.lists(inner, max_size=4) |
                           st.dictionaries(st.text(max_size=6), inner, max_size=4), max_leaves=12)
entries = st.fixed_dictionaries(
    {"dtype": st.sampled_from(DTYPE_NAMES) | json_scalars,
     "shape": st.lists(st.integers(-2, 2**49) | st.sampled_from([0, 1, 2, 3, 4]), max_size=4) | json_values,
     "data_offsets": st.lists(st.integers(-4, 2**64), min_size=0, max_size=3) | json_values},
    optional={"extra": json_values})
names = st.text(min_size=0, max_size=8) | st.sampled_from(["a", "b", "c", "__metadata__"])


@pytest.mark.fuzz
@fuzz
@given(header=st.dictionaries(names, entries | json_values, max_size=5), buffer=st.integers(0, 64),
       pad=st.sampled_from([b"", b" " * 3, b"\n\t\r ", b"\0"]))
def test_structured_headers(scratch, header, buffer, pad):
    """Well-formed JSON with every field fuzzed: dtypes, shapes, offsets, names, metadata, padding."""
    raw = json.dumps(header).encode() + pad
    check_against_reference(put(scratch, "structured.safetensors", struct.pack("<Q", len(raw)) + raw + b"\0" * buffer))


@pytest.mark.fuzz
@fuzz
@given(arrays=small_arrays, seed=st.integers(0, 2**32 - 1))
def test_valid_files_round_trip(scratch, arrays, seed):
    """What make_tiny's writer produces is read back bit for bit, and safetensors agrees on every tensor."""
    _, tensors = valid_file(arrays, seed)
    path = os.path.join(scratch, "valid.safetensors")
    write_safetensors(path, tensors)
    assert check_against_reference(path) == {n: (dt, a.shape) for n, dt, a in tensors}
    f = SafetensorsFile(path)
    for name, dt, arr in tensors:
        assert np.array_equal(f.tensor(name), arr) and f.tensor(name).dtype == arr.dtype
    if all(dt != "BF16" for _, dt, _ in tensors):
        from safetensors.numpy import load_file
        ref = load_file(path)
        assert all(np.array_equal(ref[n], a) for n, _, a in tensors)


# ----------------------------------------------------------------------------
# the shard index

index_docs = st.fixed_dictionaries({}, optional={
    "metadata": json_values,
    "weight_map": st.dictionaries(st.text(max_size=8), st.sampled_from(["a.safetensors", "..", "/x", "a/b", "",
                                                                        ".", "b\\c", "x\0y"]) | json_values,
                                  max_size=4) | json_values})


def check_index(folder):
    try:
        wm = read_index(folder)
    except CheckpointError as e:
        assert e.code and INDEX_FILE in str(e) and "\n" not in str(e)
        return
    assert wm and all(isinstance(k, str) and isinstance(v, str) for k, v in wm.items())
    assert all(v not in (".", "..") and "/" not in v and "\\" not in v and "\0" not in v and v for v in wm.values())


@pytest.mark.fuzz
@fuzz
@given(doc=index_docs | json_values)
def test_index_json(scratch, doc):
    put(scratch, INDEX_FILE, json.dumps(doc).encode())
    check_index(str(scratch))


@pytest.mark.fuzz
@fuzz
@given(data=st.binary(max_size=256))
def test_index_bytes(scratch, data):
    put(scratch, INDEX_FILE, data)
    check_index(str(scratch))


# ----------------------------------------------------------------------------
# config.json

PRESET = preset("tiny")


def paths(d, prefix=()):
    """Every key path of a nested config dict."""
    for k, v in d.items():
        yield prefix + (k,)
        if isinstance(v, dict):
            yield from paths(v, prefix + (k,))


PATHS = sorted(paths(PRESET))


def edited(edits):
    """A copy of the preset with each (key path, value) set where the path still leads to an object."""
    d = json.loads(json.dumps(PRESET))
    for path, value in edits:
        node = d
        for k in path[:-1]:
            node = node.get(k) if isinstance(node, dict) else None
        if isinstance(node, dict):
            node[path[-1]] = value
    return d


@pytest.mark.fuzz
@fuzz
@given(edits=st.lists(st.tuples(st.sampled_from(PATHS), json_values | st.integers(-3, 300)), min_size=1,
                      max_size=3))
def test_config_fields(edits):
    """A real config with fields replaced by any JSON value: a config or a ConfigError naming the field."""
    d = edited(edits)
    try:
        from_hf(d)
    except ConfigError as e:
        assert str(e) and "\n" not in str(e)


# numbers where arithmetic breaks: huge integers (float() overflows), the float edges, values near 1 and 0
numbers = (st.integers() | st.integers(-2**70, 2**70) | st.sampled_from([10**400, -10**400, 2**31, 2**31 - 1])
           | st.floats() | st.sampled_from([0, -1, 1, 0.0, -0.0, 1e-300, 1e300, 1.0000001, 3.4e38, 5e-324]))


@pytest.mark.fuzz
@fuzz
@given(edits=st.lists(st.tuples(st.sampled_from(PATHS), numbers | json_values), min_size=1, max_size=3))
def test_config_derived_quantities(edits):
    """Any numbers in any fields: a ConfigError, or a config whose every derived quantity -- RoPE frequencies
    and angles, YaRN's cos/sin scale, the softmax scale -- is a finite positive float32. Never
    ZeroDivisionError, OverflowError or a silent inf."""
    from k25ref import rope
    d = edited(edits)
    try:
        cfg = from_hf(d)
    except ConfigError as e:
        assert str(e) and "\n" not in str(e)
        return
    t = cfg.text
    inv_freq, factor = rope.inv_frequencies(t.rope, t.qk_rope_head_dim)
    angles = np.float32(t.max_position_embeddings - 1) * inv_freq
    scale = np.float32(rope.softmax_scale(t.rope, t.qk_head_dim))
    assert np.isfinite(inv_freq).all() and (inv_freq > 0).all() and np.isfinite(angles).all()
    assert np.isfinite(np.float32(factor)) and factor > 0 and np.isfinite(scale) and scale > 0


@pytest.mark.fuzz
@fuzz
@given(doc=json_values | st.dictionaries(st.sampled_from(["added_tokens_decoder", "bos_token", "eos_token"]),
                                         json_values | st.dictionaries(st.text(max_size=12) | st.sampled_from(
                                             ["4096", "4097", "\u0664\u0660\u0669\u0666", "\u00b2", "9" * 5000]),
                                             json_values | st.fixed_dictionaries({"content": st.text(max_size=6)}),
                                             max_size=3)))
def test_tokenizer_config(scratch, doc):
    """Any tokenizer_config.json beside the bundled ranks: a tokenizer or a ConfigError naming the file."""
    from k25ref.tokenizer import BUNDLED_DIR, Tokenizer
    folder = os.path.join(scratch, "tok")
    os.makedirs(folder, exist_ok=True)
    shutil.copy(os.path.join(BUNDLED_DIR, "tiktoken.model"), folder)
    put(folder, "tokenizer_config.json", json.dumps(doc).encode())
    try:
        Tokenizer.from_pretrained(folder)
    except ConfigError as e:
        assert "tokenizer_config.json" in str(e) and "\n" not in str(e)


@pytest.mark.fuzz
@fuzz
@given(data=st.binary(max_size=256) | json_values.map(lambda v: json.dumps(v).encode()))
def test_config_file(scratch, data):
    put(scratch, "config.json", data)
    try:
        load_config(str(scratch))
    except ConfigError as e:
        assert "config.json" in str(e)


# ----------------------------------------------------------------------------
# `k25ref inspect` on a directory of random and truncated files


@pytest.fixture(scope="module")
def good(tmp_path_factory):
    return make_tiny(str(tmp_path_factory.mktemp("good") / "ck"), "tiny-plain", seed=5, shards=1, tokenizer=False)


@pytest.fixture(scope="module")
def hostile_files(good, tmp_path_factory):
    """Random files and truncations of every file of a valid checkpoint, deterministic."""
    out = tmp_path_factory.mktemp("hostile")
    rng = np.random.default_rng(9)
    files = []
    for size in (0, 1, 7, 8, 9, 64, 4096):
        files.append(put(out, f"random-{size}", rng.integers(0, 256, size, dtype=np.uint8).tobytes()))
    files.append(put(out, "random-length-prefix", struct.pack("<Q", 40) + rng.integers(0, 256, 40, np.uint8).tobytes()))
    for name in sorted(os.listdir(good)):
        whole = open(os.path.join(good, name), "rb").read()
        for cut in sorted({0, 5, 8, 9, len(whole) // 3, len(whole) // 2, len(whole) - 1}):
            files.append(put(out, f"{name}-cut-{cut}", whole[:cut]))
    return files


def run_inspect(folder):
    result = CliRunner().invoke(main, ["inspect", str(folder)])
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    assert "Traceback" not in result.output + result.stderr
    return result


def with_file(good, tmp, role, path):
    """A copy of the valid checkpoint whose `role` file is replaced by `path` ('shard': single-file layout)."""
    d = tmp / "ck"
    if d.exists():
        shutil.rmtree(d)
    shutil.copytree(good, d)
    if role == "shard":
        os.remove(d / INDEX_FILE)
        for f in os.listdir(d):
            if f.endswith(".safetensors"):
                os.remove(d / f)
        shutil.copy(path, d / "model.safetensors")
    else:
        shutil.copy(path, d / role)
    return d


@pytest.mark.parametrize("role, exit_code", [("shard", 4), ("config.json", 3), (INDEX_FILE, 4)])
def test_inspect_never_prints_a_traceback(good, hostile_files, tmp_path, role, exit_code):
    for path in hostile_files:
        result = run_inspect(with_file(good, tmp_path, role, path))
        if result.exit_code == 0:                # a truncation can leave a whole file (cut at the very end)
            assert open(path, "rb").read() == open(os.path.join(good, os.path.basename(path).rsplit("-cut-")[0]),
                                                   "rb").read()
            continue
        assert result.exit_code == exit_code, (path, result.output, result.stderr)
        lines = result.stderr.splitlines()
        assert len(lines) == 1 and lines[0].startswith("k25ref: error: "), (path, result.stderr)


def test_inspect_in_a_real_process(good, hostile_files, tmp_path):
    """The same through a separate interpreter, for a random shard, a truncated shard and a cut config."""
    picks = [("shard", "random-4096", 4), ("shard", next(p for p in map(os.path.basename, hostile_files)
                                                        if p.startswith("model-") and "-cut-9" in p), 4),
             ("config.json", "config.json-cut-9", 3)]
    for i, (role, name, code) in enumerate(picks):
        path = next(p for p in hostile_files if os.path.basename(p) == name)
        (tmp_path / str(i)).mkdir()
        d = with_file(good, tmp_path / str(i), role, path)
        r = subprocess.run([sys.executable, "-c", "from k25ref.cli import main; main()", "inspect", str(d)],
                           capture_output=True, text=True, timeout=60)
        assert r.returncode == code and "Traceback" not in r.stderr, (name, r.stderr)
        assert r.stderr.count("\n") == 1 and r.stderr.startswith("k25ref: error: ")
