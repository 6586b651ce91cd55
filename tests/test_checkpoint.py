"""The loader on good and damaged released-layout checkpoints (the full malformed-file catalogue lives in
test_catalogue.py); here: the cases every user meets, through load_model."""
import json
import os
import shutil
import struct

import numpy as np
import pytest

import k25ref
from k25ref.checkpoint import Checkpoint, SafetensorsFile, bf16_to_f32, read_header
from k25ref.errors import CheckpointError
from k25ref.make_tiny import write_safetensors


def _copy(src, tmp_path):
    dst = tmp_path / "ck"
    shutil.copytree(src, dst)
    return dst


def _first_shard(d):
    return sorted(p for p in os.listdir(d) if p.endswith(".safetensors"))[0]


def _rewrite_header(path, edit):
    """Apply edit(header dict) and rewrite the file with the same byte buffer."""
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(n))
        data = f.read()
    edit(header)
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(raw)) + raw + data)


def test_reader_matches_safetensors_package(tiny_dir):
    safe_open = pytest.importorskip("safetensors").safe_open
    shard = os.path.join(tiny_dir, _first_shard(tiny_dir))
    ours = SafetensorsFile(shard)
    with safe_open(shard, "np") as f:
        for name in f.keys():
            info = ours.infos[name]
            if info.dtype == "BF16":
                continue                                     # safetensors' numpy API has no bf16
            assert np.array_equal(ours.tensor(name), f.get_tensor(name)), name


def test_bf16_widening_is_exact():
    raw = np.array([0x3F80, 0xC000, 0x0001, 0x7F7F], np.uint16)   # 1, -2, smallest subnormal, largest finite
    out = bf16_to_f32(raw)
    assert out[0] == 1.0 and out[1] == -2.0 and out[2] == np.float32(2.0 ** -133)
    assert out[3] == np.float32(3.3895313892515355e38)


def test_loading_reads_no_tensor_data(tiny_dir):
    model = k25ref.load_model(tiny_dir)
    assert all(f._buf is None for f in model.ckpt.files.values())


@pytest.mark.parametrize("damage, code", [
    (lambda p: open(p, "r+b").truncate(os.path.getsize(p) - 10), "truncated"),
    (lambda p: open(p, "r+b").write(struct.pack("<Q", 10 ** 7)), "header_length"),
    (lambda p: _rewrite_header(p, _overlap), "offset_overlap"),
    (lambda p: _rewrite_header(p, _out_of_bounds), "truncated"),
    (lambda p: _rewrite_header(p, _wrong_dtype), "size_mismatch"),
])
def test_damaged_shard_is_named(tiny_dir, tmp_path, damage, code):
    d = _copy(tiny_dir, tmp_path)
    shard = d / _first_shard(d)
    damage(str(shard))
    with pytest.raises(CheckpointError) as e:
        k25ref.load_model(str(d))
    assert e.value.code == code and str(shard) in str(e.value)


def _overlap(h):
    names = sorted((k for k in h if k != "__metadata__"), key=lambda k: h[k]["data_offsets"][0])
    a, b = h[names[0]], h[names[1]]
    b["data_offsets"] = [a["data_offsets"][0], a["data_offsets"][0] + b["data_offsets"][1] - b["data_offsets"][0]]


def _out_of_bounds(h):
    last = max((k for k in h if k != "__metadata__"), key=lambda k: h[k]["data_offsets"][1])
    begin, end = h[last]["data_offsets"]
    h[last]["shape"] = [end - begin]
    h[last]["dtype"] = "U8"
    h[last]["shape"] = [end - begin + 64]
    h[last]["data_offsets"] = [begin, end + 64]


def _wrong_dtype(h):
    name = next(k for k in h if k.endswith("input_layernorm.weight"))
    h[name]["dtype"] = "F32"


def test_wrong_shape_names_tensor(tiny_dir, tmp_path):
    d = _copy(tiny_dir, tmp_path)
    shard = str(d / _first_shard(d))
    name = next(k for k in read_header(shard)[1] if k.endswith("input_layernorm.weight"))
    def edit(h):
        h[name]["shape"] = [h[name]["shape"][0] // 2, 2]
    _rewrite_header(shard, edit)
    with pytest.raises(CheckpointError) as e:
        k25ref.load_model(str(d))
    assert e.value.code == "wrong_shape" and e.value.tensor == name


def test_missing_tensor_and_bad_index(tiny_dir, tmp_path):
    d = _copy(tiny_dir, tmp_path)
    index = d / "model.safetensors.index.json"
    wm = json.loads(index.read_text())
    name = next(iter(wm["weight_map"]))
    del wm["weight_map"][name]
    index.write_text(json.dumps(wm))
    with pytest.raises(CheckpointError) as e:
        Checkpoint(str(d))
    assert e.value.code == "index_mismatch" and e.value.tensor == name
    wm["weight_map"][name] = "../elsewhere.safetensors"
    index.write_text(json.dumps(wm))
    with pytest.raises(CheckpointError, match="bad_shard_name"):
        Checkpoint(str(d))


def test_tensor_missing_from_checkpoint(tmp_path):
    from k25ref.make_tiny import make_tiny
    d = make_tiny(str(tmp_path / "ck"), "tiny-plain", shards=1)
    shard = os.path.join(d, _first_shard(d))
    f = SafetensorsFile(shard)
    keep = [(n, i.dtype, np.array(f.tensor(n))) for n, i in f.infos.items() if not n.endswith("o_proj.bias")]
    write_safetensors(shard, keep)
    index = os.path.join(d, "model.safetensors.index.json")
    wm = json.load(open(index))
    wm["weight_map"] = {k: v for k, v in wm["weight_map"].items() if not k.endswith("o_proj.bias")}
    json.dump(wm, open(index, "w"))
    with pytest.raises(CheckpointError) as e:
        k25ref.load_model(d)
    assert e.value.code == "missing_tensor" and e.value.tensor.endswith("o_proj.bias")


def test_not_a_folder(tmp_path):
    with pytest.raises(k25ref.K25RefError):
        k25ref.load_model(str(tmp_path / "nope"))
