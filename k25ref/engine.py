"""Which code runs each hot operation: the NumPy reference or the Numba kernels, chosen once per model.

A `Model` holds one `Ops` bundle, picked when it is built (`load_model(path, backend="auto")`), the way
nanoGPT decides its attention path once; the decoder, MoonViT and the projector call what the bundle holds
and never ask which it is. The reference modules (mla, moe, nn, moonvit) know nothing of numba: this is the
one module that pairs each of their functions with its kernel.

    operation            NUMPY (the reference)                numba_ops() (the kernels)
    MLA attention        mla.attend_blocked                   kernels.mla_blocked.attend
    router               moe.route                            kernels.moe_route (the selection after the product)
    routed experts       moe.moe, expert by expert            kernels.moe_experts (INT4, all chosen at once)
    RMSNorm              nn.rms_norm                          kernels.rms_norm
    RoPE of q and k      rope.apply_rope_interleaved          kernels.vision_block's (`rope_kernel`)
    BF16 matrices, head  widened to float32 once, cached      kept as stored, kernels.bf16_matvec (a prompt
                                                              chunk: widened by blocks, BLAS)
    vision passes        moonvit.REFERENCE                    kernels.vision_block, kernels.vision_attention

backend names: "numba", "numpy", or "auto" (numba when its JIT is on, which it is unless NUMBA_DISABLE_JIT=1;
the kernels then run as plain Python, correct but slow, so "auto" takes the reference). The K25REF_BACKEND
environment variable replaces "auto". Both bundles give the same tokens; kernels match their references to
rtol ~1e-5 (docs/kernels.md).
"""
import contextlib
import logging
import os
import threading
import time
from dataclasses import dataclass, replace
from functools import cache
from typing import Callable

import numpy as np

from k25ref.errors import ConfigError
from k25ref.mla import attend_absorbed, attend_blocked, attend_naive
from k25ref.moe import moe, route
from k25ref.moonvit import REFERENCE, VisionOps
from k25ref.nn import rms_norm
from k25ref.rope import apply_rope_interleaved

BACKENDS = ("auto", "numba", "numpy")
log = logging.getLogger("k25ref")


@dataclass(frozen=True)
class Ops:
    """One choice of code for every hot operation (see the module's table)."""
    name: str
    attend: Callable            # attend_blocked's signature, absorbed as keyword: MLA over the latent cache
    route: Callable             # moe.route's signature: (u (T, D), gate (E, D), bias (E,), cfg) -> idx, g (T, A)
    routed_experts: Callable    # (i, x (T, D), idx (T, A), g (T, A), W: Weights) -> (T, D)
    rms_norm: Callable          # nn.rms_norm's signature: (x (..., D), weight (D,), eps) -> (..., D)
    rope: Callable              # rope.apply_rope_interleaved's: (x (..., T, Dr), cos, sin (T, Dr/2)) -> (..., T, Dr)
    bf16_matmul: Callable | None  # (raw (O, I) uint16, x (T, I)) -> (T, O); None: BF16 widened once, cached
    vision: VisionOps           # the passes between the products of MoonViT and the projector

    def prepare(self):
        """Before the first pass: the kernels compiled, or loaded from numba's cache (once per process)."""
        if self.name == "numba":
            prepare_kernels()

    def decoder_threads(self):
        """The context of a pass through the decoder. With the kernels, BLAS runs on one thread: numba's
        threads take the cores, and OpenBLAS's threads, spinning after each product, stall them (a 128-token
        prompt on tools/bench.py's `small`, two threads: 150 tokens/s with BLAS on both, 291 on one; tiny:
        600-1260 against 3980-5560). The reference leaves BLAS as the process has it."""
        return blas_threads(1) if self.name == "numba" else contextlib.nullcontext()


@cache
def _blas_controller():
    from threadpoolctl import ThreadpoolController      # finds the BLAS numpy loaded (OpenBLAS or MKL)
    return ThreadpoolController()


def blas_threads(n):
    """A context in which BLAS runs on `n` threads (about 15 us to enter and leave)."""
    return _blas_controller().limit(limits=n, user_api="blas")


def resolve(backend="auto"):  # -> "numba" | "numpy"
    """The backend name to use: the argument, K25REF_BACKEND in place of "auto", then "auto" decided."""
    where = "backend"
    if backend == "auto" and os.environ.get("K25REF_BACKEND"):
        backend, where = os.environ["K25REF_BACKEND"].strip().lower(), "K25REF_BACKEND"
    if backend not in BACKENDS:
        raise ConfigError(f"{where} must be one of {', '.join(BACKENDS)}, got {backend!r}")
    if backend == "auto":
        from k25ref.kernels import compiled
        return "numba" if compiled() else "numpy"
    return backend


def ops(backend="auto"):  # -> Ops
    """The bundle for a backend name (see resolve), or `backend` itself if it is already an Ops."""
    if isinstance(backend, Ops):
        return backend
    return numba_ops() if resolve(backend) == "numba" else NUMPY


# ----------------------------------------------------------------------------
# routed experts


def reference_experts(i, x, idx, g, W):  # (T, D), (T, A), (T, A) -> (T, D)
    """moe.moe without the shared expert; the chosen experts through the budgeted cache, read concurrently
    when streaming, and under a budget a few at a time (`Weights.expert_chunks`)."""
    return by_chunks(i, x, idx, g, W, lambda x, idx, g, chosen: moe(x, idx, g, lambda e: W.expert(i, e), None))


def by_chunks(i, x, idx, g, W, run):
    """run(x, idx, g, chosen) on each chunk of the chosen experts (one chunk without a budget), each on the
    (token, slot) pairs that chose it, after reading the chunk's experts."""
    chunks = W.expert_chunks(np.unique(idx))
    if len(chunks) == 1:
        W.load_experts(i, chunks[0])
        return run(x, idx, g, chunks[0])
    out = np.zeros_like(x)
    for chosen in chunks:
        W.load_experts(i, chosen)
        t, a = np.nonzero(np.isin(idx, chosen))                               # (P,) pairs that chose the chunk
        np.add.at(out, t, run(x[t], idx[t, a][:, None], g[t, a][:, None], chosen))
    return out


def kernel_experts(i, x, idx, g, W):  # (T, D), (T, A), (T, A) -> (T, D)
    """The packed-INT4 MoE kernel on all of a call's chosen experts at once. With every weight kept (no
    budget) the kernel indexes the layer's stacked experts (`Weights.expert_stack`) by global expert id;
    under a budget the chosen ones are gathered for each chunk. Experts the kernel cannot reproduce
    (non-BF16 scales: `kernel_exact`) run the reference."""
    from k25ref.kernels import moe_experts as kernel
    if W.cfg.quant is None:
        return reference_experts(i, x, idx, g, W)
    if W.cache.budget is None:
        chosen, stack = np.unique(idx), W.expert_stack(i)
        new = chosen[~stack.held[chosen]]                                     # the others are in the stack
        W.load_experts(i, new, known=len(chosen) - len(new))                  # read what is new, all counted
        exact = W.held(("kernel exact", i), lambda: np.zeros(len(stack.held), bool))
        for e in new:
            exact[e] = all(kernel.kernel_exact(w) for w in W.expert(i, int(e)))
        if exact[chosen].all():
            return kernel.moe_experts(x, idx, g, stack.arrays)
        return moe(x, idx, g, lambda e: W.expert(i, e), None)

    def run(x, idx, g, chosen):
        experts = [W.expert(i, int(e)) for e in chosen]
        if all(kernel.kernel_exact(w) for ws in experts for w in ws):
            return kernel.moe_experts(x, np.searchsorted(chosen, idx), g, kernel.gather_experts(experts))
        return moe(x, idx, g, lambda e: W.expert(i, e), None)
    return by_chunks(i, x, idx, g, W, run)


# ----------------------------------------------------------------------------
# the bundles


NUMPY = Ops("numpy", attend_blocked, route, reference_experts, rms_norm, apply_rope_interleaved, None, REFERENCE)


def one_shot(ops=NUMPY):  # -> Ops
    """`ops` with MLA attending in one shot, over the whole (H, T, S) score tensor (mla.attend_naive /
    attend_absorbed: the spec), instead of in key blocks: what tests and tools/bench_long.py compare with."""
    return replace(ops, attend=_attend_one_shot)


def _attend_one_shot(*args, absorbed=False):
    return (attend_absorbed if absorbed else attend_naive)(*args)


@cache
def numba_ops():  # -> Ops
    """The kernels' bundle, built at first request: importing the kernel modules loads numba (~0.3 s), which
    a NumPy-only run, or `k25ref --help`, never pays."""
    from k25ref.kernels import mla_blocked, moe_route, rms_norm, vision_attention as va, vision_block as vb
    vision = VisionOps(vb.layer_norm, vb.bias_gelu_tanh, vb.gelu_erf, vb.apply_rope_interleaved, va.softmax_rows)
    return Ops("numba", mla_blocked.attend, moe_route.route, kernel_experts, rms_norm.rms_norm, rope_kernel,
               bf16_by_rows, vision)


def rope_kernel(x, cos, sin):  # (..., T, Dr), (T, Dr/2) -> (..., T, Dr) float32
    """rope.apply_rope_interleaved through MoonViT's kernel (kernels.vision_block), any leading dims: one call
    where NumPy makes eight (a decoded token on tools/bench.py's tiny: ~5% of its time in two calls a layer)."""
    from k25ref.kernels.vision_block import apply_rope_interleaved as kernel
    T, Dr = x.shape[-2:]
    return kernel(x.reshape(-1, T, Dr), cos, sin).reshape(x.shape)


BLAS_ROWS = 256          # inputs from which a bf16 product widens its matrix and calls BLAS ...
SHORT_ROWS = (64, 6)     # ... or from 64 inputs, if a row has at most 6 weights per input (I <= 6 T)
WIDEN_BYTES = 16 << 20   # float32 bytes of one widened block of rows


def blas_pays(T, I):
    """Whether x W^T for T inputs of length I runs faster widened and through BLAS than through the bf16
    kernel's 4x4 tiles. A tile's sixteen sums are reduced across the vector lanes at the end of its rows, a
    fixed cost that short rows do not amortize (tools/bench_short_rows.py prints the grid; docs/kernels.md,
    "Short rows to BLAS"). The matrix is widened on every call, by the kernel `widen_rows`: with NumPy's
    two-pass widening, rows of 384-768 weights lost 1-6% of a prompt's time this way instead of gaining."""
    least, per_input = SHORT_ROWS
    return T >= BLAS_ROWS or (T >= least and I <= per_input * T)


def bf16_by_rows(raw, x):  # (O, I) uint16, (T, I) -> (T, O) float32
    """x W^T for a stored bf16 matrix: the bf16 kernel for a few inputs (decoding); for a prompt chunk where
    BLAS pays (`blas_pays`), the matrix widened exactly (`widen_rows`) a block of rows at a time and multiplied
    by BLAS."""
    from k25ref.kernels.bf16_matvec import bf16_matmul, widen_rows
    if not blas_pays(*x.shape):
        return bf16_matmul(raw, x)
    out = np.empty((x.shape[0], raw.shape[0]), np.float32)
    step = max(1, WIDEN_BYTES // (4 * raw.shape[1]))
    for a in range(0, raw.shape[0], step):
        out[:, a:a + step] = x @ widen_rows(raw[a:a + step]).T              # (T, rows)
    return out


_prepared, _lock = [], threading.Lock()


def prepare_kernels():
    """Compile every kernel (or load it from numba's on-disk cache) on first use in this process, announced
    once on the "k25ref" logger; later calls return at once. -> seconds it took (0 after the first)."""
    with _lock:
        if _prepared:
            return 0.0
        log.info("compiling k25ref kernels (cached after the first run: about 20-40 s once, then ~1 s)")
        from k25ref.kernels import warmup
        t0 = time.perf_counter()
        warmup()
        _prepared.append(time.perf_counter() - t0)
        log.info("k25ref kernels ready in %.1f s", _prepared[0])
        return _prepared[0]
