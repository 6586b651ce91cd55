"""INT4 matrix-vector (and small matrix) product, the hot loop of decoding: y = W x with W kept packed.

Reference (the spec): k25ref.int4.dequantize(w) @ x.T   -- NumPy; materialises W as (O, I) float32
This kernel:          never materialises W: each task dequantizes one row at a time into a buffer of I
                      floats, then takes its dot product with every input row (with one input row, T = 1,
                      the weights go straight into the dot product, unstored). Parallel over blocks of
                      output rows, so no two threads write the same output.

Same numbers as the reference: every weight is first rounded to bfloat16 exactly as `int4.dequantize`
rounds it (bf16(q * scale), nearest, ties to even), then multiplied and accumulated in float32. The
rounding is exact for bf16 scales below SCALE_MAX (all real ones, `kernel_exact`); `int4_matmul` sends
other weights to the reference.

Nibble-split order. Word k of a row packs inputs 8k..8k+7, input 8k+j in nibble j. The loops run over
words, sixteen per SIMD vector, and nibble j of sixteen consecutive words meets sixteen consecutive inputs
only if rows and x are kept in *split order*:

    natural index i = 8k + j   <->   split index j*W + k          (W = I / 8 words per row)

x is permuted once per call (`split_nibbles`); a dot product does not care about order.

Checked by tests/test_kernels.py::test_int4_matmul_matches_reference (also with NUMBA_DISABLE_JIT=1).
"""
import numpy as np

from k25ref.errors import ConfigError
from k25ref.int4 import Int4Weight, linear
from k25ref.kernels import fma, jit, launch, prange, prefetch

ROWS_PER_TASK = 16            # output rows per parallel task (one row buffer per task)
PAD = 16                      # floats (64 bytes) after each row of a row buffer or input copy: see `_tile44_loops`


def _bf16_product_loops(q, s, s65537):  # float32 code q, scale s, 65537 s -> bf16(q * s) as float32
    """The product p = q s is exact in float32 (4 x 8 significant bits); rounding it to bfloat16 keeps its
    leading 8 bits. Veltkamp's split does that in three float operations: t = (2^16 + 1) p, then
    t - (t - p) is p rounded to 8 bits, to nearest. t is formed as q * (65537 s), the same number (65537 s =
    2^16 s + s, whose two parts do not overlap for an 8-bit s: 24 bits, exact), and t - p as one multiply-add.
    tests/test_kernels.py checks the result against `int4.dequantize`'s rounding (ties to even) for every
    bf16 scale below SCALE_MAX and every code.
    Compiled without fast-math, so the operations happen as written: contraction or reassociation could
    rewrite the split (t - (t - p) is p in real arithmetic)."""
    t = q * s65537
    return t - fma(-q, s, t)


bf16_product_numba = jit(_bf16_product_loops, exact=True)

SCALE_MAX = 2.0 ** 100     # below it t = 65537 q s cannot overflow (it would from about 2^109)


def kernel_exact(w: Int4Weight):
    """True if the kernels reproduce `int4.dequantize` exactly for w: bf16 scales (K2.5's) below SCALE_MAX in
    magnitude. Callers send other weights (F16/F32 scales, huge ones) to the NumPy reference."""
    return w.scale_dtype == "BF16" and w.scale_max < SCALE_MAX


def _code_loops(word, j):  # int32 word, nibble j in 0..3 -> float32 signed code q = nibble - 8
    """The nibble stays in place, bits 4j..4j+3; OR-ing in the exponent of 2^(23-4j) makes the float
    2^(23-4j) + nibble, exactly, and q = (2^(23-4j) + nibble) - (2^(23-4j) + 8), exact too. One bit
    operation (mask and OR fuse) and one subtraction. Nibbles 4..7 are nibbles 0..3 of word >> 16."""
    bits = np.int32(np.int32(word & np.int32(15 << 4 * j)) | np.int32((150 - 4 * j) << 23))
    return bits.view(np.float32) - np.float32(2.0 ** (23 - 4 * j) + 8)


code_numba = jit(_code_loops)


def _nibble_weight_loops(word, j, s, s65537):  # -> bf16(W) for nibble j (0..3) of word, as float32
    return bf16_product_numba(code_numba(word, j), s, s65537)


nibble_weight_numba = jit(_nibble_weight_loops)


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


def _dequantize_row_loops(words, s_w, w):  # (W,) int32, s_w: (W,) = expand_scales(scale) -> w: (I,) split order
    """w[j*W + k] = bf16((nibble j of words[k] - 8) * scale[(8k + j) // G]).
    The row functions take their scales expanded by the caller (`expand_scales`): with the expansion inside
    them, LLVM compiled their loops worse (docs/kernels.md, "Short rows")."""
    W = words.shape[0]
    for k in range(W):
        low, high, s, s65537 = words[k], words[k] >> np.int32(16), s_w[k], s_w[k] * np.float32(65537.0)
        for j in range(4):
            w[j * W + k] = nibble_weight_numba(low, j, s, s65537)
            w[(j + 4) * W + k] = nibble_weight_numba(high, j, s, s65537)


dequantize_row_numba = jit(_dequantize_row_loops)


def _dequantize_dot_loops(words, s_w, xs):  # (W,) int32, (W,) expand_scales(scale), (I,) split -> float32
    """sum_i bf16(W[o, i]) x[i] for one row, without storing the row (the T = 1 case of decoding).
    Each word is loaded once for its eight weights, each input once. Nibbles 0..3 and 4..7 go into two sums,
    so that the multiply-adds of one do not wait for those of the other. Scales expanded by the caller."""
    W = words.shape[0]
    x = xs.reshape(8, W)                                            # x[j, k]: input 8k + j
    acc_low = acc_high = np.float32(0.0)
    for k in range(W):
        low, high, s, s65537 = words[k], words[k] >> np.int32(16), s_w[k], s_w[k] * np.float32(65537.0)
        for j in range(4):
            acc_low += nibble_weight_numba(low, j, s, s65537) * x[j, k]
            acc_high += nibble_weight_numba(high, j, s, s65537) * x[j + 4, k]
    return acc_low + acc_high


dequantize_dot_numba = jit(_dequantize_dot_loops)


def _prefetch_row_loops(words, scale):  # (W,) int32, (I/G,) f32: a row's cache lines, loads started
    for k in range(0, words.shape[0], 16):                          # 16 words = 64 bytes = one cache line
        prefetch(words, k)
    for g in range(0, scale.shape[0], 16):
        prefetch(scale, g)


prefetch_row_numba = jit(_prefetch_row_loops)


def _dequantize_dot2_loops(words0, words1, s0, s1, xs):  # (W,) int32 x 2, their scales per word (W,) x 2, (I,) split
    """Two rows' dot products with the same input in one pass: (sum_i bf16(W0[i]) x[i], sum_i bf16(W1[i]) x[i]).
    Each input is loaded once for both rows, and the loop's fixed costs (setup, the final reductions) are paid
    once per two rows: with short rows (the MoE experts' 64 or 128 words) they are a large part of a row's time
    (docs/kernels.md, "Short rows"). Four running sums: nibbles 0..3 and 4..7 of each row."""
    W = words0.shape[0]
    x = xs.reshape(8, W)
    low0 = high0 = low1 = high1 = np.float32(0.0)
    for k in range(W):
        a, b, sa, ta = words0[k], words0[k] >> np.int32(16), s0[k], s0[k] * np.float32(65537.0)
        c, d, sc, tc = words1[k], words1[k] >> np.int32(16), s1[k], s1[k] * np.float32(65537.0)
        for j in range(4):
            low0 += nibble_weight_numba(a, j, sa, ta) * x[j, k]
            high0 += nibble_weight_numba(b, j, sa, ta) * x[j + 4, k]
            low1 += nibble_weight_numba(c, j, sc, tc) * x[j, k]
            high1 += nibble_weight_numba(d, j, sc, tc) * x[j + 4, k]
    return low0 + high0, low1 + high1


dequantize_dot2_numba = jit(_dequantize_dot2_loops)


def _tile44_loops(w, x, n, t0, t1, t2, t3, acc):  # (4, >=n), (T, >=n) -> acc[r, m] = w[r, :n] . x[t_m, :n]
    """Four weight rows against four input rows: sixteen running sums, so every weight loaded feeds four
    multiply-adds and every input loaded feeds four (prompt processing; `tools/bench.py` prefill).
    The eight rows are read at the same offsets, so rows a multiple of 4 kB apart (1024 floats: the hidden
    size of the benchmark's small shape) fall in the same set of the L1 cache and evict each other: the
    kernels allocate their buffers with PAD floats after each row, and pass the length n."""
    a00 = a01 = a02 = a03 = a10 = a11 = a12 = a13 = np.float32(0.0)
    a20 = a21 = a22 = a23 = a30 = a31 = a32 = a33 = np.float32(0.0)
    for i in range(n):
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


def _tile42_loops(w, x, n, t0, t1, acc):  # (4, >=n), (T, >=n) -> acc[r, m] = w[r, :n] . x[t_m, :n], m < 2
    """Four weight rows against two input rows: a group's last one or two tokens, which a `tile44` would
    pad with repeats (the multiply-adds bound the tiles: half of them would be thrown away)."""
    a00 = a01 = a10 = a11 = a20 = a21 = a30 = a31 = np.float32(0.0)
    for i in range(n):
        w0, w1, w2, w3 = w[0, i], w[1, i], w[2, i], w[3, i]
        x0, x1 = x[t0, i], x[t1, i]
        a00 += w0 * x0
        a01 += w0 * x1
        a10 += w1 * x0
        a11 += w1 * x1
        a20 += w2 * x0
        a21 += w2 * x1
        a30 += w3 * x0
        a31 += w3 * x1
    acc[0, 0], acc[0, 1], acc[1, 0], acc[1, 1] = a00, a01, a10, a11
    acc[2, 0], acc[2, 1], acc[3, 0], acc[3, 1] = a20, a21, a30, a31


tile42_numba = jit(_tile42_loops)


def _tile4_loops(w, x, n, tokens, b, acc):  # tokens[b:] (at least one) -> acc[r, m] = w[r, :n] . x[tokens[b + m], :n]
    """Four weight rows against the next four tokens of a group (fewer at its end: two, or one repeated, by
    `tile42`, three with the last repeated). Returns how many were taken."""
    left = tokens.shape[0] - b
    if left <= 2:
        tile42_numba(w, x, n, tokens[b], tokens[b + left - 1], acc)
        return left
    tile44_numba(w, x, n, tokens[b], tokens[b + 1], tokens[b + 2], tokens[min(b + 3, tokens.shape[0] - 1)], acc)
    return min(left, 4)


tile4_numba = jit(_tile4_loops)


def _tile_rows_loops(w, x, n, o, rows, acc, out):  # (4, >=n) rows o..o+rows-1, (T, >=n) -> out[:, o:o+rows]
    """Four widened weight rows against every input, four inputs per pass (`tile44`); a short tail of inputs
    repeats its last one, and only the real rows and inputs are written."""
    T = x.shape[0]
    for t in range(0, T, 4):
        last = min(t + 3, T - 1)
        tile44_numba(w, x, n, t, min(t + 1, last), min(t + 2, last), last, acc)
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
        w, s_w, acc = np.empty((4, I + PAD), np.float32), np.empty(W, np.float32), np.empty((4, 4), np.float32)
        for o in range(task * ROWS_PER_TASK, min(O, (task + 1) * ROWS_PER_TASK), 4):
            rows = min(4, O - o)
            if T == 1:                                              # decoding: dequantize inside the dot
                for r in range(rows):
                    expand_scales_numba(scale[o + r], s_w)
                    out[0, o + r] = dequantize_dot_numba(packed[o + r], s_w, xs[0])
                continue
            for r in range(4):                                      # once per row, reused by all T inputs
                k = o + min(r, rows - 1)                            # a short tail repeats its last row
                expand_scales_numba(scale[k], s_w)
                dequantize_row_numba(packed[k], s_w, w[r])
            tile_rows_numba(w, xs, I, o, rows, acc, out)


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
    if not kernel_exact(w):
        return linear(np.asarray(x, np.float32), w)
    out = np.empty((x.shape[0], w.shape[0]), np.float32)
    launch(int4_matmul_numba, out.size * w.shape[1], np.ascontiguousarray(w.packed),
           np.ascontiguousarray(w.scale, np.float32), split_nibbles(x), out)
    return out


def warmup_calls():
    from k25ref.int4 import quantize
    w = quantize(np.ones((8, 32), np.float32))
    yield "int4_matmul", lambda: int4_matmul(w, np.ones((2, 32), np.float32))
