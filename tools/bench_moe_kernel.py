"""The routed-experts kernel of this tree against the one of an earlier commit, side by side in one process.

    python tools/bench_moe_kernel.py --base 51f326f --tokens 1,128
    python tools/bench_moe_kernel.py --base 51f326f --model /tmp/k25ref-bench/small   # whole model, tokens too

Kernel mode: the MoE layers of tools/bench.py's `small` shape (hidden 1024, 64 experts top-8, expert width
512, 7 MoE layers, random INT4 codes and bf16 scales, each layer's experts stacked as `weights.ExpertStack`
holds them), called with T tokens, old and new alternating, medians (and best) of --rounds. Model mode
(--model CKPT, e.g. a checkpoint tools/bench.py built): load_model once, then a prompt of 128 tokens and 16
decode steps per round, with the MoE kernel switched between the two versions; the greedy tokens must agree.
Then one prompt with the new kernel taken apart: each Numba kernel's launches (tools/bench.py's timers, wall
clock) and the rest.

Time is the calling thread's CPU time (`time.thread_time`), not the wall clock: on a shared machine, the time
the thread waits for a core is left out, what the code costs stays in. Run with NUMBA_NUM_THREADS=1 (the
kernels then run on the calling thread). --base REV: kernels/int4_matvec.py and kernels/moe_experts.py are
taken from git at REV, into a temporary folder, and compiled there.
"""
import importlib
import os
import subprocess
import sys
import tempfile
import time

import numpy as np

from k25ref.options import ArgumentParser, checkpoint_folder, lengths_arg, positive_int

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
E, A, D, F, G, LAYERS = 64, 8, 1024, 512, 32, 7          # tools/bench.py's small


def base_kernel(rev, folder):
    """moe_experts (with its int4_matvec) as of git revision rev, importable from folder."""
    def show(name):
        return subprocess.run(["git", "-C", ROOT, "show", f"{rev}:k25ref/kernels/{name}.py"], check=True,
                              capture_output=True, text=True).stdout
    with open(os.path.join(folder, "base_int4_matvec.py"), "w") as f:
        f.write(show("int4_matvec"))
    with open(os.path.join(folder, "base_moe_experts.py"), "w") as f:
        f.write(show("moe_experts").replace("from k25ref.kernels.int4_matvec import", "from base_int4_matvec import"))
    sys.path.insert(0, folder)
    return importlib.import_module("base_moe_experts")


def random_layers(rng):  # -> LAYERS x six stacked arrays: (E, F, D/8) codes, (E, F, D/G) scales, ... down
    def words(*shape):
        return rng.integers(-2 ** 31, 2 ** 31, shape, dtype=np.int64).astype(np.int32)

    def scales(*shape):                                                # bf16 values near 1e-2
        s = rng.random(shape, dtype=np.float32) * 0.02 + 0.005
        return (s.view(np.uint32) & np.uint32(0xFFFF0000)).view(np.float32)
    return [(words(E, F, D // 8), scales(E, F, D // G), words(E, F, D // 8), scales(E, F, D // G),
             words(E, D, F // 8), scales(E, D, F // G)) for _ in range(LAYERS)]


def kernel_rounds(kernels, T, rounds, rng, layers):
    """{name: [seconds per call of all layers]}, the kernels alternating (order reversed every round)."""
    u = rng.standard_normal((T, D), dtype=np.float32)
    idx = [np.stack([rng.choice(E, A, replace=False) for _ in range(T)]) for _ in range(LAYERS)]
    g = rng.random((T, A), dtype=np.float32)

    def run(kernel):
        t = time.thread_time()
        out = [kernel.moe_experts(u, idx[i], g, layers[i]) for i in range(LAYERS)]
        return time.thread_time() - t, out
    outs = {name: run(k)[1] for name, k in kernels.items()}             # compiles
    diff = max(float(np.abs(a - b).max() / np.abs(a).max()) for a, b in zip(*outs.values()))
    times = {name: [] for name in kernels}
    for r in range(rounds):
        for name, k in (list(kernels.items()) if r % 2 == 0 else list(kernels.items())[::-1]):
            times[name].append(run(k)[0])
    return times, diff


def model_rounds(kernels, path, rounds):
    """{name: [(prefill s, decode s per step, tokens)]}, the MoE kernel switched between the versions."""
    sys.path.insert(0, os.path.join(ROOT, "tools"))
    import bench
    from k25ref.kernels import moe_experts as live
    from k25ref.model import load_model
    functions = {name: k.moe_experts for name, k in kernels.items()}
    model, ids = load_model(path), bench.prompt_ids(path)

    def run(name, steps=16):
        live.moe_experts = functions[name]
        cache = model.new_cache()
        t = time.thread_time()
        tokens = [int(np.argmax(model.forward(ids, cache, absorbed=True, last_only=True, backend="numba")[-1]))]
        prefill, t = time.thread_time() - t, time.thread_time()
        for _ in range(steps):
            logits = model.forward(np.array([tokens[-1]]), cache, absorbed=True, last_only=True, backend="numba")
            tokens.append(int(np.argmax(logits[-1])))
        return prefill, (time.thread_time() - t) / steps, tokens
    for name in kernels:
        run(name, 2)                                                    # compiles, fills the weight cache
    runs = {name: [] for name in kernels}
    for r in range(rounds):
        for name in (list(kernels) if r % 2 == 0 else list(kernels)[::-1]):
            runs[name].append(run(name))
    live.moe_experts = functions["new"]
    with bench.time_kernels() as (clock, _):                            # where the new prompt's time goes
        t = time.perf_counter()                                         # (wall clock, as the kernels' timers)
        model.forward(ids, model.new_cache(), absorbed=True, last_only=True, backend="numba")
        total = time.perf_counter() - t
    shares = sorted(((s, f"{k} <- {c}") for (k, c), (_, s) in clock.items()), reverse=True)
    return runs, total, shares


def main():
    ap = ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--base", default="HEAD", help="git revision whose kernels are the 'old' ones (default: HEAD)")
    ap.add_argument("--tokens", type=lengths_arg, default="1,128",
                    help="comma-separated T of the kernel calls (default: 1,128)")
    ap.add_argument("--rounds", type=positive_int, default=21, help="old/new pairs per T (default: 21)")
    ap.add_argument("--model", type=checkpoint_folder,
                    help="a checkpoint folder: time the whole model's prompt and decode steps instead")
    a = ap.parse_args()
    from k25ref.kernels import moe_experts
    with tempfile.TemporaryDirectory() as folder:
        try:
            old = base_kernel(a.base, folder)
        except subprocess.CalledProcessError as e:
            ap.error(f"--base {a.base}: {e.stderr.strip().splitlines()[-1]}")
        kernels = {"old": old, "new": moe_experts}
        if a.model:
            runs, total, shares = model_rounds(kernels, a.model, a.rounds)
            print(f"one prompt of 128 with the new kernel, {1e3 * total:.0f} ms (wall clock):")
            for seconds, name in shares:
                print(f"  {name:60s} {1e3 * seconds:8.1f} ms {seconds / total:6.1%}")
            print(f"  {'the rest (NumPy, BLAS, Python)':60s} {1e3 * (total - sum(s for s, _ in shares)):8.1f} ms")
            med = {n: np.median(np.array([r[:2] for r in rs]), axis=0) for n, rs in runs.items()}
            same = all(o[2] == n[2] for o, n in zip(runs["old"], runs["new"]))
            print(f"{os.path.basename(a.model)}: prompt of 128 old {1e3 * med['old'][0]:.0f} ms, new "
                  f"{1e3 * med['new'][0]:.0f} ms: {med['old'][0] / med['new'][0]:.3f}x; decode step old "
                  f"{1e3 * med['old'][1]:.2f} ms, new {1e3 * med['new'][1]:.2f} ms: "
                  f"{med['old'][1] / med['new'][1]:.3f}x; same tokens: {same}")
            return
        rng = np.random.default_rng(0)
        layers = random_layers(rng)
        for T in (int(t) for t in a.tokens.split(",")):
            times, diff = kernel_rounds(kernels, T, a.rounds, rng, layers)
            old, new = (np.median(times[n]) for n in ("old", "new"))
            best = min(times["old"]) / min(times["new"])
            print(f"T={T:4d}: old {1e3 * old:8.2f} ms  new {1e3 * new:8.2f} ms  old/new {old / new:.3f}x "
                  f"(best {best:.3f}x)  new {LAYERS * T * A * 3 * D * F / new / 1e9:5.2f} G weight-token "
                  f"products/s  largest difference {diff:.1e} of max|out|")


if __name__ == "__main__":
    main()
