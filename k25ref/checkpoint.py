"""Released-layout checkpoints: safetensors shards read through read-only memory maps, and the shard index.

A safetensors file is [8-byte little-endian u64 N][N bytes of UTF-8 JSON header][byte buffer]. The header
maps each tensor name to {"dtype", "shape", "data_offsets": [begin, end]} with offsets relative to the
buffer [safetensors README]. We validate the whole header before touching any tensor byte, exactly as
strictly as the reference implementation (and a little more: duplicate keys, odd names), so a hostile or
damaged file becomes one CheckpointError naming file, tensor and problem -- never a crash, never a huge
allocation from a claimed size, never a silent misread. Nothing is read until a tensor is used: `tensor()`
returns a view of the mapped file. docs/trust.md lists every rule and its error code.
"""
import hashlib
import json
import math
import mmap
import os
import re
import struct

import numpy as np

from k25ref.errors import CheckpointError
from k25ref.files import FileProblem, open_regular, read_bytes
from k25ref.progress import bar

MAX_HEADER_BYTES = 100_000_000          # the reference implementation's cap
MAX_INDEX_BYTES = 100_000_000           # the same cap for model.safetensors.index.json (K2.5's is ~10 MB)
MAX_DIM = 2**48 - 1                     # the format's JSON schema bound on a shape entry
MAX_RANK = 64                           # NumPy's limit on dimensions
MAX_ARRAY_BYTES = 2**63 - 1             # NumPy's limit on an array's size, even an empty one's
INDEX_FILE = "model.safetensors.index.json"
SINGLE_FILE = "model.safetensors"

# dtype name -> (numpy storage dtype, bytes per element). BF16 is stored as uint16 and widened by
# `bf16_to_f32`; F8_E4M3 (the "fn" variant) is stored as uint8 and decoded by `f8_e4m3_to_f32`.
DTYPES = {
    "BF16": (np.dtype("<u2"), 2), "F16": (np.dtype("<f2"), 2), "F32": (np.dtype("<f4"), 4),
    "F64": (np.dtype("<f8"), 8), "I8": (np.dtype("i1"), 1), "U8": (np.dtype("u1"), 1),
    "I16": (np.dtype("<i2"), 2), "U16": (np.dtype("<u2"), 2), "I32": (np.dtype("<i4"), 4),
    "U32": (np.dtype("<u4"), 4), "I64": (np.dtype("<i8"), 8), "U64": (np.dtype("<u8"), 8),
    "BOOL": (np.dtype("?"), 1), "F8_E4M3": (np.dtype("u1"), 1),
}
# names the format defines but k25ref cannot compute with: parsed and size-checked, refused on use
KNOWN_UNSUPPORTED = {"F4": 4, "F6_E2M3": 6, "F6_E3M2": 6, "F8_E5M2": 8, "F8_E8M0": 8,
                     "F8_E4M3FNUZ": 8, "F8_E5M2FNUZ": 8, "C64": 64}
_BAD_NAME = re.compile(r"[\x00-\x1f\x7f\ud800-\udfff]")     # control characters, lone surrogates


def fail(path, code, detail, tensor=None):
    """Raise the one checkpoint error: `file: tensor 'x': detail [code]`."""
    where = f"{path}: tensor {tensor!r}: " if tensor is not None else f"{path}: "
    err = CheckpointError(f"{where}{detail} [{code}]")
    err.code, err.path, err.tensor = code, str(path), tensor
    raise err


# ----------------------------------------------------------------------------
# one safetensors file


class TensorInfo:
    """Where one tensor lives: dtype name, shape, byte range inside the file."""
    __slots__ = ("name", "dtype", "shape", "begin", "end")

    def __init__(self, name, dtype, shape, begin, end):
        self.name, self.dtype, self.shape, self.begin, self.end = name, dtype, shape, begin, end

    @property
    def nbytes(self):
        return self.end - self.begin

    @property
    def f32_nbytes(self):
        """Bytes of this tensor once widened to float32."""
        return 4 * self.nbytes // DTYPES[self.dtype][1]


def _no_duplicates(pairs, path):
    seen = {}
    for k, v in pairs:
        if k in seen:
            fail(path, "duplicate_key", f"duplicate key {k!r} in the header")
        seen[k] = v
    return seen


def _parse_entry(path, name, h):
    """Validate one header entry -> TensorInfo (sizes in Python ints: no overflow possible)."""
    if not isinstance(name, str) or not name or _BAD_NAME.search(name):
        fail(path, "bad_name", f"tensor name {name!r} is empty or has control characters or lone surrogates")
    if not isinstance(h, dict) or set(h) != {"dtype", "shape", "data_offsets"}:
        fail(path, "bad_entry", "entry must have exactly dtype, shape, data_offsets", name)
    dtype, shape, offsets = h["dtype"], h["shape"], h["data_offsets"]
    if isinstance(dtype, str) and dtype in DTYPES:
        bits = DTYPES[dtype][1] * 8
    elif isinstance(dtype, str) and dtype in KNOWN_UNSUPPORTED:
        bits = KNOWN_UNSUPPORTED[dtype]
    else:
        fail(path, "unknown_dtype", f"unknown dtype {dtype!r}", name)
    if (not isinstance(shape, list) or len(shape) > MAX_RANK
            or not all(type(d) is int and 0 <= d <= MAX_DIM for d in shape)):
        fail(path, "bad_shape", f"shape {shape!r} must be a list of at most {MAX_RANK} integers in [0, 2^48)", name)
    if math.prod(d for d in shape if d) * bits > 8 * MAX_ARRAY_BYTES:
        fail(path, "overflow", f"shape {shape} of {dtype} exceeds {MAX_ARRAY_BYTES} bytes", name)
    if (not isinstance(offsets, list) or len(offsets) != 2 or not all(type(o) is int and o >= 0 for o in offsets)
            or offsets[1] < offsets[0]):
        fail(path, "invalid_offset", f"data_offsets {offsets!r} must be [begin, end] with 0 <= begin <= end", name)
    nbits = math.prod(shape) * bits
    if nbits % 8:
        fail(path, "misaligned", f"{math.prod(shape)} elements of {dtype} do not fill whole bytes", name)
    if offsets[1] - offsets[0] != nbits // 8:
        fail(path, "size_mismatch", f"byte range {offsets} holds {offsets[1] - offsets[0]} bytes but "
             f"{dtype}{shape} needs {nbits // 8}", name)
    return TensorInfo(name, dtype, tuple(shape), offsets[0], offsets[1])


def _check_metadata(path, meta):
    if not isinstance(meta, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in meta.items()):
        fail(path, "bad_metadata", "__metadata__ must map strings to strings")


def _check_coverage(path, infos, buffer_bytes):
    """Tensors must tile the buffer exactly: start at 0, no gaps, no overlaps, end at end of file."""
    end = 0
    for t in sorted(infos, key=lambda t: (t.begin, t.end)):
        if t.begin != end:
            kind = "overlap" if t.begin < end else "gap"
            fail(path, f"offset_{kind}", f"starts at byte {t.begin} but the previous tensor ends at {end} "
                 f"({kind} in the byte buffer)", t.name)
        end = t.end
    if end != buffer_bytes:
        code = "truncated" if end > buffer_bytes else "trailing_bytes"
        fail(path, code, f"tensors cover {end} bytes but the file's buffer holds {buffer_bytes}")


def _open_regular(path, what):
    """Open a regular file (after following symlinks) for reading -> (file, size). A directory, FIFO or
    device is refused before it is opened, so reading can neither block nor run forever (files.open_regular).
    A shard has no size cap (files.CAPS has no entry for it): its validated header bounds what is read."""
    try:
        return open_regular(path, what)
    except FileProblem as e:
        fail(path, e.code, e.detail)


def _json_object(path, text, code, what):
    """Parse JSON text that must be an object; duplicate keys anywhere are an error, not last-one-wins."""
    try:
        d = json.loads(text, object_pairs_hook=lambda p: _no_duplicates(p, path))
    except (ValueError, RecursionError) as e:   # JSONDecodeError, over-long integers, deep nesting
        fail(path, code, f"{what} is not valid JSON ({e})")
    if not isinstance(d, dict):
        fail(path, code, f"{what} is not a JSON object")
    return d


def _read_raw_header(f, path, size):
    """The 8-byte length and the header bytes, refusing claimed lengths before reading them."""
    head = f.read(8)
    if len(head) < 8:
        fail(path, "header_too_small", f"file has {size} bytes; a safetensors file starts with 8")
    (n,) = struct.unpack("<Q", head)
    if n > MAX_HEADER_BYTES:
        fail(path, "header_too_large", f"header length {n} exceeds the {MAX_HEADER_BYTES}-byte cap")
    if 8 + n > size:
        fail(path, "header_length", f"header length {n} runs past the end of the {size}-byte file")
    raw = f.read(n)
    if len(raw) != n:
        fail(path, "file_changed", "the file shrank while its header was read")
    return n, raw


def _parse_header(path, n, raw, size):
    """Header bytes -> ({name: TensorInfo}, metadata), every rule of the format checked."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        fail(path, "header_not_utf8", f"header is not UTF-8 ({e.reason} at byte {e.start})")
    if not text.strip().startswith("{"):
        fail(path, "header_not_object", "header is not a JSON object")
    header = _json_object(path, text, "header_not_json", "header")
    meta = header.pop("__metadata__", None)
    meta = {} if meta is None else meta               # null means absent, as in the reference implementation
    _check_metadata(path, meta)
    infos = {name: _parse_entry(path, name, h) for name, h in header.items()}
    _check_coverage(path, infos.values(), size - 8 - n)
    return infos, meta


def _read_validated(path):
    """-> (header_len N, infos, metadata, file size, sha256 of the header bytes)."""
    f, size = _open_regular(path, "safetensors file")
    try:
        with f:
            n, raw = _read_raw_header(f, path, size)
    except OSError as e:
        fail(path, "unreadable", f"cannot read ({e.strerror or e})")
    infos, meta = _parse_header(path, n, raw, size)
    return n, infos, meta, size, hashlib.sha256(raw).digest()


def read_header(path):
    """Parse and fully validate a shard's header -> (header_len N, {name: TensorInfo}, metadata)."""
    n, infos, meta, _, _ = _read_validated(path)
    return n, infos, meta


class SafetensorsFile:
    """One validated shard; `tensor(name)` is a zero-copy view of a read-only map (nothing read until touched).

    A mapped file that shrinks would kill the process with SIGBUS on the next read of a lost page. So the
    file is mapped only after its header is read again and found unchanged, and the mapped file's size is
    checked before every view is handed out: a truncated or rewritten shard becomes a CheckpointError
    ("file_changed"), and once the file is whole again the next access maps it afresh. (A file shrinking
    between that check and the read of the view cannot be caught; arrays converted by k25ref are copies,
    so only such a race, never a cached weight, can touch a lost page.)
    """

    def __init__(self, path):
        self.path = str(path)
        self.header_len, self.infos, self.metadata, self._size, self._digest = _read_validated(self.path)
        self._map = self._buf = None

    def _buffer(self, name):
        """The whole file as a read-only uint8 array, mapped on first use, verified on every use."""
        if self._map is not None and self._map.size() != self._size:
            now = self._map.size()
            self._map = self._buf = None                 # views already handed out keep the old map alive
            fail(self.path, "file_changed", f"the file is now {now} bytes, {self._size} when its header "
                 "was read", name)
        if self._map is None:
            self._map = self._map_if_unchanged(name)
            self._buf = np.frombuffer(self._map, dtype=np.uint8)
        return self._buf

    def _map_if_unchanged(self, name):
        """Read the header again; map the file only if it is byte-for-byte the one validated."""
        f, size = _open_regular(self.path, "safetensors file")
        with f:
            try:
                n, raw = _read_raw_header(f, self.path, size)
                same = (n, size, hashlib.sha256(raw).digest()) == (self.header_len, self._size, self._digest)
                if same:
                    return mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
            except (CheckpointError, OSError, ValueError):
                pass
        fail(self.path, "file_changed", "the file changed since its header was read", name)

    def tensor(self, name):
        """name -> np.ndarray view in storage dtype (BF16 as uint16, F8_E4M3 as uint8)."""
        t = self.infos.get(name)
        if t is None:
            fail(self.path, "missing_tensor", "not in this file", name)
        if t.dtype not in DTYPES:
            fail(self.path, "unsupported_dtype", f"dtype {t.dtype} is valid safetensors but not supported", name)
        if t.nbytes == 0:
            return np.zeros(t.shape, DTYPES[t.dtype][0])
        start = 8 + self.header_len
        raw = self._buffer(name)[start + t.begin:start + t.end]
        return raw.view(DTYPES[t.dtype][0]).reshape(t.shape)


# ----------------------------------------------------------------------------
# dtype widening: exact, never approximate


def bf16_to_f32(raw):  # (...,) uint16 -> (...,) float32
    """bfloat16 is the top half of a float32, so widening is exact: shift the bits into place."""
    return (np.asarray(raw, dtype=np.uint16).astype(np.uint32) << 16).view(np.float32)


def f32_to_bf16(x):  # (...,) float32 -> (...,) uint16
    """Round float32 to the nearest bfloat16, ties to even (what torch's .to(bfloat16) does); NaN stays NaN."""
    b = np.asarray(x, dtype=np.float32).view(np.uint32)
    rounded = ((b + 0x7FFF + ((b >> 16) & 1)) >> 16).astype(np.uint16)
    return np.where(np.isnan(np.asarray(x, np.float32)), np.uint16(0x7FC0), rounded)


def _f8_e4m3_table():
    """All 256 float8 e4m3fn values: 1 sign, 4 exponent (bias 7), 3 mantissa bits; 0x7F/0xFF are NaN."""
    b = np.arange(256)
    sign = np.where(b & 0x80, -1.0, 1.0)
    e, m = (b >> 3) & 0xF, b & 0x7
    value = np.where(e == 0, m / 8 * 2.0**-6, (1 + m / 8) * 2.0 ** (e - 7))
    value = np.where((b & 0x7F) == 0x7F, np.nan, value)
    return (sign * value).astype(np.float32)


F8_E4M3_TABLE = _f8_e4m3_table()


def to_float32(raw, dtype):  # storage array -> float32 array (exact for BF16/F16/F8)
    """Widen a stored floating tensor to float32 (F64 is narrowed: k25ref computes in float32). The result
    is a new array, so caching it never keeps a mapped file's pages in use."""
    if dtype == "BF16":
        return bf16_to_f32(raw)
    if dtype == "F8_E4M3":
        return F8_E4M3_TABLE[np.asarray(raw)]
    if dtype in ("F16", "F32", "F64"):
        return np.array(raw, dtype=np.float32)       # always a copy: never a view of a mapped file
    raise TypeError(f"{dtype} is not a floating dtype")


# ----------------------------------------------------------------------------
# a sharded checkpoint folder


def _safe_shard_name(folder, shard):
    if (not isinstance(shard, str) or not shard or "/" in shard or "\\" in shard or shard in (".", "..")
            or "\x00" in shard):
        fail(os.path.join(folder, INDEX_FILE), "bad_shard_name", f"shard name {shard!r} is not a plain file name")
    return shard


def read_index(folder):
    """model.safetensors.index.json -> {tensor name: shard file name} (validated, no shard opened)."""
    path = os.path.join(folder, INDEX_FILE)
    try:
        text = read_bytes(path, "shard index", cap=MAX_INDEX_BYTES).decode("utf-8")
    except FileProblem as e:
        fail(path, "bad_index" if e.code == "too_large" else e.code, e.detail)
    except UnicodeDecodeError as e:
        fail(path, "bad_index", f"shard index is not UTF-8 ({e.reason} at byte {e.start})")
    wm = _json_object(path, text, "bad_index", "shard index").get("weight_map")
    if not isinstance(wm, dict) or not wm:
        fail(path, "bad_index", "index has no weight_map object")
    return {name: _safe_shard_name(folder, shard) for name, shard in wm.items()}


class Checkpoint:
    """Every tensor of a released checkpoint folder, by its original name, opened lazily.

    Index and shard headers are validated up front (cheap: headers only); tensor bytes are mapped on use.
    """

    def __init__(self, folder, progress=False):
        self.folder = str(folder)
        if not os.path.isdir(self.folder):
            fail(self.folder, "no_folder", "not a checkpoint folder")
        if os.path.exists(os.path.join(self.folder, INDEX_FILE)):
            self.where = read_index(self.folder)
        elif os.path.exists(os.path.join(self.folder, SINGLE_FILE)):
            self.where = None
        else:
            fail(self.folder, "no_weights", f"neither {INDEX_FILE} nor {SINGLE_FILE} found")
        self.files = {}
        shards = sorted(set(self.where.values())) if self.where is not None else [SINGLE_FILE]
        for shard in bar(shards, desc="reading shard headers", unit="shard", disable=not progress):
            path = os.path.join(self.folder, shard)
            if not os.path.lexists(path):
                fail(path, "missing_shard", "the index names this shard but it does not exist")
            self.files[shard] = SafetensorsFile(path)
        self._check_index_agrees()

    def _check_index_agrees(self):
        """Index and shards must list the same tensors, each in exactly one shard."""
        owner = {}
        for shard, f in self.files.items():
            for name in f.infos:
                if name in owner:
                    fail(os.path.join(self.folder, shard), "duplicate_tensor",
                         f"also stored in {owner[name]}", name)
                owner[name] = shard
        if self.where is None:
            self.where = owner
            return
        index = os.path.join(self.folder, INDEX_FILE)
        for name, shard in self.where.items():
            if owner.get(name) != shard:
                fail(index, "index_mismatch", f"index says {shard} but " +
                     (f"it is in {owner[name]}" if name in owner else "no shard holds it"), name)
        for name, shard in owner.items():
            if name not in self.where:
                fail(os.path.join(self.folder, shard), "index_mismatch", "stored in a shard but not in the index", name)

    def __contains__(self, name):
        return name in self.where

    def names(self):
        return list(self.where)

    def info(self, name):
        return self.files[self.where[name]].infos[name]

    def raw(self, name):
        """Storage-dtype view of a tensor (of the mapped file, zero copy)."""
        if name not in self.where:
            fail(self.folder, "missing_tensor", "required by the model but not in the checkpoint", name)
        return self.files[self.where[name]].tensor(name)

    def file_of(self, name):
        return os.path.join(self.folder, self.where[name])
