"""Where the routed-experts kernel spends a prompt: the kernel timed with one part removed at a time.

    NUMBA_NUM_THREADS=1 python tools/bench_moe_parts.py --shapes tiny,h512-e32,small

For each shape, one MoE layer of random INT4 experts (bf16 scales) and random routing, T tokens (a prompt),
through copies of kernels/moe_experts.py with one part taken out by editing its source: the 4x4 tiles (the
multiply-adds), the row dequantization, the SiLU, the scatter of the down products into the output. A part's
share is the time the kernel saves without it; the shares overlap, so they need not add up to 100% (and a
small one can come out below 0 on a noisy machine); the tiles' rate is the multiply-adds (T A 3 D F) over the
time they take by that measure. The variants give wrong numbers: they are for timing only. Variants take
turns in one process, the order reversed every round; time is the calling thread's CPU time
(`time.thread_time`). docs/kernels.md shows a run.
"""
import importlib
import os
import sys
import tempfile
import time

import numpy as np

from k25ref.options import ArgumentParser, names_arg, positive_int

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHAPES = {"tiny": (16, 4, 256, 128), "h512-e32": (32, 4, 512, 320), "h768-e48": (48, 6, 768, 384),
          "small": (64, 8, 1024, 512)}                  # tools/bench.py's: experts, top-k, hidden, expert width
UP_TILES = ("                m_n = tile4_numba(wg, us, D, tokens, b, gate)\n"
            "                tile4_numba(wu, us, D, tokens, b, up)\n")
DOWN_TILE = "                    m_n = tile4_numba(w, hidden, F, pairs, b, y)\n"
UP_ROWS = ("                dequantize_row_numba(gp[k], s_w, wg[r])\n"
           "                dequantize_row_numba(upp[k], s_up, wu[r])\n")
DOWN_ROWS = "                    dequantize_row_numba(dp[k], s_w, w[r])\n"
BUFFERS = {"gate, up = np.empty((4, 4), np.float32), np.empty((4, 4), np.float32)":   # filled buffers: no NaN
           "gate, up = np.ones((4, 4), np.float32), np.ones((4, 4), np.float32)",     # or subnormal timings
           "wg, wu = np.empty((4, D + PAD), np.float32), np.empty((4, D + PAD), np.float32)":
           "wg, wu = np.ones((4, D + PAD), np.float32), np.ones((4, D + PAD), np.float32)",
           "w, y = np.empty((4, F + PAD), np.float32), np.empty((4, 4), np.float32)":
           "w, y = np.ones((4, F + PAD), np.float32), np.ones((4, 4), np.float32)"}
PARTS = {
    "4x4 tiles": {UP_TILES: "                m_n = min(4, n - b)\n",
                  DOWN_TILE: "                    m_n = min(4, n - b)\n"},
    "row dequantization": {UP_ROWS: "                pass\n", DOWN_ROWS: "                    pass\n"},
    "SiLU": {"= silu_numba(gate[r, m]) * up[r, m]": "= gate[r, m] * up[r, m]"},
    "scatter into out": {"out[token_of[p], d + r] += weight_of[p] * y[r, m]": "out[0, d + r] += y[r, m]"},
}


def variants(folder):  # -> {name: module}: the kernel as it is, and one copy per part removed
    with open(os.path.join(ROOT, "k25ref", "kernels", "moe_experts.py")) as f:
        source = f.read()
    modules = {}
    for k, (name, edits) in enumerate([("whole kernel", {}), *PARTS.items()]):
        text = source
        for old, new in ({**edits, **BUFFERS} if edits else {}).items():
            if old not in text:
                raise SystemExit(f"k25ref: error: bench_moe_parts.py: kernels/moe_experts.py no longer has "
                                 f"{old.strip()!r}: update PARTS for {name}")
            text = text.replace(old, new)
        with open(os.path.join(folder, f"moe_variant_{k}.py"), "w") as f:
            f.write(text)
        modules[name] = importlib.import_module(f"moe_variant_{k}")
    return modules


def layer(rng, E, A, D, F, T, G=32):  # one MoE layer's stacked experts, tokens, routing
    def words(*shape):
        return rng.integers(-2 ** 31, 2 ** 31, shape, dtype=np.int64).astype(np.int32)

    def scales(*shape):                                                # bf16 values near 1e-2
        s = rng.random(shape, dtype=np.float32) * 0.02 + 0.005
        return (s.view(np.uint32) & np.uint32(0xFFFF0000)).view(np.float32)
    experts = (words(E, F, D // 8), scales(E, F, D // G), words(E, F, D // 8), scales(E, F, D // G),
               words(E, D, F // 8), scales(E, D, F // G))
    idx = np.stack([rng.choice(E, A, replace=False) for _ in range(T)])
    return rng.standard_normal((T, D), dtype=np.float32), idx, rng.random((T, A), dtype=np.float32), experts


def shares(modules, args, rounds):  # -> {name: median seconds}
    for m in modules.values():
        m.moe_experts(*args)                                           # compiles
    times = {name: [] for name in modules}
    for r in range(rounds):
        for name, m in (list(modules.items()) if r % 2 == 0 else list(modules.items())[::-1]):
            t = time.thread_time()
            m.moe_experts(*args)
            times[name].append(time.thread_time() - t)
    return {name: float(np.median(v)) for name, v in times.items()}


def main():
    ap = ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--shapes", type=names_arg(list(SHAPES)), default="tiny,h512-e32,small",
                    help=f"comma-separated, of: {', '.join(SHAPES)} (default: tiny,h512-e32,small)")
    ap.add_argument("--tokens", type=positive_int, default=128, help="T, the prompt's tokens (default: 128)")
    ap.add_argument("--rounds", type=positive_int, default=40, help="runs of every variant (default: 40)")
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        sys.path.insert(0, folder)
        modules = variants(folder)
        print("| shape (D, F, experts top-k) | whole kernel | " + " | ".join(PARTS) + " | the tiles' rate |")
        print("|---|---:|" + "---:|" * (len(PARTS) + 1))
        for shape in a.shapes.split(","):
            E, A, D, F = SHAPES[shape]
            med = shares(modules, layer(np.random.default_rng(0), E, A, D, F, a.tokens), a.rounds)
            whole = med["whole kernel"]
            cells = [f"{round(100 * (whole - med[name]) / whole)}%" for name in PARTS]
            rate = a.tokens * A * 3 * D * F / max(whole - med["4x4 tiles"], 1e-9) / 1e9   # multiply-adds / s
            print(f"| {shape} ({D}, {F}, {E} top-{A}) | {1e3 * whole:.2f} ms | " + " | ".join(cells) +
                  f" | {rate:.0f} G/s |")


if __name__ == "__main__":
    main()
