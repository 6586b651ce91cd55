"""Where a prompt's bf16 products should go: the bf16 kernel's 4x4 tiles or BLAS on a widened copy.

    python tools/bench_short_rows.py                                  # the grid: T inputs x rows of I weights
    python tools/bench_short_rows.py --model /tmp/k25ref-bench/tiny   # a whole 128-token prompt, rule off / on

Grid mode: for each T (inputs) and I (weights per row), three matrices of O = 128, 256, 512 rows with random
bf16 weights; prints the kernel's time over widening (`widen_rows`) + BLAS's (above 1: BLAS is faster),
medians of --rounds alternating pairs. Model mode (a checkpoint, e.g. one tools/bench.py built): load_model
once, then a prompt of 128 tokens with `engine.SHORT_ROWS` switched off (BLAS only from BLAS_ROWS inputs) and
on, alternating; the greedy token after the prompt must agree. The rule these figures set is `engine.blas_pays`.

Time is the calling thread's CPU time (`time.thread_time`): on a shared machine the time spent waiting for a
core is left out. Run with NUMBA_NUM_THREADS=1; BLAS is held to one thread, as the kernels' bundle holds it.
"""
import os
import sys
import time

import numpy as np

from k25ref.options import ArgumentParser, checkpoint_folder, lengths_arg, positive_int

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def alternate(functions, rounds):  # {name: f} -> {name: median CPU seconds}, order reversed every round
    for f in functions.values():
        f()                                                             # compiles, warms the caches
    times = {name: [] for name in functions}
    for r in range(rounds):
        for name, f in (list(functions.items()) if r % 2 == 0 else list(functions.items())[::-1]):
            t = time.thread_time()
            f()
            times[name].append(time.thread_time() - t)
    return {name: float(np.median(v)) for name, v in times.items()}


def grid(tokens, lengths, rounds):
    from k25ref.checkpoint import f32_to_bf16
    from k25ref.kernels.bf16_matvec import bf16_matmul, widen_rows
    rng = np.random.default_rng(0)
    print("kernel time / BLAS time (O = 128 / 256 / 512 rows); above 1: BLAS is faster")
    for I in lengths:
        cells = []
        for T in tokens:
            ratios = []
            for O in (128, 256, 512):
                raw = f32_to_bf16(rng.standard_normal((O, I), dtype=np.float32))
                x = rng.standard_normal((T, I), dtype=np.float32)
                med = alternate({"kernel": lambda: bf16_matmul(raw, x), "blas": lambda: x @ widen_rows(raw).T},
                                rounds)
                ratios.append(med["kernel"] / med["blas"])
            cells.append(f"T={T}: " + "/".join(f"{r:.2f}" for r in ratios))
        print(f"I={I:5d}  " + "  ".join(cells))


def model(path, rounds):
    sys.path.insert(0, os.path.join(ROOT, "tools"))
    import bench
    from k25ref import engine
    from k25ref.model import load_model
    m, ids = load_model(path), bench.prompt_ids(path)
    rules, tokens = {"off": (1 << 62, 0), "on": engine.SHORT_ROWS}, {}

    def prompt(name):
        engine.SHORT_ROWS = rules[name]
        tokens.setdefault(name, set()).add(int(np.argmax(m.forward(ids, m.new_cache(), absorbed=True,
                                                                   last_only=True)[-1])))
    med = alternate({name: (lambda name=name: prompt(name)) for name in rules}, rounds)
    engine.SHORT_ROWS = rules["on"]
    print(f"{os.path.basename(path.rstrip(os.sep))}: prompt of {len(ids)} rule off {1e3 * med['off']:.1f} ms, "
          f"on {1e3 * med['on']:.1f} ms: {med['off'] / med['on']:.3f}x; same token: "
          f"{tokens['off'] == tokens['on'] and len(tokens['on']) == 1}")


def main():
    ap = ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tokens", type=lengths_arg, default="8,16,32,64,128", help="comma-separated T (grid)")
    ap.add_argument("--lengths", type=lengths_arg, default="128,192,256,320,384,512,768,1024",
                    help="comma-separated I, weights per row (grid)")
    ap.add_argument("--rounds", type=positive_int, default=21, help="alternating pairs per cell (default: 21)")
    ap.add_argument("--model", type=checkpoint_folder,
                    help="a checkpoint folder: a whole prompt with the rule off and on instead")
    a = ap.parse_args()
    from k25ref.engine import blas_threads
    with blas_threads(1):
        if a.model:
            model(a.model, a.rounds)
        else:
            grid([int(t) for t in a.tokens.split(",")], [int(i) for i in a.lengths.split(",")], a.rounds)


if __name__ == "__main__":
    main()
