"""BF16 matrix-vector product for the dense weights that decoding reads in full (the output head first):
y = x W^T with W kept as stored, two bytes per weight.

Reference (the spec): x @ k25ref.checkpoint.bf16_to_f32(raw).T   -- NumPy; needs W widened to float32
This kernel:          widens each weight in registers (bf16 is the top half of a float32, so widening is a
                      16-bit shift and exact) and multiply-accumulates in float32: the same products as the
                      reference, from half the bytes. With several input rows (a prompt) it widens four
                      weight rows into a buffer and meets four inputs per pass (`tile44`, as the INT4
                      kernel does). Parallel over blocks of output rows.

Why: after the routed experts, the head is decoding's largest cost (V x D floats read per token: 128 MiB
for V = 32768, D = 1024); memory traffic, not arithmetic, bounds it.
Checked by tests/test_kernels.py::test_bf16_matmul_matches_reference (also with NUMBA_DISABLE_JIT=1).
"""
import numpy as np

from k25ref.kernels import jit, launch, prange
from k25ref.kernels.int4_matvec import PAD, tile_rows_numba

ROWS_PER_TASK = 64


def _bf16_widen_loops(b):  # uint16 -> float32, exact
    return np.uint32(np.uint32(b) << np.uint32(16)).view(np.float32)


bf16_widen_numba = jit(_bf16_widen_loops)


def _widen_rows_loops(raw, bits):  # (O, I) uint16 -> bits: (O, I) uint32, the float32 bit patterns
    """NumPy widens in two passes and a temporary (`checkpoint.bf16_to_f32`); this is one (2-4x faster):
    what a prompt's products through BLAS widen on every call (engine.bf16_by_rows). Integers only, so every
    bit pattern survives (a signalling NaN loaded as a float would come back quiet)."""
    O, I = raw.shape
    for o in range(O):
        for i in range(I):
            bits[o, i] = np.uint32(raw[o, i]) << np.uint32(16)


widen_rows_numba = jit(_widen_rows_loops)


def widen_rows(raw):  # (O, I) uint16 -> (O, I) float32, exact
    raw = np.ascontiguousarray(raw, np.uint16)
    out = np.empty(raw.shape, np.float32)
    widen_rows_numba(raw, out.view(np.uint32))
    return out


def _bf16_matmul_loops(raw, x, out):  # (O, I) uint16, (T, I) float32 -> out: (T, O) float32
    O, I = raw.shape
    T = x.shape[0]
    for task in prange((O + ROWS_PER_TASK - 1) // ROWS_PER_TASK):
        w, acc = np.empty((4, I + PAD), np.float32), np.empty((4, 4), np.float32)
        for o in range(task * ROWS_PER_TASK, min(O, (task + 1) * ROWS_PER_TASK), 4):
            rows = min(4, O - o)
            if T == 1:                                              # decoding: widen inside the dot
                for r in range(rows):
                    a = np.float32(0.0)
                    for i in range(I):
                        a += bf16_widen_numba(raw[o + r, i]) * x[0, i]
                    out[0, o + r] = a
                continue
            for r in range(4):                                      # a prompt: widen four rows once ...
                k = o + min(r, rows - 1)                            # (a short tail repeats its last row)
                for i in range(I):
                    w[r, i] = bf16_widen_numba(raw[k, i])
            tile_rows_numba(w, x, I, o, rows, acc, out)            # ... and meet four inputs per pass


bf16_matmul_numba = jit(_bf16_matmul_loops, parallel=True)


def bf16_matmul(raw, x):  # (O, I) uint16 (stored bf16), (T, I) -> (T, O) float32
    """y = x W^T for a bf16 matrix in its stored form; the kernel twin of `x @ bf16_to_f32(raw).T`."""
    raw = np.ascontiguousarray(raw, np.uint16)
    out = np.empty((x.shape[0], raw.shape[0]), np.float32)
    launch(bf16_matmul_numba, out.size * raw.shape[1], raw, np.ascontiguousarray(x, np.float32), out)
    return out


def warmup_calls():
    yield "bf16_matmul", lambda: bf16_matmul(np.ones((4, 8), np.uint16), np.ones((1, 8), np.float32))
    yield "widen_rows", lambda: widen_rows(np.ones((4, 8), np.uint16))
