"""The router of DeepSeekMoE after its product: sigmoid affinities, group-limited top-k, mixing weights.

Reference (the spec): k25ref.moe.route(u, gate_weight, correction_bias, cfg)

    s[t, i] = sigmoid(u_t . e_i)                           the product: BLAS, as in the reference [DSV3 eq. 15]
    groups  = the topk_group groups with the best sum of their top 2 of s + b                      [DSV3 §2.1.2]
    idx[t]  = the A best experts by s + b inside those groups, best first
    g[t]    = route_scale * s[t, idx] / (sum s[t, idx] + 1e-20)        (if norm_topk_prob)
Ties go to the lower index, as in the reference's stable argsort.

This kernel: one pass per token over its E affinities, the selections by repeated maximum (A and topk_group
are small). The reference's dozen NumPy calls (sort, argsort, put_along_axis, repeat, where, take_along_axis)
cost ~40 us per decoded token and layer on a warm core and ~180 us between the MoE kernel's launches
(tools/bench.py's `small`, one thread), this one a few.
Checked by tests/test_kernels_decoder.py::test_route_matches_reference (also with NUMBA_DISABLE_JIT=1).
"""
import numpy as np

from k25ref.config import TextConfig
from k25ref.kernels import jit
from k25ref.moe import router_logits


def _select_loops(logits, bias, G, Gk, normalize, scale, idx, g):
    # logits: (T, E) = u W^T  bias: (E,)  -> idx: (T, A) int64, g: (T, A) float32
    T, E = logits.shape
    A, n = idx.shape[1], E // G                                      # n experts per group
    s, choice = np.empty(E, np.float32), np.empty(E, np.float32)
    score, allowed, taken = np.empty(G, np.float32), np.empty(G, np.bool_), np.empty(E, np.bool_)
    for t in range(T):
        for e in range(E):
            s[e] = np.float32(1) / (np.float32(1) + np.exp(-logits[t, e]))
            choice[e] = s[e] + bias[e]
            taken[e] = False
        for k in range(G):                                          # sum of each group's top 2 (n >= 2)
            first, second = -np.inf, -np.inf
            for e in range(k * n, (k + 1) * n):
                if choice[e] > first:
                    first, second = choice[e], first
                elif choice[e] > second:
                    second = choice[e]
            score[k] = first + second
            allowed[k] = False
        for _ in range(Gk):                                          # the Gk best groups
            best = -1
            for k in range(G):
                if not allowed[k] and (best < 0 or score[k] > score[best]):
                    best = k
            allowed[best] = True
        total = np.float32(0)
        for a in range(A):                                           # the A best experts in them, best first
            best = -1
            for e in range(E):
                if allowed[e // n] and not taken[e] and (best < 0 or choice[e] > choice[best]):
                    best = e
            taken[best] = True
            idx[t, a], g[t, a] = best, s[best]
            total += s[best]
        for a in range(A):
            w = g[t, a] / (total + np.float32(1e-20)) if normalize else g[t, a]
            g[t, a] = w * scale


select_numba = jit(_select_loops)


def route(u, gate_weight, correction_bias, cfg: TextConfig):  # (T, D), (E, D), (E,) -> (T, A) int64, (T, A) float32
    """k25ref.moe.route with the selection in this kernel: the same product, indices and weights."""
    logits = router_logits(u, gate_weight)                                      # (T, E)   as the reference
    T, A = u.shape[0], cfg.num_experts_per_tok
    idx, g = np.empty((T, A), np.int64), np.empty((T, A), np.float32)
    select_numba(logits, np.ascontiguousarray(correction_bias, np.float32), cfg.n_group, cfg.topk_group,
                 cfg.norm_topk_prob, np.float32(cfg.routed_scaling_factor), idx, g)
    return idx, g


def warmup_calls():
    args = (np.zeros((1, 4), np.float32), np.zeros(4, np.float32), 2, 1, True, np.float32(1),
            np.empty((1, 2), np.int64), np.empty((1, 2), np.float32))
    yield "moe_route", lambda: select_numba(*args)
