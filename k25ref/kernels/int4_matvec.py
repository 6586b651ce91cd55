"""INT4 matrix-vector (and small matrix) product, the hot loop of decoding: y = W x with W kept packed.

Reference (the spec): k25ref.int4.dequantize(w) @ x.T   -- NumPy; materialises W as (O, I) float32
This kernel:          never materialises W: each task dequantizes one row at a time into a buffer of I
                      floats, then takes its dot product with every input row (with one input row, T = 1,
                      the weights go straight into the dot product, unstored). Parallel over blocks of
                      output rows, so no two threads write the same output.

Same numbers as the reference: every weight is first rounded to bfloat16 exactly as `int4.dequantize`
rounds it (bf16(q * scale), nearest, ties to even), then multiplied and accumulated in float32.

Nibble-split order. Word k of a row packs inputs 8k..8k+7, input 8k+j in nibble j. Unpacking nibble j of
every word is one shift over a contiguous array, so the kernel keeps rows in *split order*:

    natural index i = 8k + j   <->   split index j*W + k          (W = I / 8 words per row)

and permutes x the same way once per call (`split_nibbles`); a dot product does not care about order.

Checked by tests/test_kernels.py::test_int4_matmul_matches_reference (also with NUMBA_DISABLE_JIT=1).
"""
import numpy as np

from k25ref.errors import ConfigError
from k25ref.int4 import Int4Weight
from k25ref.kernels import jit, launch, prange

ROWS_PER_TASK = 16            # output rows per parallel task (one row buffer per task)


def _bf16_round_loops(v):  # float32 -> float32 rounded to bfloat16 (nearest, ties to even)
    """Add 0x7FFF plus the lowest kept bit, then clear the low 16 bits: k25ref.checkpoint.f32_to_bf16.
    Every step is cast back to uint32: numba widens integer arithmetic to 64 bits, which halves the SIMD width."""
    u = np.float32(v).view(np.uint32)
    odd = np.uint32(np.uint32(u >> np.uint32(16)) & np.uint32(1))
    u = np.uint32(np.uint32(u + np.uint32(0x7FFF)) + odd)
    return np.uint32(u & np.uint32(0xFFFF0000)).view(np.float32)


bf16_round_numba = jit(_bf16_round_loops)


def _code_loops(word, shift):  # int32 word, nibble shift -> float32 signed code q = nibble - 8
    """The nibble goes into the low mantissa bits of 2^23, so the float is 2^23 + nibble, exactly; then
    q = (2^23 + nibble) - (2^23 + 8), exact too. One bit operation (mask and OR fuse) where an int-to-float
    conversion takes two: 7% off a 2048x7168 matvec."""
    bits = np.int32(np.int32((word >> shift) & np.int32(15)) | np.int32(0x4B000000))
    return bits.view(np.float32) - np.float32(8388616.0)


code_numba = jit(_code_loops)


def _expand_scales_loops(scale, s_w):  # (I/G,) -> s_w: (W,) one scale per word
    """One scale per word, so the loops over words below run without a division and vectorize.
    K2.5's groups are four words (G = 32): written as four stores, the loop costs 0.1 ms per 2048x7168
    matrix; as a loop of one store per word it cost 1.3 ms, half the time of the whole product."""
    WG = s_w.shape[0] // scale.shape[0]                              # words per scale group (G / 8)
    if WG == 4:
        for g in range(scale.shape[0]):
            s = scale[g]
            s_w[4 * g], s_w[4 * g + 1], s_w[4 * g + 2], s_w[4 * g + 3] = s, s, s, s
        return
    for g in range(scale.shape[0]):
        for k in range(g * WG, g * WG + WG):
            s_w[k] = scale[g]


expand_scales_numba = jit(_expand_scales_loops)


def _dequantize_row_loops(words, scale, s_w, w):  # (W,) int32, (I/G,) f32, s_w: (W,) scratch -> w: (I,) split order
    """w[j*W + k] = bf16((nibble j of words[k] - 8) * scale[(8k + j) // G])."""
    W = words.shape[0]
    expand_scales_numba(scale, s_w)
    for j in range(8):
        shift = np.int32(4 * j)
        for k in range(W):
            w[j * W + k] = bf16_round_numba(code_numba(words[k], shift) * s_w[k])


dequantize_row_numba = jit(_dequantize_row_loops)


def _dequantize_dot_loops(words, scale, s_w, xs):  # (W,) int32, (I/G,) f32, (W,) scratch, (I,) split -> float32
    """sum_i bf16(W[o, i]) x[i] for one row, without storing the row (the T = 1 case of decoding)."""
    W = words.shape[0]
    expand_scales_numba(scale, s_w)
    acc = np.float32(0.0)
    for j in range(8):
        shift = np.int32(4 * j)
        for k in range(W):
            acc += bf16_round_numba(code_numba(words[k], shift) * s_w[k]) * xs[j * W + k]
    return acc


dequantize_dot_numba = jit(_dequantize_dot_loops)


def _tile44_loops(w, x, t0, t1, t2, t3, acc):  # (4, I), (T, I) -> acc: (4, 4), acc[r, m] = w[r] . x[t_m]
    """Four weight rows against four input rows: sixteen running sums, so every weight loaded feeds four
    multiply-adds and every input loaded feeds four (prompt processing; `tools/bench.py` prefill)."""
    a00 = a01 = a02 = a03 = a10 = a11 = a12 = a13 = np.float32(0.0)
    a20 = a21 = a22 = a23 = a30 = a31 = a32 = a33 = np.float32(0.0)
    for i in range(w.shape[1]):
        w0, w1, w2, w3 = w[0, i], w[1, i], w[2, i], w[3, i]
        x0, x1, x2, x3 = x[t0, i], x[t1, i], x[t2, i], x[t3, i]
        a00 += w0 * x0
        a01 += w0 * x1
        a02 += w0 * x2
        a03 += w0 * x3
        a10 += w1 * x0
        a11 += w1 * x1
        a12 += w1 * x2
        a13 += w1 * x3
        a20 += w2 * x0
        a21 += w2 * x1
        a22 += w2 * x2
        a23 += w2 * x3
        a30 += w3 * x0
        a31 += w3 * x1
        a32 += w3 * x2
        a33 += w3 * x3
    acc[0, 0], acc[0, 1], acc[0, 2], acc[0, 3] = a00, a01, a02, a03
    acc[1, 0], acc[1, 1], acc[1, 2], acc[1, 3] = a10, a11, a12, a13
    acc[2, 0], acc[2, 1], acc[2, 2], acc[2, 3] = a20, a21, a22, a23
    acc[3, 0], acc[3, 1], acc[3, 2], acc[3, 3] = a30, a31, a32, a33


tile44_numba = jit(_tile44_loops)


def _tile_rows_loops(w, x, o, rows, acc, out):  # (4, I) rows o..o+rows-1, (T, I) -> out[:, o:o+rows]
    """Four widened weight rows against every input, four inputs per pass (`tile44`); a short tail of inputs
    repeats its last one, and only the real rows and inputs are written."""
    T = x.shape[0]
    for t in range(0, T, 4):
        last = min(t + 3, T - 1)
        tile44_numba(w, x, t, min(t + 1, last), min(t + 2, last), last, acc)
        for r in range(rows):
            for m in range(last - t + 1):
                out[t + m, o + r] = acc[r, m]


tile_rows_numba = jit(_tile_rows_loops)


def _split_nibbles_loops(x, xs):  # (T, I) -> xs: (T, I), xs[t, j*W + k] = x[t, 8k + j]
    T, I = x.shape
    W = I // 8
    for t in range(T):
        for k in range(W):
            for j in range(8):
                xs[t, j * W + k] = x[t, 8 * k + j]


split_nibbles_numba = jit(_split_nibbles_loops)


def _int4_matmul_loops(packed, scale, xs, out):  # (O, W) int32, (O, I/G) f32, (T, I) f32 split -> out (T, O)
    """out[t, o] = sum_i bf16(W[o, i]) xs[t, i], rows dequantized four at a time, float32 accumulation."""
    O, W = packed.shape
    T, I = xs.shape
    for task in prange((O + ROWS_PER_TASK - 1) // ROWS_PER_TASK):
        w, s_w, acc = np.empty((4, I), np.float32), np.empty(W, np.float32), np.empty((4, 4), np.float32)
        for o in range(task * ROWS_PER_TASK, min(O, (task + 1) * ROWS_PER_TASK), 4):
            rows = min(4, O - o)
            if T == 1:                                              # decoding: dequantize inside the dot
                for r in range(rows):
                    out[0, o + r] = dequantize_dot_numba(packed[o + r], scale[o + r], s_w, xs[0])
                continue
            for r in range(4):                                      # once per row, reused by all T inputs
                k = o + min(r, rows - 1)                            # a short tail repeats its last row
                dequantize_row_numba(packed[k], scale[k], s_w, w[r])
            tile_rows_numba(w, xs, o, rows, acc, out)


int4_matmul_numba = jit(_int4_matmul_loops, parallel=True)


def check_layout(w: Int4Weight):
    """The kernel needs whole words and whole groups: I % 8 == 0 and G % 8 == 0."""
    O, I = w.shape
    if I % 8 or w.group_size % 8 or w.packed.shape != (O, I // 8):
        raise ConfigError(f"INT4 kernel needs I and G multiples of 8 (shape {w.shape}, group {w.group_size})")


def split_nibbles(x):  # (T, I) -> (T, I) float32 in split order
    x = np.ascontiguousarray(x, dtype=np.float32)
    xs = np.empty_like(x)
    split_nibbles_numba(x, xs)
    return xs


def int4_matmul(w: Int4Weight, x):  # Int4Weight (O, I), (T, I) -> (T, O) float32
    """y = x W^T with W packed; the kernel twin of `dequantize(w) @ x.T` (transposed)."""
    check_layout(w)
    out = np.empty((x.shape[0], w.shape[0]), np.float32)
    launch(int4_matmul_numba, out.size * w.shape[1], np.ascontiguousarray(w.packed),
           np.ascontiguousarray(w.scale, np.float32), split_nibbles(x), out)
    return out


def warmup_calls():
    from k25ref.int4 import quantize
    w = quantize(np.ones((8, 32), np.float32))
    yield "int4_matmul", lambda: int4_matmul(w, np.ones((2, 32), np.float32))
