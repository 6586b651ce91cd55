"""The routed experts of one MoE layer in one call: tokens grouped by chosen expert, each chosen expert run
once on its group, its INT4 weights dequantized row by row and never materialised.

Reference (the spec): k25ref.moe.moe(u, idx, weights, expert, shared) without the shared expert, i.e.

    h_t = sum_{i chosen by t} g[t, i] * W_down_i (silu(W_gate_i u_t) * W_up_i u_t)         [DSV3 eq. 12]

with `expert(e)` = dequantize(...) of expert e's three INT4 matrices.
This kernel, in three steps:
  1. group   counting sort of the (token, slot) pairs by expert: pairs of expert e sit at
             order[start[e]:start[e+1]] (serial; T*A pairs);
  2. up      parallel over (expert, block of rows f) tasks: dequantize rows f of gate_proj and up_proj once, dot
             them with every token of the group -> hidden[pair, f] = silu(gate) * up   (each task owns its f);
  3. down    parallel over blocks of 64 output rows d: expert by expert, dequantize rows d of down_proj once
             and add g[t, slot] * (row . hidden[pair]) into out[t, d]                  (each task owns its d).
             Experts in the outer loop: each expert's hidden rows are read once per block, not once per four
             rows (a tenth less time for the down step of a 128-token prompt at the benchmark's small shapes).
Weights are bf16-rounded exactly as `int4.dequantize` does; accumulation in float32. With several tokens
(prefill) four dequantized rows meet four tokens per pass (`tile4`: a group's last one or two by `tile42`,
not padded to four). A lone token (decoding) gets each weight straight inside the dot product, two rows per
pass (gate's and up's row f; down's rows d and d + 1), the rows AHEAD further on prefetched: an expert's
rows are short (64 or 128 words) and come from memory, so a pass's fixed costs and the wait at each 4 kB
page would otherwise take a quarter of the time (docs/kernels.md, "Short rows").

The chosen experts come from the same budgeted weight cache as the reference's (`Weights.expert`), and are
handed to the kernel as stacked arrays of all the layer's experts, filled as they are first read
(`weights.ExpertStack`: idx holds global expert ids), or, under a memory budget, the chosen ones gathered for
each call (`gather_experts`: lists of the cached arrays, small ones stacked, which is faster).
Checked by tests/test_kernels.py::test_moe_experts_matches_reference (also with NUMBA_DISABLE_JIT=1).
"""
import numpy as np

from k25ref.errors import ConfigError
from k25ref.int4 import Int4Weight
from k25ref.kernels import array_list, jit, launch, prange
from k25ref.kernels.expf import EXP_MAX, exp_numba
from k25ref.kernels.int4_matvec import (PAD, ROWS_PER_TASK, SCALE_MAX, dequantize_dot2_numba,
                                        dequantize_row_numba, expand_scales_numba, kernel_exact, prefetch_row_numba,
                                        split_nibbles_numba, tile4_numba)


DOWN_ROWS = 64     # output rows per down-step task: every chosen expert's hidden rows are read once per task
AHEAD = 4          # rows: a one-token pass starts loading the rows it will read this many rows later (prefetch)


def _group_by_expert_loops(idx, E, start, order):  # (T, A) int64 -> start: (E+1,), order: (T*A,) pair ids t*A+a
    """Counting sort: pair p = t*A + a chose expert idx[t, a]; pairs of expert e keep token order."""
    T, A = idx.shape
    start[:] = 0
    for t in range(T):
        for a in range(A):
            start[idx[t, a] + 1] += 1
    for e in range(E):
        start[e + 1] += start[e]
    fill = start[:E].copy()
    for t in range(T):
        for a in range(A):
            e = idx[t, a]
            order[fill[e]] = t * A + a
            fill[e] += 1


group_by_expert_numba = jit(_group_by_expert_loops)


def _silu_loops(a):  # float32 -> a * sigmoid(a), e^-a by the polynomial of kernels/expf.py
    """A call to the C library's exp per hidden unit cost ~3% of a prompt; the polynomial is inlined.
    For a < -88 the clamp leaves a / e^88, below 1e-36 instead of a * e^a: zero either way at float32 scale."""
    return a / (np.float32(1.0) + exp_numba(min(-a, EXP_MAX)))


silu_numba = jit(_silu_loops)


def _split_col_loops(f, Wf):  # row f of an up projection -> its column in split (nibble-major) order
    return (f % 8) * Wf + f // 8


split_col = jit(_split_col_loops)


def _gate_up_one_token_loops(gp, gs, upp, ups, f0, f1, x, s_gate, s_up, h):
    # one expert's gate/up rows f0..f1-1: (F, D/8) int32, (F, D/G) f32 x 2, x: (D,) split, s_*: (D/8,) scratch
    # -> h: (F,) split order, h[f] = silu(gate_f . x) * (up_f . x)
    """Gate's and up's row f in one pass (`dequantize_dot2`): each input loaded once for both."""
    F = gp.shape[0]
    Wf = F // 8
    for f in range(f0, f1):
        if f + AHEAD < F:
            prefetch_row_numba(gp[f + AHEAD], gs[f + AHEAD])
            prefetch_row_numba(upp[f + AHEAD], ups[f + AHEAD])
        expand_scales_numba(gs[f], s_gate)
        expand_scales_numba(ups[f], s_up)
        a_gate, a_up = dequantize_dot2_numba(gp[f], upp[f], s_gate, s_up, x)
        h[split_col(f, Wf)] = silu_numba(a_gate) * a_up


gate_up_one_token_numba = jit(_gate_up_one_token_loops)


def _down_one_token_loops(dp, ds, d0, d1, x, gt, s0, s1, y):
    # one expert's down rows d0..d1-1: (D, F/8) int32, (D, F/G) f32, x: (F,) split, gt: its gate weight,
    # s0, s1: (F/8,) scratch -> y[d] += gt * (down_d . x)
    """Two rows per pass (`dequantize_dot2`): the rows are short (F/8 words), so a pass's fixed costs count.
    d1 - d0 is even: D is a multiple of 8 (gate's rows are packed words) and so is DOWN_ROWS."""
    for d in range(d0, d1, 2):
        if d + AHEAD + 1 < dp.shape[0]:
            prefetch_row_numba(dp[d + AHEAD], ds[d + AHEAD])
            prefetch_row_numba(dp[d + AHEAD + 1], ds[d + AHEAD + 1])
        expand_scales_numba(ds[d], s0)
        expand_scales_numba(ds[d + 1], s1)
        y_d, y_next = dequantize_dot2_numba(dp[d], dp[d + 1], s0, s1, x)
        y[d] += gt * y_d
        y[d + 1] += gt * y_next


down_one_token_numba = jit(_down_one_token_loops)


def _moe_experts_loops(u, idx, g, gate_p, gate_s, up_p, up_s, down_p, down_s, out):
    # u: (T, D) f32   idx, g: (T, A)   gate_p/up_p: E x (F, D/8) int32   gate_s/up_s: E x (F, D/G) f32
    # down_p: E x (D, F/8) int32   down_s: E x (D, F/G) f32   (typed lists of arrays, or stacked arrays)
    # -> out: (T, D) f32 (overwritten)
    T, D = u.shape
    A = idx.shape[1]
    E, F = len(gate_p), gate_p[0].shape[0]
    start, order = np.empty(E + 1, np.int64), np.empty(T * A, np.int64)
    group_by_expert_numba(idx, E, start, order)
    chosen = np.array([e for e in range(E) if start[e + 1] > start[e]], dtype=np.int64)   # (C,)
    C = chosen.shape[0]
    us = np.empty((T, D + PAD), np.float32)
    split_nibbles_numba(u, us)                                     # inputs in the kernel's split order
    hidden = np.empty((T * A, F + PAD), np.float32)                # per (token, slot) pair, split order
    token_of = np.arange(T * A) // A                               # pair p = t*A + a -> t, and its weight g[t, a]:
    weight_of = g.reshape(T * A)                                   # no division in the loops below
    Wf, R = F // 8, ROWS_PER_TASK
    nf, nd = (F + R - 1) // R, (D + DOWN_ROWS - 1) // DOWN_ROWS    # row blocks of the up and down steps
    for task in prange(C * nf):                                    # 2. gate/up: (expert, block of rows f)
        e, f0 = chosen[task // nf], (task % nf) * R
        n, pairs = start[e + 1] - start[e], order[start[e]:start[e + 1]]
        gp, gs, upp, ups = gate_p[e], gate_s[e], up_p[e], up_s[e]  # once per task: a typed list's item costs a call
        s_w, s_up = np.empty(D // 8, np.float32), np.empty(D // 8, np.float32)
        if n == 1:                                                 # one token (decoding): fused dequant + dot
            gate_up_one_token_numba(gp, gs, upp, ups, f0, min(F, f0 + R), us[token_of[pairs[0]], :D], s_w, s_up,
                                    hidden[pairs[0]])
            continue
        tokens = pairs // A                                        # (n,) who chose e
        wg, wu = np.empty((4, D + PAD), np.float32), np.empty((4, D + PAD), np.float32)   # rows padded: see PAD
        gate, up = np.empty((4, 4), np.float32), np.empty((4, 4), np.float32)
        for f in range(f0, min(F, f0 + R), 4):                    # four rows f at a time
            rows = min(4, F - f)
            for r in range(4):                                     # a short tail repeats its last row
                k = f + min(r, rows - 1)
                expand_scales_numba(gs[k], s_w)
                expand_scales_numba(ups[k], s_up)
                dequantize_row_numba(gp[k], s_w, wg[r])
                dequantize_row_numba(upp[k], s_up, wu[r])
            for b in range(0, n, 4):                               # four tokens per pass over the rows
                m_n = tile4_numba(wg, us, D, tokens, b, gate)
                tile4_numba(wu, us, D, tokens, b, up)
                for r in range(rows):
                    for m in range(m_n):
                        hidden[pairs[b + m], split_col(f + r, Wf)] = silu_numba(gate[r, m]) * up[r, m]
    for task in prange(nd):                                        # 3. down: a block of output rows d
        d0, d1 = task * DOWN_ROWS, min(D, task * DOWN_ROWS + DOWN_ROWS)
        w, y = np.empty((4, F + PAD), np.float32), np.empty((4, 4), np.float32)
        s_w, s_next = np.empty(Wf, np.float32), np.empty(Wf, np.float32)
        for t in range(T):
            for d in range(d0, d1):
                out[t, d] = 0.0
        for c in range(C):                                         # expert by expert: its hidden rows stay in cache
            e = chosen[c]
            n, pairs = start[e + 1] - start[e], order[start[e]:start[e + 1]]
            dp, ds = down_p[e], down_s[e]
            if n == 1:                                             # one token: fused dequant + dot
                p = pairs[0]
                down_one_token_numba(dp, ds, d0, d1, hidden[p, :F], weight_of[p], s_w, s_next, out[token_of[p]])
                continue
            for d in range(d0, d1, 4):                             # four rows d at a time
                rows = min(4, d1 - d)
                for r in range(4):
                    k = d + min(r, rows - 1)
                    expand_scales_numba(ds[k], s_w)
                    dequantize_row_numba(dp[k], s_w, w[r])
                for b in range(0, n, 4):
                    m_n = tile4_numba(w, hidden, F, pairs, b, y)
                    for r in range(rows):
                        for m in range(m_n):
                            p = pairs[b + m]
                            out[token_of[p], d + r] += weight_of[p] * y[r, m]


moe_experts_numba = jit(_moe_experts_loops, parallel=True)


STACK_BYTES = 2 << 20     # chosen experts up to this size are stacked (copied), above it listed


def gather_experts(experts, stack=None):  # [(gate, up, down) Int4Weight] * n -> six sequences for the kernel
    """The chosen experts of one call, packed codes and scales per matrix (entry k is expert k of the argument),
    as numba typed lists of the cached arrays (nothing copied) or, for small experts, stacked into new arrays:
    copying a few kB costs less than building a typed list, copying megabytes more (`tools/bench.py`
    --profile tiny / small shows the share of either in a decoded token). `stack`: force one or the
    other (tests); None picks by size (STACK_BYTES). The kernel indexes either the same way."""
    mats = list(zip(*experts))                                                 # gate, up, down: n each
    for ws in mats:
        for w in ws:
            check(w, ws[0].packed.shape, ws[0].scale.shape[1])
    if stack is None:
        stack = sum(w.packed.nbytes + w.scale.nbytes for ws in mats for w in ws) <= STACK_BYTES
    gather = np.stack if stack else array_list
    return tuple(gather([np.ascontiguousarray(getattr(w, f)) for w in ws]) for ws in mats for f in ("packed", "scale"))


def check(w: Int4Weight, packed_shape, n_groups):
    if w.packed.shape != packed_shape or w.scale.shape[1] != n_groups or w.group_size % 8:
        raise ConfigError(f"INT4 expert of shape {w.shape} (group {w.group_size}) does not match the other chosen "
                          f"experts' layout {packed_shape}, {n_groups} groups")
    if not kernel_exact(w):
        raise ConfigError(f"INT4 expert scales are {w.scale_dtype}, largest {w.scale_max:g}: the kernel reproduces "
                          f"int4.dequantize only for BF16 scales below {SCALE_MAX:g}; run these experts through "
                          "the NumPy reference (moe.moe)")


def moe_experts(u, idx, g, experts):  # (T, D), (T, A), (T, A) -> (T, D) float32
    """The routed part of `moe.moe` through the kernel (add the shared expert yourself). `experts` is
    `gather_experts(...)`, idx holding positions in that list (0..n-1), or `weights.ExpertStack.arrays`,
    idx holding global expert ids."""
    T, D = u.shape
    out = np.empty(u.shape, np.float32)
    work = idx.size * 3 * D * experts[0][0].shape[0]                           # T*A*3*D*F multiply-adds
    launch(moe_experts_numba, work, np.ascontiguousarray(u, np.float32), np.ascontiguousarray(idx, np.int64),
           np.ascontiguousarray(g, np.float32), *experts, out)
    return out


def warmup_calls():
    from k25ref.int4 import quantize
    ones = np.ones((16, 16), np.float32)
    experts = gather_experts([(quantize(ones, 8), quantize(ones, 8), quantize(ones, 8))] * 2)
    u, idx, g = np.ones((2, 16), np.float32), np.array([[0], [1]]), np.ones((2, 1), np.float32)
    yield "moe_experts", lambda: moe_experts(u, idx, g, experts)
