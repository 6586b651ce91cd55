"""How k25ref compiles its hot loops. The only module of the package that imports numba.

Each kernel lives in `k25ref/kernels/<name>.py` beside the NumPy function it speeds up (the spec and the
test oracle), as three tiers (docs/kernels.md):

    reference   a NumPy function in the concept module        k25ref.int4.dequantize(w) @ x
    loop body   an undecorated Python function                _int4_matmul_loops   (runs as plain Python)
    kernel      the loop body compiled here by `jit`          int4_matmul_numba

Policy, in one place:
- fast-math without "nnan"/"ninf", so -inf masks and isinf/isnan stay meaningful (fastmath=True made
  np.isinf(-inf) return False); reassociation changes summation order, so kernels match their references
  to rtol ~1e-5, not bit for bit. `jit(..., exact=True)` compiles a helper without fast-math, for rounding
  tricks that must run as written (the INT4 kernel's bf16 rounding).
- NumPy's error model: x / 0 is inf or nan, as in the references, not a ZeroDivisionError (Python's
  model tests every divisor, which keeps a loop with a division from vectorizing);
- compiled code is cached on disk (`__pycache__` beside this package, or NUMBA_CACHE_DIR), stamped with
  every kernel file's time and size (`stamp_cache`); K25REF_NUMBA_CACHE=0 switches caching off.
- threads follow NUMBA_NUM_THREADS (numba's own variable; default: all cores). Calls with little work run
  on one thread (`launch`): waking the others costs more than it saves, and on a busy machine a parallel
  region waits for its slowest, possibly descheduled, thread (milliseconds).
- 512-bit vectors on AVX-512 hosts (`prefer_512_bit_vectors`), unless NUMBA_CPU_NAME or NUMBA_CPU_FEATURES
  is set: LLVM's tuning would keep numba's loops at 256 bits.
- NUMBA_DISABLE_JIT=1 runs every loop body as Python: slow, but with real tracebacks.
"""
import logging
import os
import time

import numpy as np

FASTMATH = {"nsz", "arcp", "contract", "afn", "reassoc"}
CACHE = os.environ.get("K25REF_NUMBA_CACHE", "1") != "0"
PARALLEL_MIN_WORK = 1 << 22         # multiply-adds below which a call runs on one thread

try:
    import numba
    prange, HAVE_NUMBA = numba.prange, True
except ImportError:                     # the NumPy references still run everywhere
    numba, prange, HAVE_NUMBA = None, range, False


def prefer_512_bit_vectors():
    """LLVM tunes Intel's AVX-512 cores for 256-bit vectors (the first ones slowed their clock under 512-bit
    work), so numba's loops would use half the vector width the core has. Dropping that preference made
    k25ref decode 1.2x faster next to transformers and the INT4 matvec about 3x (docs/kernels.md). numba
    reads the setting when it first compiles, so this applies to what it compiles after `k25ref.kernels`
    is imported, and only if the user has set neither NUMBA_CPU_NAME nor NUMBA_CPU_FEATURES."""
    from llvmlite import binding
    if numba.config.CPU_NAME is not None or numba.config.CPU_FEATURES is not None:
        return
    features = binding.get_host_cpu_features()
    if features.get("avx512f"):
        numba.config.CPU_FEATURES = features.flatten() + ",-prefer-256-bit"


if HAVE_NUMBA:
    prefer_512_bit_vectors()


def jit(fn, *, parallel=False, exact=False):
    """Compile `fn` with numba if we have it (lazily, at first call); otherwise hand it back unchanged.
    exact=True compiles without fast-math, so every float operation happens as written (for rounding tricks
    that reassociation would fold away); the flags stay with the operations when a caller inlines `fn`."""
    if not HAVE_NUMBA:
        return fn
    options = dict(parallel=parallel, fastmath=set() if exact else FASTMATH, error_model="numpy")
    kernel = numba.njit(fn, cache=CACHE, **options)
    if CACHE and not stamp_cache(kernel):
        kernel = numba.njit(fn, cache=False, **options)
    return kernel


def sources_stamp(folder=os.path.dirname(os.path.abspath(__file__))):
    """(name, mtime, size) of every kernel file: what a cached kernel must have been compiled against."""
    stats = {name: os.stat(os.path.join(folder, name)) for name in sorted(os.listdir(folder)) if name.endswith(".py")}
    return tuple((name, st.st_mtime, st.st_size) for name, st in stats.items())


def stamp_cache(kernel):
    """Numba checks a cached kernel against the time stamp of its own file only, but kernels inline loops
    from other kernel files (moe_experts calls int4_matvec's): after an edit there, the cache would serve
    the old machine code. The stamp of a cached kernel is made that of every kernel file, so an edit to one
    recompiles all. Returns False if this numba keeps its cache elsewhere (the caller then compiles uncached)."""
    cache_file = getattr(getattr(kernel, "_cache", None), "_cache_file", None)
    if not hasattr(cache_file, "_source_stamp"):
        return False
    cache_file._source_stamp = SOURCES_STAMP
    return True


SOURCES_STAMP = sources_stamp()


def launch(kernel, work, *args):
    """kernel(*args) on all of numba's threads, or on one when `work` (multiply-adds) is below PARALLEL_MIN_WORK."""
    if (work >= PARALLEL_MIN_WORK or not compiled() or numba.config.NUMBA_NUM_THREADS == 1   # one thread in all:
            or numba.get_num_threads() == 1):      # no need to ask, which takes a lock (7% of a tiny model's token)
        return kernel(*args)
    threads = numba.get_num_threads()
    numba.set_num_threads(1)
    try:
        return kernel(*args)
    finally:
        numba.set_num_threads(threads)


def array_list(arrays):
    """Arrays of one type as a list a kernel takes without copying them: numba's typed List when compiled
    (a Python list of arrays would be unboxed and reflected on every call), a plain list otherwise."""
    return numba.typed.List(arrays) if compiled() else list(arrays)


def compiled():
    """True when kernels run as machine code (numba present and NUMBA_DISABLE_JIT not set)."""
    return HAVE_NUMBA and not numba.config.DISABLE_JIT


def _fma_python(a, b, c):  # float32 a * b + c, for loop bodies run as Python
    """a * b is exact in float64; the sum is then rounded twice (float64, float32), which equals one rounding
    whenever a * b + c is exact in float64, as it is where the INT4 kernel uses it."""
    return np.float32(np.float64(a) * np.float64(b) + np.float64(c))


def _fma_compiled():
    """float32 fused multiply-add, a * b + c with one rounding: LLVM's llvm.fma (numba has no fma function),
    wrapped in a jitted function so that loop bodies run as Python can call it too."""
    from numba.extending import intrinsic

    @intrinsic
    def llvm_fma(typingctx, a, b, c):
        def codegen(context, builder, signature, args):
            return builder.fma(*args)
        return numba.float32(numba.float32, numba.float32, numba.float32), codegen

    return jit(lambda a, b, c: llvm_fma(a, b, c), exact=True)


fma = _fma_compiled() if compiled() else _fma_python


def _prefetch_python(a, i):  # loop bodies run as Python: nothing to do
    pass


def _prefetch_compiled():
    """Ask the CPU to start loading the cache line of a[i] (1-D array), without waiting for it: LLVM's
    llvm.prefetch (read, keep in all cache levels). For loops that read many short rows from memory, where
    the hardware prefetcher, which stops at every 4 kB page, starts each page late (docs/kernels.md)."""
    from llvmlite import ir
    from numba.core import cgutils
    from numba.extending import intrinsic

    @intrinsic
    def llvm_prefetch(typingctx, a, i):
        def codegen(context, builder, signature, args):
            array = context.make_array(signature.args[0])(context, builder, args[0])
            ptr = cgutils.get_item_pointer(context, builder, signature.args[0], array, [args[1]], wraparound=False)
            i8p, i32 = ir.IntType(8).as_pointer(), ir.IntType(32)
            fn = builder.module.declare_intrinsic("llvm.prefetch", [i8p],                # name mangled for this LLVM
                                                  ir.FunctionType(ir.VoidType(), [i8p, i32, i32, i32]))
            builder.call(fn, [builder.bitcast(ptr, i8p), i32(0), i32(3), i32(1)])
            return context.get_dummy_value()
        return numba.types.void(a, i), codegen

    kernel = jit(lambda a, i: llvm_prefetch(a, i))
    try:                                    # compiled (or read from the cache) here, before any loop inlines it:
        kernel(np.zeros(16, np.int32), 0)   # an LLVM that rejects the intrinsic then costs the prefetching only
    except Exception as error:              # (a hint: the loops compute the same without it), not the kernels
        logging.getLogger("k25ref").warning("llvm.prefetch did not compile (%s); kernels run without it", error)
        return jit(_prefetch_python)
    return kernel


prefetch = _prefetch_compiled() if compiled() else _prefetch_python


def warmup():
    """Compile (or load from the cache) every kernel by calling each once on tiny inputs.

    Returns {kernel name: seconds}: the first-call cost a later run no longer pays.
    """
    from k25ref.kernels import (bf16_matvec, int4_matvec, mla_blocked, mla_decode, moe_experts, moe_route, rms_norm,
                                vision_attention, vision_block)
    seconds = {}
    for module in (int4_matvec, bf16_matvec, mla_decode, mla_blocked, moe_experts, moe_route, rms_norm,
                   vision_attention, vision_block):
        for name, call in module.warmup_calls():
            t0 = time.perf_counter()
            call()
            seconds[name] = time.perf_counter() - t0
    return seconds
