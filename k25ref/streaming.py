"""Reading weights from disk on demand, inside a memory budget: what lets a 595 GB checkpoint run on one machine.

Per decoded token K2.5 needs only its active set: the dense weights of every layer, A = 8 of 384 routed experts
per MoE layer, one embedding row and the lm_head. So nothing is read until it is needed:

  - tensors are read with `os.pread` into fresh arrays. Pages of a memory map count in the process's RSS once
    touched and stay until the kernel decides otherwise; pread'd data lives only as long as the array does.
  - `WeightCache` keeps converted weights (dense float32, experts still packed INT4) in least-recently-used
    order inside a byte budget; everything else is dropped.
  - while layer i computes, a background thread reads layer i+1's dense weights; a layer's chosen experts
    are read concurrently (os.pread releases the GIL).

`IOStats` counts bytes read, time spent reading, and cache hits and misses, for `k25ref generate --stats`.
"""
import os
import threading
import time
from collections import OrderedDict
from concurrent.futures import Future, ThreadPoolExecutor

import numpy as np

from k25ref.checkpoint import DTYPES, fail


class IOStats:
    """Counters of one model: bytes read from disk, seconds spent in pread, per-layer expert hits and misses."""

    def __init__(self):
        self.bytes_read, self.io_seconds, self.reads = 0, 0.0, 0
        self.expert_hits, self.expert_misses = {}, {}
        self.lock = threading.Lock()

    def add_read(self, nbytes, seconds):
        with self.lock:
            self.bytes_read += nbytes
            self.io_seconds += seconds
            self.reads += 1

    def expert(self, layer, hit, n=1):
        if n:
            with self.lock:
                table = self.expert_hits if hit else self.expert_misses
                table[layer] = table.get(layer, 0) + n

    def snapshot(self):
        with self.lock:
            return {"bytes_read": self.bytes_read, "io_seconds": self.io_seconds, "reads": self.reads,
                    "expert_hits": dict(self.expert_hits), "expert_misses": dict(self.expert_misses)}


class Reader:
    """pread-based tensor reads from a validated Checkpoint, with a size check so a file truncated after
    loading is a CheckpointError, never a crash."""

    def __init__(self, ckpt, stats: IOStats):
        self.ckpt, self.stats = ckpt, stats
        self.fds, self.sizes, self.lock = {}, {}, threading.Lock()

    def _fd(self, name):  # -> (fd, shard file, the shard's size as validated)
        shard = self.ckpt.where[name]
        with self.lock:
            if shard not in self.fds:
                f = self.ckpt.files[shard]
                self.fds[shard] = os.open(os.path.join(self.ckpt.folder, shard), os.O_RDONLY)
                self.sizes[shard] = 8 + f.header_len + max(i.end for i in f.infos.values())
            return self.fds[shard], self.ckpt.files[shard], self.sizes[shard]

    def read_bytes(self, name, start, stop):  # byte range [start, stop) of a tensor -> (stop-start,) uint8
        fd, f, expected = self._fd(name)
        info = f.infos[name]
        if os.fstat(fd).st_size != expected:
            fail(f.path, "file_changed", f"the file is now {os.fstat(fd).st_size} bytes, expected {expected}", name)
        out = np.empty(stop - start, np.uint8)
        t0, done, base = time.perf_counter(), 0, 8 + f.header_len + info.begin + start
        while done < out.size:
            n = os.preadv(fd, [memoryview(out)[done:]], base + done)
            if n <= 0:
                fail(f.path, "short_read", f"read stopped at byte {base + done}", name)
            done += n
        self.stats.add_read(out.size, time.perf_counter() - t0)
        return out

    def read(self, name):  # -> stored dtype array of the tensor's shape
        info = self.ckpt.info(name)
        return self.read_bytes(name, 0, info.nbytes).view(DTYPES[info.dtype][0]).reshape(info.shape)

    def read_rows(self, name, start, stop):  # rows [start, stop) of a 2-D tensor
        info = self.ckpt.info(name)
        row = info.nbytes // info.shape[0]
        return self.read_bytes(name, start * row, stop * row).view(DTYPES[info.dtype][0]).reshape(stop - start, -1)

    def close(self):
        with self.lock:
            for fd in self.fds.values():
                os.close(fd)
            self.fds.clear()
            self.sizes.clear()


def _size(value):
    """Bytes held by an array, a tuple of arrays, or an object with .nbytes."""
    return sum(_size(v) for v in value) if isinstance(value, tuple) else value.nbytes


class WeightCache:
    """Least-recently-used store of loaded weights inside `budget` bytes (None: unbounded). Thread-safe;
    two threads asking for the same key load it once. Values stored as `spare` (routed experts: a token uses
    top-k of E, while it needs every dense weight) are evicted first, least recent first, then the rest."""

    def __init__(self, budget=None):
        self.budget, self.items, self.bytes, self.spare = budget, OrderedDict(), 0, set()
        self.hits = self.misses = self.bytes_loaded = 0
        self.lock, self.loading = threading.Lock(), {}

    def __contains__(self, key):
        with self.lock:
            return key in self.items

    def get(self, key, load, size=None, spare=False):
        """The cached value of key, or load() it. `size` (bytes, if known) makes room before loading, so the
        new value and a full cache never coexist."""
        with self.lock:
            if key in self.items:
                self.hits += 1
                self.items.move_to_end(key)
                return self.items[key]
            future, owner = self.loading.get(key), False
            if future is None:
                future, owner = Future(), True
                self.loading[key] = future
                self.misses += 1
                if size is not None and self.budget is not None:
                    self._evict(self.budget - min(size, self.budget))
        if not owner:
            return future.result()
        try:
            value = load()
        except BaseException as e:
            with self.lock:
                del self.loading[key]
            future.set_exception(e)
            raise
        self._insert(key, value, spare)
        future.set_result(value)
        return value

    def _insert(self, key, value, spare=False):
        size = _size(value)
        with self.lock:
            del self.loading[key]
            self.bytes_loaded += size
            if self.budget is not None and size > self.budget:
                return                                  # used once, never kept
            self.items[key] = value
            self.bytes += size
            if spare:
                self.spare.add(key)
            if self.budget is not None:
                self._evict(self.budget)

    def _evict(self, limit):
        """Drop spare values, then the others, least recently used first, until at most `limit` bytes are
        held (call with the lock)."""
        for spare in (True, False):
            for key in [k for k in self.items if (k in self.spare) == spare]:
                if self.bytes <= limit:
                    return
                self.bytes -= _size(self.items.pop(key))
                self.spare.discard(key)


class Prefetcher:
    """One background thread that warms the cache ahead of the layer being computed, and a small pool that
    reads a layer's chosen experts concurrently. Errors surface when the weight is actually needed."""

    def __init__(self, workers=2):
        self.ahead = ThreadPoolExecutor(1, thread_name_prefix="k25ref-prefetch")
        self.pool = ThreadPoolExecutor(workers, thread_name_prefix="k25ref-experts")

    def later(self, fn):
        self.ahead.submit(_quietly, fn)

    def all(self, fns):
        """Run fns concurrently and wait for all (re-raising the first error)."""
        for f in [self.pool.submit(fn) for fn in fns]:
            f.result()


def _quietly(fn):
    try:
        fn()
    except Exception:                                   # reported again, in the main thread, on real use
        pass
