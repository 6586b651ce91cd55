"""MLA attention in latent space (absorbed), over the latent cache: the attention hot loop of decoding.

Reference (the spec): k25ref.mla.attend_absorbed(q_nope, q_rope, c_kv, k_rope, w, cfg, scale)

    q_lat[t, h]  = W_UK[h]^T q_nope[t, h]                                    (Ckv,)   W_UK absorbed
    score[t,h,s] = scale * (q_lat[t, h] . c_kv[s] + q_rope[t, h] . k_rope[s])   s <= S - T + t (causal)
    o[t, h]      = W_UV[h] sum_s softmax_s(score[t, h, s]) c_kv[s]           (Dv,)    W_UV absorbed
                                                                             [DSV2 §2.1.2, "absorb"]
This kernel: one (head, token) pair per parallel task, so each task owns its output slice; the cache is read
in place, never expanded to per-head keys and values. float32 throughout, softmax shifted by its max.
Checked by tests/test_kernels.py::test_mla_absorbed_matches_reference (also with NUMBA_DISABLE_JIT=1).
"""
import numpy as np

from k25ref.kernels import jit, launch, prange
from k25ref.kernels.expf import exp_numba


def _mla_absorbed_loops(q_nope, q_rope, c_kv, k_rope, wkv_b, scale, out):
    # q_nope: (T, H, Dn)  q_rope: (T, H, Dr)  c_kv: (S, Ckv)  k_rope: (S, Dr)  wkv_b: (H, Dn+Dv, Ckv)
    # -> out: (T, H*Dv)
    T, H, Dn = q_nope.shape
    S, Ckv = c_kv.shape
    Dr, Dv = q_rope.shape[2], wkv_b.shape[1] - Dn
    for task in prange(H * T):
        h, t = task // T, task % T
        q_lat = np.zeros(Ckv, np.float32)
        for d in range(Dn):                                            # W_UK^T q_nope
            qd = q_nope[t, h, d]
            for c in range(Ckv):
                q_lat[c] += qd * wkv_b[h, d, c]
        n = S - T + t + 1                                              # visible positions
        p = np.empty(n, np.float32)
        top = -np.inf
        for s in range(n):
            acc = np.float32(0.0)
            for c in range(Ckv):
                acc += q_lat[c] * c_kv[s, c]
            for r in range(Dr):
                acc += q_rope[t, h, r] * k_rope[s, r]
            p[s] = acc * scale
            top = max(top, p[s])
        total = np.float32(0.0)
        for s in range(n):
            p[s] = exp_numba(p[s] - top)                            # the polynomial: this loop vectorizes
            total += p[s]
        o_lat = np.zeros(Ckv, np.float32)
        for s in range(n):
            ps = p[s] / total
            for c in range(Ckv):
                o_lat[c] += ps * c_kv[s, c]
        for v in range(Dv):                                            # W_UV o_lat
            acc = np.float32(0.0)
            for c in range(Ckv):
                acc += wkv_b[h, Dn + v, c] * o_lat[c]
            out[t, h * Dv + v] = acc


mla_absorbed_numba = jit(_mla_absorbed_loops, parallel=True)


def attend_absorbed(q_nope, q_rope, c_kv, k_rope, w, cfg, scale):  # -> (T, H*Dv); same signature as the reference
    T, H, Dn, Dv = q_nope.shape[0], cfg.num_attention_heads, cfg.qk_nope_head_dim, cfg.v_head_dim
    S, Ckv, Dr = c_kv.shape[0], c_kv.shape[1], q_rope.shape[2]
    out = np.empty((T, H * Dv), np.float32)
    launch(mla_absorbed_numba, T * H * (2 * S * (Ckv + Dr) + (Dn + Dv) * Ckv),
           np.ascontiguousarray(q_nope, np.float32), np.ascontiguousarray(q_rope, np.float32),
           np.ascontiguousarray(c_kv, np.float32), np.ascontiguousarray(k_rope, np.float32),
           np.ascontiguousarray(w.kv_b_proj, np.float32).reshape(H, Dn + Dv, -1), np.float32(scale), out)
    return out


def warmup_calls():
    T, H, Dn, Dr, Dv, S, C = 1, 2, 4, 2, 4, 3, 8
    args = (np.ones((T, H, Dn), np.float32), np.ones((T, H, Dr), np.float32), np.ones((S, C), np.float32),
            np.ones((S, Dr), np.float32), np.ones((H, Dn + Dv, C), np.float32), np.float32(0.5),
            np.empty((T, H * Dv), np.float32))
    yield "mla_absorbed", lambda: mla_absorbed_numba(*args)
