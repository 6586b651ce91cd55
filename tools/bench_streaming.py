"""Benchmark: decode a full-width K2.5 checkpoint larger than the memory budget, from disk.

Builds (once) a synthetic checkpoint with the real tensor shapes (`make_full_width`), then in child processes
(so peak RSS is the decode's own) runs greedy decoding with a memory budget and once without, and prints:
checkpoint bytes, peak RSS, bytes read per token against the active-set lower bound, seconds per token against
the disk-read bound measured in the same run, and the expert cache hit rate. `--markdown` prints the same as a
docs section, plus what the real 595 GB checkpoint needs at common disk speeds (computed from its index shape).

    python tools/bench_streaming.py --layers 3 --experts 384 --budget 4GB --tokens 6
"""
import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time

import numpy as np

PROMPT = 1                  # the first token; greedy decoding from there


def disk_bandwidth(folder, nbytes=2 << 30):
    """Cold sequential read speed (bytes/s): evict the shards from the page cache, then pread 16 MiB blocks."""
    shards = sorted(os.path.join(folder, f) for f in os.listdir(folder) if f.endswith(".safetensors"))
    evict(folder)
    done, t0 = 0, time.perf_counter()
    buf = bytearray(16 << 20)
    for path in shards:
        fd = os.open(path, os.O_RDONLY)
        try:
            while done < nbytes and (n := os.preadv(fd, [buf], done)) > 0:
                done += n
        finally:
            os.close(fd)
        if done >= nbytes:
            break
    return done / (time.perf_counter() - t0)


def evict(folder):
    """Drop a checkpoint's pages from the page cache, so the next reads come from disk."""
    for f in os.listdir(folder):
        fd = os.open(os.path.join(folder, f), os.O_RDONLY)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        os.close(fd)


def rss():
    """Resident bytes of this process now (Linux /proc)."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def child(folder, budget, tokens, out):
    """Decode greedily; write per-token figures and the last logits; report peak RSS. The budget is for the
    whole process: the model gets what the interpreter, NumPy and the compiled kernels leave of it."""
    import k25ref
    from k25ref.kernels import warmup
    warmup()
    evict(folder)
    baseline = rss()
    model = k25ref.load_model(folder, memory_budget=None if budget is None else budget - baseline)
    cache, token, rows = model.new_cache(), PROMPT, []
    for _ in range(tokens):                                     # the first token meets an empty (cold) cache
        before, t0 = model.stats.snapshot(), time.perf_counter()
        logits = model.forward(np.array([token]), cache, last_only=True, absorbed=True, backend="numba")
        token = int(np.argmax(logits[-1]))
        after = model.stats.snapshot()
        hits = sum(after["expert_hits"].values()) - sum(before["expert_hits"].values())
        uses = hits + sum(after["expert_misses"].values()) - sum(before["expert_misses"].values())
        rows.append({"seconds": time.perf_counter() - t0, "bytes": after["bytes_read"] - before["bytes_read"],
                     "io_seconds": after["io_seconds"] - before["io_seconds"], "expert_hit_rate": hits / max(uses, 1)})
    np.save(out + ".npy", logits[-1])
    with open(out + ".json", "w") as f:
        json.dump({"tokens": rows, "peak_rss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
                   "baseline_rss": baseline, "working_set": model.working_set, "cache_budget": model.cache.budget}, f)


def run_child(folder, budget, tokens):
    out = tempfile.mktemp(prefix="k25ref-bench-")
    subprocess.run([sys.executable, __file__, "--child", folder, str(budget or 0), str(tokens), out], check=True)
    with open(out + ".json") as f:
        result = json.load(f)
    result["logits"] = np.load(out + ".npy")
    os.remove(out + ".json")
    os.remove(out + ".npy")
    return result


def main():
    from k25ref.options import parse_size
    from k25ref.make_tiny import make_full_width
    from k25ref.summary import summarize
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dir", default=os.path.join(tempfile.gettempdir(), "k25ref-full-width"))
    ap.add_argument("--layers", type=int, default=3, help="text layers (the first is dense)")
    ap.add_argument("--experts", type=int, default=384)
    ap.add_argument("--budget", default="4GB")
    ap.add_argument("--tokens", type=int, default=6, help="tokens decoded, the first from an empty cache")
    ap.add_argument("--no-eager", action="store_true", help="skip the unbounded comparison run")
    ap.add_argument("--markdown", action="store_true")
    a = ap.parse_args()
    folder = os.path.join(a.dir, f"L{a.layers}-E{a.experts}")
    if not os.path.exists(os.path.join(folder, "config.json")):
        make_full_width(folder, a.layers, a.experts, progress=True)
    s = summarize(folder)
    bw = disk_bandwidth(folder)
    budget = parse_size(a.budget)
    stream = run_child(folder, budget, a.tokens)
    eager = None if a.no_eager else run_child(folder, None, a.tokens)
    lower = s["bytes_read_per_decoded_token"]
    rows = stream["tokens"]
    cold, warm = rows[0], rows[1:] or rows
    figures = {
        "checkpoint_bytes": s["bytes_total"], "budget_bytes": budget, "peak_rss_bytes": stream["peak_rss"],
        "active_set_bytes_per_token": lower, "disk_bytes_per_s": bw,
        "cold_token_bytes": cold["bytes"], "cold_ratio_to_active_set": cold["bytes"] / lower,
        "warm_token_bytes": float(np.mean([r["bytes"] for r in warm])),
        "cold_token_seconds": cold["seconds"], "warm_token_seconds": float(np.mean([r["seconds"] for r in warm])),
        "disk_bound_seconds_per_token": lower / bw,
        "io_seconds_per_token": float(np.mean([r["io_seconds"] for r in rows])),
        "expert_hit_rate": float(np.mean([r["expert_hit_rate"] for r in warm])),
        "max_rel_err_vs_eager": (float(np.abs(stream["logits"] - eager["logits"]).max()
                                       / np.abs(eager["logits"]).max()) if eager else None),
        "eager_peak_rss_bytes": eager["peak_rss"] if eager else None,
        "baseline_rss_bytes": stream["baseline_rss"], "working_set_bytes": stream["working_set"],
        "cache_budget_bytes": stream["cache_budget"],
    }
    real = summarize_real()
    print(report(figures, real, a, markdown=a.markdown))


def summarize_real():
    """The real checkpoint's sizes, from its config and tensor table (no file needed)."""
    import shutil
    from k25ref.make_tiny import preset
    from k25ref.config import from_hf
    from k25ref.summary import summarize
    from k25ref.weights import expected_tensors
    d = tempfile.mkdtemp()
    try:
        hub = preset("full")
        with open(os.path.join(d, "config.json"), "w") as f:
            json.dump(hub, f)
        names = expected_tensors(from_hf(hub))
        with open(os.path.join(d, "model.safetensors.index.json"), "w") as f:
            json.dump({"weight_map": {n: "absent.safetensors" for n in names}}, f)
        return summarize(d)
    finally:
        shutil.rmtree(d)


def report(f, real, a, markdown):
    g = 1e9
    lines = [
        f"full-width synthetic checkpoint: {a.layers} layers ({a.layers - 1} MoE), {a.experts} experts, "
        f"{f['checkpoint_bytes'] / g:.1f} GB on disk; budget {f['budget_bytes'] / g:.1f} GB",
        f"the budget is for the whole process: {f['baseline_rss_bytes'] / g:.2f} GB interpreter and kernels, "
        f"{f['working_set_bytes'] / g:.2f} GB working set of one forward pass, {f['cache_budget_bytes'] / g:.2f} GB "
        f"weight cache",
        f"peak RSS (OS, streaming decode): {f['peak_rss_bytes'] / g:.2f} GB"
        + (f"   (unbounded run: {f['eager_peak_rss_bytes'] / g:.2f} GB)" if f["eager_peak_rss_bytes"] else ""),
        f"bytes read per token: cold {f['cold_token_bytes'] / g:.2f} GB = {f['cold_ratio_to_active_set']:.2f}x the "
        f"active-set lower bound ({f['active_set_bytes_per_token'] / g:.2f} GB); warm {f['warm_token_bytes'] / g:.2f} GB",
        f"seconds per token: cold {f['cold_token_seconds']:.2f}, warm {f['warm_token_seconds']:.2f}; disk-read bound "
        f"{f['disk_bound_seconds_per_token']:.2f} at the measured {f['disk_bytes_per_s'] / g:.2f} GB/s; "
        f"time in reads {f['io_seconds_per_token']:.2f} s/token",
        f"expert cache hit rate (warm tokens): {f['expert_hit_rate']:.0%}",
        f"logits vs the unbounded path: max relative error {f['max_rel_err_vs_eager']:.2e}"
        if f["max_rel_err_vs_eager"] is not None else "logits vs the unbounded path: not run",
        "",
        f"the real K2.5 checkpoint: {real['bytes_total'] / g:.0f} GB, {real['params_total'] / 1e9:.0f} B parameters, "
        f"{real['params_active_per_token'] / 1e9:.1f} B active; a decoded token reads "
        f"{real['bytes_read_per_decoded_token'] / g:.1f} GB with nothing cached:",
    ]
    for gbps in (0.5, 1.0, 3.0, 7.0, 14.0):
        lines.append(f"  at {gbps:>4} GB/s: {real['bytes_read_per_decoded_token'] / (gbps * g):.1f} s/token (reads alone)")
    return "\n".join(("    " + x if markdown and x else x) for x in lines)


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        folder, budget, tokens, out = sys.argv[2:6]
        child(folder, int(budget) or None, int(tokens), out)
    else:
        main()
