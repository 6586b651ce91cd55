"""The routed experts of one MoE layer in one call: tokens grouped by chosen expert, each chosen expert run
once on its group, its INT4 weights dequantized row by row and never materialised.

Reference (the spec): k25ref.moe.moe(u, idx, weights, expert, shared) without the shared expert, i.e.

    h_t = sum_{i chosen by t} g[t, i] * W_down_i (silu(W_gate_i u_t) * W_up_i u_t)         [DSV3 eq. 12]

with `expert(e)` = dequantize(...) of expert e's three INT4 matrices.
This kernel, in three steps:
  1. group   counting sort of the (token, slot) pairs by expert: pairs of expert e sit at
             order[start[e]:start[e+1]] (serial; T*A pairs);
  2. up      parallel over (expert, block of rows f) tasks: dequantize row f of gate_proj and up_proj once, dot them
             with every token of the group -> hidden[pair, f] = silu(gate) * up   (each task owns its f);
  3. down    parallel over blocks of output rows d: for every chosen expert, dequantize row d of down_proj once and
             add g[t, slot] * (row . hidden[pair]) into out[t, d]                  (each task owns its d).
Weights are bf16-rounded exactly as `int4.dequantize` does; accumulation in float32. A dequantized row
is used for four tokens per pass (prefill); a lone token (decoding) gets it straight inside the dot product.
(Dequantizing each expert once and calling BLAS was slower here: 197 vs 168 ms per small-config prefill
layer on one thread, and 1.3 s on two, where OpenBLAS and numba threads fight.)

The chosen experts come from the same budgeted weight cache as the reference's (`Weights.expert`), and are
stacked for each call (`stack_experts`): a copy of the packed bytes, small next to the arithmetic.
Checked by tests/test_kernels.py::test_moe_experts_matches_reference (also with NUMBA_DISABLE_JIT=1).
"""
import numpy as np

from k25ref.errors import ConfigError
from k25ref.int4 import Int4Weight
from k25ref.kernels import jit, launch, prange
from k25ref.kernels.int4_matvec import (ROWS_PER_TASK, dequantize_dot_numba, dequantize_row_numba, dots4_numba,
                                        split_nibbles_numba)


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


def _moe_experts_loops(u, idx, g, gate_p, gate_s, up_p, up_s, down_p, down_s, out):
    # u: (T, D) f32   idx, g: (T, A)   gate_p/up_p: (E, F, D/8) int32   gate_s/up_s: (E, F, D/G) f32
    # down_p: (E, D, F/8) int32   down_s: (E, D, F/G) f32   -> out: (T, D) f32 (overwritten)
    T, D = u.shape
    A = idx.shape[1]
    E, F = gate_p.shape[0], gate_p.shape[1]
    start, order = np.empty(E + 1, np.int64), np.empty(T * A, np.int64)
    group_by_expert_numba(idx, E, start, order)
    chosen = np.array([e for e in range(E) if start[e + 1] > start[e]], dtype=np.int64)   # (C,)
    C = chosen.shape[0]
    us = np.empty((T, D), np.float32)
    split_nibbles_numba(u, us)                                     # inputs in the kernel's split order
    hidden = np.empty((T * A, F), np.float32)                      # per (token, slot) pair, split order
    Wf, R = F // 8, ROWS_PER_TASK
    nf, nd = (F + R - 1) // R, (D + R - 1) // R                    # row blocks of the up and down steps
    for task in prange(C * nf):                                    # 2. gate/up: (expert, block of rows f)
        e, f0 = chosen[task // nf], (task % nf) * R
        n, pairs = start[e + 1] - start[e], order[start[e]:start[e + 1]]
        tokens = pairs // A                                        # (n,) who chose e
        wg, wu, s_w = np.empty(D, np.float32), np.empty(D, np.float32), np.empty(D // 8, np.float32)
        for f in range(f0, min(F, f0 + R)):
            col = (f % 8) * Wf + f // 8                            # f's place in split order
            if n == 1:                                             # one token (decoding): fused dequant + dot
                a_gate = dequantize_dot_numba(gate_p[e, f], gate_s[e, f], s_w, us[tokens[0]])
                a_up = dequantize_dot_numba(up_p[e, f], up_s[e, f], s_w, us[tokens[0]])
                hidden[pairs[0], col] = a_gate / (np.float32(1.0) + np.exp(-a_gate)) * a_up
                continue
            dequantize_row_numba(gate_p[e, f], gate_s[e, f], s_w, wg)
            dequantize_row_numba(up_p[e, f], up_s[e, f], s_w, wu)
            for b in range(0, n, 4):                               # four tokens per pass over the rows
                last = min(b + 3, n - 1)                           # a short tail repeats its last token
                q = (tokens[b], tokens[min(b + 1, last)], tokens[min(b + 2, last)], tokens[last])
                gate = dots4_numba(wg, us, q[0], q[1], q[2], q[3])
                up = dots4_numba(wu, us, q[0], q[1], q[2], q[3])
                for m in range(last - b + 1):
                    hidden[pairs[b + m], col] = gate[m] / (np.float32(1.0) + np.exp(-gate[m])) * up[m]
    for task in prange(nd):                                        # 3. down: a block of output rows d
        w, s_w = np.empty(F, np.float32), np.empty(Wf, np.float32)
        for d in range(task * R, min(D, task * R + R)):
            for t in range(T):
                out[t, d] = 0.0
            for c in range(C):
                e = chosen[c]
                n, pairs = start[e + 1] - start[e], order[start[e]:start[e + 1]]
                if n == 1:                                         # one token: fused dequant + dot
                    y = dequantize_dot_numba(down_p[e, d], down_s[e, d], s_w, hidden[pairs[0]])
                    out[pairs[0] // A, d] += g[pairs[0] // A, pairs[0] % A] * y
                    continue
                dequantize_row_numba(down_p[e, d], down_s[e, d], s_w, w)
                for b in range(0, n, 4):
                    last = min(b + 3, n - 1)
                    q = (pairs[b], pairs[min(b + 1, last)], pairs[min(b + 2, last)], pairs[last])
                    y4 = dots4_numba(w, hidden, q[0], q[1], q[2], q[3])
                    for m in range(last - b + 1):
                        out[q[m] // A, d] += g[q[m] // A, q[m] % A] * y4[m]


moe_experts_numba = jit(_moe_experts_loops, parallel=True)


def stack_experts(experts):  # [(gate, up, down) Int4Weight] * n -> six stacked arrays for the kernel
    """The chosen experts of one call, packed codes and scales stacked along a new first axis (expert k of the
    list is row k). Built per call from weights the budgeted cache holds, so the budget stays the only store."""
    mats = list(zip(*experts))                                                 # gate, up, down: n each
    for ws in mats:
        for w in ws:
            check(w, ws[0].packed.shape, ws[0].scale.shape[1])
    return tuple(np.stack([getattr(w, f) for w in ws]) for ws in mats for f in ("packed", "scale"))


def check(w: Int4Weight, packed_shape, n_groups):
    if w.packed.shape != packed_shape or w.scale.shape[1] != n_groups or w.group_size % 8:
        raise ConfigError(f"INT4 expert of shape {w.shape} (group {w.group_size}) does not fit the stacked "
                         f"layout {packed_shape}, {n_groups} groups")


def moe_experts(u, idx, g, stacked):  # (T, D), (T, A), (T, A) -> (T, D) float32
    """The routed part of `moe.moe` through the kernel (add the shared expert yourself). `stacked` is
    `stack_experts(...)`; idx holds rows of that stack (0..n-1), not global expert ids."""
    T, D = u.shape
    out = np.empty(u.shape, np.float32)
    work = idx.size * 3 * D * stacked[0].shape[1]                              # T*A*3*D*F multiply-adds
    launch(moe_experts_numba, work, np.ascontiguousarray(u, np.float32), np.ascontiguousarray(idx, np.int64),
           np.ascontiguousarray(g, np.float32), *stacked, out)
    return out


def warmup_calls():
    from k25ref.int4 import quantize
    ones = np.ones((16, 16), np.float32)
    experts = stack_experts([(quantize(ones, 8), quantize(ones, 8), quantize(ones, 8))] * 2)
    u, idx, g = np.ones((2, 16), np.float32), np.array([[0], [1]]), np.ones((2, 1), np.float32)
    yield "moe_experts", lambda: moe_experts(u, idx, g, experts)
