"""Pictures of the nano's wrong captions on the held-out generator (k25ref.shapes_eval), for docs/nano.md.

    python tools/nano_failures.py [--model k25ref/assets/nano] [--n 8] [--png docs/figures/nano_failures.png]

Draws held-out images and clips in the order `k25ref eval-nano` does (same seed streams), captions them with
k25ref, and shows the first `--n` whose caption is not exact: the picture (a clip as its first, middle and
last frame, read back from its GIF/MP4 file), the truth and the model's caption.
"""
import argparse
import os
import sys
import tempfile
import textwrap

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from k25ref import nano_eval, shapes  # noqa: E402


def clip_strip(path):  # a GIF/MP4 -> (H, 3W + gaps, 3) uint8: first, middle and last frame
    import imageio.v3 as iio
    frames = list(iio.imiter(path, plugin="pyav" if path.endswith(".mp4") else "pillow"))
    picks = [np.asarray(frames[k])[..., :3] for k in (0, len(frames) // 2, len(frames) - 1)]
    gap = np.full((picks[0].shape[0], 4, 3), 255, np.uint8)
    return np.concatenate([picks[0], gap, picks[1], gap, picks[2]], axis=1)


def failures(model, tok, n, max_tries, seed, folder):
    """-> [(picture array, kind, truth, model caption, chunks)] of the first n wrong captions, images and clips
    taken in turn."""
    rngs = {kind: nano_eval.eval_rng(seed, kind, "held-out") for kind in ("image", "video")}
    found = []
    for i in range(max_tries):
        kind = ("image", "video")[i % 2]
        sample, truth_text, truth = nano_eval.draw(kind, "held-out", rngs[kind], folder)
        got, chunks = nano_eval.caption(model, tok, kind, sample)
        picture = np.asarray(sample) if kind == "image" else clip_strip(sample[0])
        if not shapes.score_caption(got, truth)["exact"]:
            found.append((picture, kind, truth_text, got, chunks))
            if len(found) == n:
                break
    return found


def plot(found, png):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    cols = 2
    rows = max(1, -(-len(found) // cols))
    fig, axes = plt.subplots(rows, cols, figsize=(10, 3 * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, (picture, kind, truth, got, chunks) in zip(axes.flat, found):
        ax.imshow(picture)
        what = "image" if kind == "image" else f"clip, {chunks} chunk{'s' if chunks > 1 else ''} (first/mid/last frame)"
        text = "\n".join(textwrap.wrap(f"truth: {truth}", 70) + textwrap.wrap(f"model: {got}", 70))
        ax.set_title(f"{what}\n{text}", fontsize=7.5, loc="left")
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(png)), exist_ok=True)
    fig.savefig(png, dpi=80)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default=nano_eval.NANO_PATH)
    p.add_argument("--n", type=int, default=8, help="wrong captions to show")
    p.add_argument("--tries", type=int, default=600, help="samples to caption at most")
    p.add_argument("--seed", type=int, default=nano_eval.EVAL_SEED)
    p.add_argument("--png", default=os.path.join(ROOT, "docs", "figures", "nano_failures.png"))
    args = p.parse_args(argv)
    from k25ref.model import load_model
    from k25ref.tokenizer import Tokenizer
    model, tok = load_model(args.model), Tokenizer.from_pretrained(args.model)
    with tempfile.TemporaryDirectory() as folder:
        found = failures(model, tok, args.n, args.tries, args.seed, folder)
        plot(found, args.png)
    for _, kind, truth, got, chunks in found:
        print(f"{kind} ({chunks} chunks): truth {truth!r}, model {got!r}")


if __name__ == "__main__":
    main()
