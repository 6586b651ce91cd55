"""MoonViT's block-diagonal self-attention: every image / video chunk attends only to itself.

Reference (the spec): the segment loop inside k25ref.moonvit.attention

    o_h[a:b] = softmax(q_h[a:b] k_h[a:b]^T / sqrt(Dh)) v_h[a:b]    for each segment [a, b)    [ViT; Kimi-VL §2.1]

(q, k after the 2-D RoPE). This kernel: one (head, query row) pair per parallel task, scores over the row's
own segment only, so no (n, n) score matrix is ever formed and each task owns its output row.
Checked by tests/test_kernels.py::test_segment_attention_matches_reference (also with NUMBA_DISABLE_JIT=1).
"""
import numpy as np

from k25ref.errors import MediaError
from k25ref.kernels import jit, launch, prange


def _segment_attention_loops(q, k, v, segment_of, bounds, scale, out):
    # q, k, v: (H, N, Dh) f32   segment_of: (N,) int64   bounds: (I, 2) int64 [start, end)  -> out: (H, N, Dh)
    H, N, Dh = q.shape
    for task in prange(H * N):
        h, n = task // N, task % N
        a, b = bounds[segment_of[n], 0], bounds[segment_of[n], 1]
        p = np.empty(b - a, np.float32)
        top = -np.inf
        for m in range(a, b):
            acc = np.float32(0.0)
            for d in range(Dh):
                acc += q[h, n, d] * k[h, m, d]
            p[m - a] = acc * scale
            top = max(top, p[m - a])
        total = np.float32(0.0)
        for m in range(b - a):
            p[m] = np.exp(p[m] - top)
            total += p[m]
        for d in range(Dh):
            out[h, n, d] = 0.0
        for m in range(a, b):
            pm = p[m - a] / total
            for d in range(Dh):
                out[h, n, d] += pm * v[h, m, d]


segment_attention_numba = jit(_segment_attention_loops, parallel=True)


def segment_attention(q, k, v, bounds):  # (H, N, Dh) x3, [(start, end)] -> (H, N, Dh) float32
    """Block-diagonal attention over the packed items; the kernel twin of moonvit.attention's segment loop."""
    H, N, Dh = q.shape
    b = np.asarray(bounds, np.int64).reshape(-1, 2)
    segment_of = np.repeat(np.arange(len(b)), b[:, 1] - b[:, 0])
    if segment_of.shape[0] != N:
        raise MediaError(f"segments {b.tolist()} do not tile the {N} packed patches")
    out = np.empty((H, N, Dh), np.float32)
    work = 2 * H * Dh * int(((b[:, 1] - b[:, 0]) ** 2).sum())
    launch(segment_attention_numba, work, *(np.ascontiguousarray(a, np.float32) for a in (q, k, v)), segment_of, b,
           np.float32(Dh ** -0.5), out)
    return out


def warmup_calls():
    x = np.ones((1, 4, 2), np.float32)
    yield "segment_attention", lambda: segment_attention(x, x, x, [(0, 1), (1, 4)])
