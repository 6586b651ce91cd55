"""llama.cpp against k25ref: the tables of docs/conformance.md, measured by `k25ref conform`'s library.

    pip install -e ".[peer]"                                    # gguf + llama-cpp-python (builds llama.cpp)
    python tools/conform_llama_cpp.py                           # committed cases + the bench "small" shape
    python tools/conform_llama_cpp.py --cases yarn-groups --shapes ""     # quicker

For every committed goldens case that deepseek2 can hold (plain-bias has attention biases) and every bench
shape (tools/bench.py SHAPES, random ids drawn like the goldens'), each checkpoint is exported with
`k25ref.gguf_export` (dense f32) and run by llama.cpp with experts f32 / bf16 / q4_0 and KV cache f32 / f16.
Per run: the worst logits relative error and cosine over the input lengths, argmax agreement, the first
block outside the bars (in forward order, over all lengths), greedy tokens equal before the first
difference. Then the quantization table: on the same INT4 codes, (a) the weights: how many of bf16(q * s)
differ from the exact q * s that a Q4_0 block holds; (b) k25ref with the exact product against k25ref with
compressed-tensors' bf16 rounding; (c) llama.cpp's Q4_0 x Q8_0 against k25ref.
"""
import argparse
import dataclasses
import os
import platform
import sys
import tempfile

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "tools"))

from k25ref import conform as cf  # noqa: E402
from k25ref.gguf_export import export_gguf  # noqa: E402
from k25ref.int4 import dequantize  # noqa: E402
from k25ref.options import ArgumentParser, positive_int  # noqa: E402
from k25ref.model import load_model  # noqa: E402
from k25ref.weights import layer_prefix  # noqa: E402

GOLDENS = os.path.join(ROOT, "tests", "goldens")
VARIANTS = [("f32", "f32"), ("f32", "f16"), ("bf16", "f32"), ("q4_0", "f32"), ("q4_0", "f16")]


def checkpoints(cases, shapes, workdir):
    """-> [(label, checkpoint folder, inputs)]."""
    out = []
    for case in cases:
        folder, inputs = cf.golden_case(os.path.join(GOLDENS, case))
        out.append((case, folder, inputs))
    for shape in shapes:
        from bench import build
        folder = build(shape, workdir)
        out.append((f"bench {shape}", folder, cf.random_inputs(load_model(folder).cfg)))
    return out


def summary(report, cfg):
    """One table row's figures from a conform report (cfg: the text config, for the blocks' forward order)."""
    rows = report["lengths"]
    departures = [r["first_departure"]["name"] for r in rows if r["first_departure"]]
    order = cf.forward_order(cfg) + ["logits"]
    first = min(departures, key=order.index) if departures else "none"
    g = report["greedy"]
    greedy = "-" if g is None else f"{g['equal_prefix']}/{g['steps']}" + (
        "" if g["first_difference"] is None else f" (margin {g['margin_at_difference']:.1e})")
    flips = sum(sum(r["router_sets_differ"].values()) for r in rows)
    return (f"{max(r['logits_rel'] for r in rows):.2e} | {min(r['cosine_min'] for r in rows):.6f} | "
            f"{sum(r['argmax_equal'] for r in rows)}/{sum(r['positions'] for r in rows)} | {first} | {flips} | "
            f"{greedy}")


def exact_product(model):
    """The same model with each INT4 weight dequantized to the exact q * scale (no bf16 rounding): what a Q4_0
    block holds when its scale fits float16."""
    int4 = model.weights.int4
    model.weights.int4 = lambda prefix: dataclasses.replace(int4(prefix), scale_dtype="F32")
    return model


def weight_rounding(model):
    """-> (share of expert weights where bf16(q * s) != q * s, largest |difference| / |q * s| there)."""
    t, differ, total, worst = model.cfg.text, 0, 0, 0.0
    for i in range(t.num_hidden_layers):
        if not t.is_moe_layer(i):
            continue
        for e in range(t.n_routed_experts):
            for k in range(3):
                w = model.weights.int4(f"{layer_prefix(i)}mlp.experts.{e}.{('gate_proj', 'up_proj', 'down_proj')[k]}.")
                exact = dequantize(dataclasses.replace(w, scale_dtype="F32"))          # q * s, unrounded
                rounded = dequantize(w)
                d = rounded != exact
                differ, total = differ + int(d.sum()), total + d.size
                if d.any():
                    worst = max(worst, float((np.abs(rounded - exact)[d] / np.abs(exact[d])).max()))
    return differ / total, worst


def main():
    parser = ArgumentParser(prog="conform_llama_cpp.py", description=__doc__,
                            formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", default="yarn-groups,many-groups,dense-stack,k25-shape")
    parser.add_argument("--shapes", default="small", help="bench shapes (tools/bench.py), comma-separated")
    parser.add_argument("--threads", type=positive_int, default=2)
    parser.add_argument("--workdir", default=os.path.join(tempfile.gettempdir(), "k25ref-bench"))
    args = parser.parse_args()
    import llama_cpp
    split = lambda s: [x for x in s.split(",") if x]                          # noqa: E731
    print(f"llama-cpp-python {llama_cpp.__version__}, {args.threads} threads, Python {platform.python_version()}, "
          f"numpy {np.__version__}\n")
    print("| checkpoint | experts | KV cache | logits rel. err. | min cosine | argmax equal | first departure | "
          "tokens routed otherwise | greedy equal |")
    print("|---|---|---|---|---|---|---|---|---|")
    quant = []
    with tempfile.TemporaryDirectory() as tmp:
        for label, folder, inputs in checkpoints(split(args.cases), split(args.shapes), args.workdir):
            model, memo = load_model(folder), {}
            for experts, kv in VARIANTS:
                if experts == "q4_0" and model.cfg.quant is None:
                    continue
                path = os.path.join(tmp, f"{experts}.gguf")
                if not os.path.exists(path):
                    export_gguf(folder, path, experts=experts)
                runtime = cf.LlamaCpp(path, model.cfg.text, inputs, threads=args.threads, kv_cache=kv)
                report = cf.run(runtime, model, inputs, memo)
                print(f"| {label} | {experts} | {kv} | {summary(report, model.cfg.text)} |", flush=True)
                if (experts, kv) == ("q4_0", "f32"):
                    quant.append([label, model.cfg.text, report])
            for name in os.listdir(tmp):
                os.remove(os.path.join(tmp, name))
            if model.cfg.quant is not None:
                share, worst = weight_rounding(model)
                exact = cf.run(cf.K25ref(exact_product(load_model(folder))), model, inputs, memo)
                quant[-1] += [share, worst, exact]
    print("\n| checkpoint | expert weights where bf16(q·s) ≠ q·s | largest relative change there | "
          "k25ref q·s vs bf16(q·s): logits rel. err. | first departure | "
          "llama.cpp Q4_0×Q8_0 vs k25ref: logits rel. err. | min cosine |")
    print("|---|---|---|---|---|---|---|")
    for label, cfg, q4, share, worst, exact in quant:
        ex = summary(exact, cfg).split(" | ")
        q = summary(q4, cfg).split(" | ")
        print(f"| {label} | {share:.1%} | {worst:.2e} | {ex[0]} | {ex[3]} | {q[0]} | {q[1]} |")


if __name__ == "__main__":
    main()
