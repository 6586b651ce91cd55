"""Regenerate every figure and every captured command output that docs/ shows, so docs render without running anything.

    python tools/make_doc_figures.py                  # all of the below
    python tools/make_doc_figures.py tutorials        # run tutorials/NN_*.py with --figures docs/figures
    python tools/make_doc_figures.py architecture     # docs/figures/architecture.png
    python tools/make_doc_figures.py cli              # docs/cli.md (tools/make_cli_docs.py)
    python tools/make_doc_figures.py anchors          # docs links `name`(../k25ref/x.py#Ln): update n to name's line

Figures named NN_*.png are drawn by tutorial NN (one source for the tutorial and the docs); architecture.png is
drawn here. Nothing needs the network. `tests/test_tutorials.py` checks that every figure a docs page shows is
produced by one of these commands and that every line anchor still points at its function.
"""
import argparse
import os
import re
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)                                     # run from a checkout without installing
FIGURES = os.path.join(ROOT, "docs", "figures")
DOCS = os.path.join(ROOT, "docs")
OWN_PAGES = ("index.md", "architecture.md", "notation.md", "references.md", "cli.md", "rope.md", "mla.md", "moe.md",
             "int4.md", "weights.md", "tokenizer.md", "contributing.md")
LINK = re.compile(r"\[`([A-Za-z_][A-Za-z0-9_.]*)[^`]*`\]\((\.\./[^)#\s]+\.py)#L(\d+)\)")


# ----------------------------------------------------------------------------
# tutorials: each draws its own figures


def tutorials():
    """Run every tutorial as a script with --figures docs/figures; print what each took."""
    os.makedirs(FIGURES, exist_ok=True)
    env = {**os.environ, "MPLBACKEND": "Agg"}
    for name in sorted(f for f in os.listdir(os.path.join(ROOT, "tutorials")) if re.match(r"\d\d_.*\.py$", f)):
        t0 = time.perf_counter()
        subprocess.run([sys.executable, os.path.join("tutorials", name), "--figures", FIGURES], cwd=ROOT, env=env,
                       check=True, stdout=subprocess.DEVNULL)
        print(f"{name:<28} {time.perf_counter() - t0:5.1f} s")
    for name in sorted(os.listdir(FIGURES)):
        if re.match(r"\d\d_.*\.png$", name):
            shrink(os.path.join(FIGURES, name))


def shrink(path, colours=96):
    """Re-save a PNG with a small palette: the figures are flat-colour plots, so this keeps them ~4x smaller."""
    from PIL import Image
    with Image.open(path) as im:
        small = im.convert("RGB").quantize(colours, method=Image.Quantize.MEDIANCUT)
    small.save(path, optimize=True)


# ----------------------------------------------------------------------------
# the architecture picture, with K2.5's real sizes and where each part lives


MAIN = [  # (label, sizes, file) top to bottom
    ("image / 4-frame video chunk", "14x14 patches, grid_thw = [t, h, w]", "k25ref/media.py"),
    ("MoonViT-3D tower", "27 pre-LN blocks, width 1152, 16 heads, MLP 4304,\n2-D RoPE, bicubic 64x64 pos. table", "k25ref/moonvit.py"),
    ("patch merger", "mean over frames, 2x2 merge: 4 x 1152 = 4608\nLN, Linear 4608, GELU, Linear -> 7168", "k25ref/projector.py"),
    ("token embedding + media splice", "163840 x 7168 (bf16); <|media_pad|> rows replaced", "k25ref/multimodal.py"),
    ("layer 0: MLA + dense SwiGLU", "FFN 7168 -> 18432 -> 7168", "k25ref/decoder.py"),
    ("layers 1..60: MLA + MoE", "384 routed experts (INT4, g32), 8 per token,\n1 shared expert, width 2048", "k25ref/decoder.py"),
    ("RMSNorm, lm_head", "7168 -> 163840 logits", "k25ref/decoder.py"),
]
SIDE = [  # (label, body, file, which MAIN row it explains, or None)
    ("MLA  (per layer)", "q_a 7168->1536, RMSNorm, q_b -> 64 x (128 + 64)\n"
                         "kv_a 7168 -> 512 latent + 64 shared k_rope\n"
                         "kv_b 512 -> 64 x (128 k + 128 v)   o 8192 -> 7168\n"
                         "YaRN RoPE s=64, interleaved; cache 576 / token / layer", "k25ref/mla.py, rope.py", 4),
    ("MoE router + experts", "s = sigmoid(u . e_i); top-8 of s + b (bias steers only)\n"
                             "g = 2.827 s / sum s;  h = sum g FFN_i(u) + FFN_shared(u)\n"
                             "expert: packed int32 nibbles + bf16 scale / 32 inputs", "k25ref/moe.py, int4.py", 5),
    ("weights on demand", "595 GB in 64 shards; per token ~33 GB read:\n"
                          "dense weights + 8 experts x 60 layers + head\n"
                          "pread into an LRU byte budget", "k25ref/weights.py, streaming.py", 6),
    ("text in, tokens out", "byte-level BPE (tiktoken format), K2.5 chat template\n"
                            "load_model(path) -> Model.logits / forward(cache)\n"
                            "generate: prefill, then decode on the latent cache", "k25ref/tokenizer.py, model.py", None),
]


def architecture(path=None):
    """A block diagram of Kimi K2.5 with its real sizes and the k25ref file of each part."""
    from matplotlib.figure import Figure
    from matplotlib.patches import FancyArrowPatch, FancyBboxPatch

    path = path or os.path.join(FIGURES, "architecture.png")
    fig = Figure(figsize=(11, 8.2))
    ax = fig.add_axes((0, 0, 1, 1))
    ax.set_xlim(0, 11)
    ax.set_ylim(0, 8.2)
    ax.set_axis_off()
    top, step, h = 7.6, 1.08, 0.82
    colours = ["#f3e5f5", "#f3e5f5", "#f3e5f5", "#e3f2fd", "#e8f5e9", "#e8f5e9", "#e3f2fd"]
    centres = []
    for k, (label, sizes, file) in enumerate(MAIN):
        y = top - k * step
        ax.add_patch(FancyBboxPatch((0.3, y - h), 4.6, h, boxstyle="round,pad=0.02", fc=colours[k], ec="0.3"))
        ax.text(0.45, y - 0.18, label, fontsize=10, weight="bold", va="top")
        ax.text(0.45, y - 0.42, sizes, fontsize=7.5, va="top")
        ax.text(4.8, y - 0.18, file, fontsize=7, va="top", ha="right", family="monospace", color="0.25")
        centres.append(y - h / 2)
        if k:
            ax.add_patch(FancyArrowPatch((2.6, y + step - h), (2.6, y), arrowstyle="-|>", mutation_scale=10, color="0.3"))
    ax.text(0.45, top + 0.35, "text ids (163840-token BPE)  ->  joins at the embedding", fontsize=8, color="0.3")
    for k, (label, body, file, row) in enumerate(SIDE):
        y = 6.55 - 1.5 * k                                                   # top of the k-th side box
        ax.add_patch(FancyBboxPatch((5.6, y - 1.24), 5.1, 1.24, boxstyle="round,pad=0.02", fc="#fffde7", ec="0.4"))
        ax.text(5.75, y - 0.12, label, fontsize=9.5, weight="bold", va="top")
        ax.text(10.6, y - 0.12, file, fontsize=7, va="top", ha="right", family="monospace", color="0.25")
        ax.text(5.75, y - 0.42, body, fontsize=7.5, va="top")
        if row is not None:
            ax.add_patch(FancyArrowPatch((4.95, centres[row]), (5.55, y - 0.62), arrowstyle="-", ls="--", color="0.5"))
    ax.text(5.6, 7.75, "Kimi K2.5: 1.03 T parameters, 32.9 G active per token", fontsize=11, weight="bold", va="top")
    ax.text(5.6, 7.4, "D = 7168, 61 layers (1 dense + 60 MoE), 64 heads, vocab 163840,\n"
                      "context 256K (YaRN from 4K). docs/notation.md has the letters.", fontsize=8, va="top")
    fig.savefig(path, dpi=80)
    shrink(path)
    print(f"wrote {os.path.relpath(path, ROOT)}")
    return path


# ----------------------------------------------------------------------------
# docs/cli.md: tools/make_cli_docs.py writes it


def cli():
    """docs/cli.md, every --help and example captured (`python tools/make_cli_docs.py`)."""
    subprocess.run([sys.executable, os.path.join(ROOT, "tools", "make_cli_docs.py")], check=True)


# ----------------------------------------------------------------------------
# line anchors


def definition_line(file, name):
    """1-based line of `def name` / `class name` (or `name =`) in file; methods as Class.method; None if absent."""
    with open(file, encoding="utf-8") as f:
        lines = f.read().splitlines()
    *owner, leaf = name.split(".")
    start = 0
    if owner:
        start = definition_line(file, owner[-1]) or 0
        if not start:
            return None
    pattern = re.compile(rf"^\s*(def|class)\s+{re.escape(leaf)}\b|^{re.escape(leaf)}\s*=")
    return next((k + 1 for k in range(start, len(lines)) if pattern.match(lines[k])), None)


def stale_anchors(pages=OWN_PAGES):
    """(page, name, file, linked line, actual line) for every `name` link whose #L anchor is off."""
    found = []
    for page in pages:
        p = os.path.join(DOCS, page)
        if not os.path.exists(p):
            continue
        with open(p, encoding="utf-8") as f:
            text = f.read()
        for name, rel, line in LINK.findall(text):
            actual = definition_line(os.path.normpath(os.path.join(DOCS, rel)), name)
            if actual != int(line):
                found.append((page, name, rel, int(line), actual))
    return found


def anchors():
    """Rewrite each stale anchor in the docs pages to the line where its name is now defined."""
    for page, name, rel, line, actual in stale_anchors():
        if actual is None:
            print(f"{page}: `{name}` is no longer defined in {rel}: fix the link by hand")
            continue
        p = os.path.join(DOCS, page)
        with open(p, encoding="utf-8") as f:
            text = f.read()
        text = re.sub(rf"(\[`{re.escape(name)}[^`]*`\]\({re.escape(rel)})#L{line}\)", rf"\1#L{actual})", text)
        with open(p, "w", encoding="utf-8") as f:
            f.write(text)
        print(f"{page}: `{name}` {rel}#L{line} -> #L{actual}")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("what", nargs="*", choices=["tutorials", "architecture", "cli", "anchors", []],
                        help="what to regenerate (default: everything)")
    jobs = parser.parse_args().what or ["tutorials", "architecture", "cli", "anchors"]
    for job in jobs:
        {"tutorials": tutorials, "architecture": architecture, "cli": cli, "anchors": anchors}[job]()


if __name__ == "__main__":
    main()
