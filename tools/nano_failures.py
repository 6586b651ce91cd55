"""Where the nano's held-out captions (k25ref.shapes_eval) go wrong, for docs/nano.md: pictures, or a table.

    python tools/nano_failures.py [--model k25ref/assets/nano] [--n 8] [--png docs/figures/nano_failures.png]
    python tools/nano_failures.py --by-style --seed 5150 [--images 300] [--videos 0] --model A [--model B ...]

Draws held-out images and clips in the order `k25ref eval-nano` does (same seed streams), captions them with
k25ref, and shows the first `--n` whose caption is not exact: the picture (a clip as its first, middle and
last frame, read back from its GIF/MP4 file), the truth and the model's caption.

--by-style captions `--images` images and `--videos` clips instead and prints, as a Markdown table with one
column per model, the exact-caption rate by frame family, background, number of objects, smallest object
(half-extent in pixels), and for clips file format and chunks. The held-out generator keeps no record of
those draws, so `recording` notes the arguments its drawing functions are called with (the draws
themselves are unchanged). Pass `--seed` other than eval-nano's, so that what is studied is not what the
tables report. `--generator varied` draws the training family's varied scenes (`k25ref.shapes.varied_image`,
`varied_video`) instead, grouped by frame (tiny: no side over 56 px), number of objects, the smallest object's
radius and chunks: whether a failure on the held-out generator is a failure on the training family too.

--probe FILE (once per --model, in the same order) measures a vision tower alone, as `tools/train_nano.py
--vision-only` leaves it: its training-only read-out (the --probe-file saved with it) on the same held-out
images and clips, object by object: whether the object's tokens are called an object (seen) and whether the
read-out names its colour, shape and position (direction), by the groups above, with the object's own size
in place of the smallest one. The object's pixels come from the geometry the generator paints.

    python tools/nano_failures.py --seed 5150 --images 300 --videos 150 --model A --probe A.pt --model B --probe B.pt
"""
import contextlib
import json
import os
import sys
import tempfile
import textwrap
from collections import defaultdict
from unittest import mock

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "tools"))
from k25ref import media, nano_eval, shapes, shapes_eval  # noqa: E402
from k25ref.errors import K25RefError  # noqa: E402
from k25ref.options import ArgumentParser, positive_int  # noqa: E402
from k25ref.progress import bar  # noqa: E402

SIZES = (("< 8 px", 8), ("8-12 px", 12), ("12-20 px", 20), (">= 20 px", float("inf")))   # half-extents


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


@contextlib.contextmanager
def recording(scene, masks=False):
    """While active, shapes_eval's draws note in the dict `scene` the frame family and background kind they
    pick and every object's half-extent ("sizes"), by wrapping the functions they call with those choices;
    with `masks`, also every painted object's coverage ("covered", (H, W) in 0..1, outline included) and a
    clip's frame duration ("frame_ms")."""
    frame_size, background, painter = shapes_eval.frame_size, shapes_eval.background, shapes_eval.Painter.__init__
    paint, write_clip = shapes_eval.Painter.paint, shapes_eval.write_clip

    def note_frame(rng, family, video=False):
        scene["frame"] = str(family)
        return frame_size(rng, family, video)

    def note_background(rng, H, W, avoid, kind):
        scene["background"] = str(kind)
        return background(rng, H, W, avoid, kind)

    def note_object(self, rng, obj, size):
        scene.setdefault("sizes", []).append(float(size))
        painter(self, rng, obj, size)

    def note_paint(self, canvas, cx, cy):
        grow = 0.0 if self.outline is None else self.width
        scene.setdefault("covered", []).append(
            shapes_eval.coverage(self.shape, cx, cy, self.size, self.angle, *canvas.shape[:2], grow=grow))
        return paint(self, canvas, cx, cy)

    def note_clip(frames, frame_ms, path, rng):
        scene["frame_ms"] = frame_ms
        return write_clip(frames, frame_ms, path, rng)

    with contextlib.ExitStack() as stack:
        wrappers = ((shapes_eval, "frame_size", note_frame), (shapes_eval, "background", note_background),
                    (shapes_eval.Painter, "__init__", note_object))
        if masks:
            wrappers += ((shapes_eval.Painter, "paint", note_paint), (shapes_eval, "write_clip", note_clip))
        for owner, name, wrapper in wrappers:
            stack.enter_context(mock.patch.object(owner, name, wrapper))
        yield scene


@contextlib.contextmanager
def recording_varied(scene):
    """The same for the training family's varied scenes (shapes.varied_image / varied_video): the frame
    ("tiny" when no side is over 56 px, else "other") and every object's radius ("sizes")."""
    size_of, radius_of = shapes.varied_size, shapes.varied_radius

    def note_size(rng, large, video=False, p_tiny=shapes.P_TINY_FRAME):
        size = size_of(rng, large, video, p_tiny)
        scene["frame"] = "tiny" if max(size) <= 56 else "other"
        return size

    def note_radius(*args):
        scene.setdefault("sizes", []).append(float(radius_of(*args)))
        return scene["sizes"][-1]

    with mock.patch.object(shapes, "varied_size", note_size), mock.patch.object(shapes, "varied_radius", note_radius):
        yield scene


def draw_varied(kind, rng):
    """One varied scene of the training family, large a quarter of the time -> (image, or (frames, fps),
    truth caption, truth objects)."""
    large = bool(rng.random() < 0.25)
    if kind == "image":
        return shapes.varied_image(rng, large)
    frames, fps, text, objects = shapes.varied_video(rng, large)
    return (frames, fps), text, objects


def size_bin(half_extent):
    return next(label for label, below in SIZES if half_extent < below)


def value_order(item):  # sizes small to large, other values alphabetically
    labels = [label for label, _ in SIZES]
    return (labels.index(item[0]) if item[0] in labels else 0, item[0])


def groups(kind, scene, sample, chunks):
    """-> [(group, value)] a captioned sample falls in."""
    out = [(group, scene[group]) for group in ("frame", "background") if group in scene]
    out.append(("smallest object", size_bin(min(scene["sizes"]))))
    if kind == "image":
        return [("objects", str(len(scene["sizes"])))] + out
    file = [("file", os.path.splitext(sample[0])[1][1:])] if isinstance(sample[0], str) else []
    return out + file + [("chunks", "1" if chunks == 1 else "2-4")]


def by_style(model, tok, n_images, n_videos, seed, generator="held-out"):
    """-> {kind: {group: {value: [exact, n]}}} over held-out images and clips drawn as eval-nano draws them,
    or with generator "varied" over the training family's varied scenes (frame tiny or not, objects' radii)."""
    table = {}
    with tempfile.TemporaryDirectory() as folder:
        for kind, n in (("image", n_images), ("video", n_videos)):
            rng, rows = nano_eval.eval_rng(seed, kind, generator), defaultdict(lambda: defaultdict(lambda: [0, 0]))
            for _ in bar(range(n), desc=f"{generator} {kind}s by style", unit=kind):
                if generator == "varied":
                    with recording_varied({}) as scene:
                        sample, _, truth = draw_varied(kind, rng)
                else:
                    with recording({}) as scene:
                        sample, _, truth = nano_eval.draw(kind, "held-out", rng, folder)
                got, chunks = nano_eval.caption(model, tok, kind, sample)
                exact = int(shapes.score_caption(got, truth)["exact"])
                for group, value in [("all", "all")] + groups(kind, scene, sample, chunks):
                    rows[group][value][0] += exact
                    rows[group][value][1] += 1
            if n:
                table[kind] = {g: dict(sorted(v.items(), key=value_order)) for g, v in rows.items()}
    return table


def pixels(kind, sample, scene):  # -> (pv, grid) of the sample, (pv) of its object mask, preprocessed alike
    """What the model is fed, and the same for the recorded object coverage (white where covered)."""
    from PIL import Image

    def mask(covered):
        return Image.fromarray(np.repeat((255 * np.clip(covered, 0, 1)).astype(np.uint8)[..., None], 3, 2), "RGB")

    if kind == "image":
        pv, grid = media.preprocess_image(sample)
        return pv, grid, media.preprocess_image(mask(np.max(scene["covered"], axis=0)))[0]
    pv, grid, _ = media.preprocess_video(sample[0])
    drawn, drawn_grid, _ = media.preprocess_video([mask(c) for c in scene["covered"]], fps=1000 / scene["frame_ms"])
    if not np.array_equal(grid, drawn_grid):
        raise RuntimeError(f"{sample[0]}: read back as {grid.tolist()}, drawn as {drawn_grid.tolist()}")
    return pv, grid, drawn


def probe_table(readers, n_images, n_videos, seed):
    """{name: (model, probe)} -> {name: {kind: {group: {value: [seen, colour, shape, where, n]}}}}, counted
    over the objects of the same held-out images and clips (drawn as eval-nano draws them) for every model."""
    from train_nano import read_objects
    tables = {name: {} for name in readers}
    with tempfile.TemporaryDirectory() as folder:
        for kind, n in (("image", n_images), ("video", n_videos)):
            rng = nano_eval.eval_rng(seed, kind, "held-out")
            rows = {name: defaultdict(lambda: defaultdict(lambda: [0] * 5)) for name in readers}
            for _ in bar(range(n), desc=f"held-out {kind}s, read-out", unit=kind):
                with recording({}, masks=True) as scene:
                    sample, _, truth = nano_eval.draw(kind, "held-out", rng, folder)
                pv, grid, drawn = pixels(kind, sample, scene)
                sample_groups = [g for g in groups(kind, scene, sample, len(grid)) if g[0] != "smallest object"]
                for name, (model, probe) in readers.items():
                    for o, size, read in zip(truth, scene["sizes"], read_objects(model, probe, pv, grid, truth, drawn)):
                        for group, value in [("all", "all"), ("object size", size_bin(size))] + sample_groups:
                            counts = rows[name][group][value]
                            counts[:] = [c + int(r) for c, r in zip(counts, read + (True,))]
            for name in readers:
                if n:
                    tables[name][kind] = {g: dict(sorted(v.items(), key=value_order)) for g, v in rows[name].items()}
    return tables


def probe_markdown(tables, names):
    """probe_table -> a Markdown table: seen / colour / shape / position (direction) per group value."""
    first = tables[names[0]]
    heads = " | ".join(f"{m}: seen / colour / shape / where" for m in names)
    lines = [f"| held-out | group | value (objects) | {heads} |", "|---|---|---|" + "---|" * len(names)]
    for kind in first:
        for group, values in first[kind].items():
            for value, counts in values.items():
                cells = [" / ".join(f"{c / counts[4]:.0%}" for c in tables[m][kind][group][value][:4]) for m in names]
                lines.append(f"| {kind}s | {group} | {value} (n={counts[4]}) | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def markdown(tables, names, generator="held-out"):
    """{name: by_style table} -> a Markdown table: exact-caption rate (n) per group value, a column per model."""
    first = tables[names[0]]
    lines = [f"| {generator} | group | value | " + " | ".join(names) + " |", "|---|---|---|" + "---|" * len(names)]
    for kind in first:
        for group, values in first[kind].items():
            for value, (_, n) in values.items():
                cells = [f"{tables[m][kind][group][value][0] / n:.0%}" for m in names]
                lines.append(f"| {kind}s | {group} | {value} (n={n}) | " + " | ".join(cells) + " |")
    return "\n".join(lines)


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


def write_json(path, record):
    if path:
        with open(path, "w") as f:
            json.dump(record, f, indent=1)


def main(argv=None):
    p = ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", action="append", help="model folder (repeat with --by-style for more columns; "
                   "default k25ref/assets/nano)")
    p.add_argument("--by-style", action="store_true", help="print exact captions by frame, background, objects "
                   "and object size as a Markdown table instead of drawing failures")
    p.add_argument("--generator", choices=("held-out", "varied"), default="held-out", help="with --by-style: "
                   "the held-out generator (k25ref.shapes_eval), or the training family's varied scenes "
                   "(k25ref.shapes.varied_image/varied_video), grouped by frame (tiny or not) and object radius")
    p.add_argument("--images", type=int, default=300, help="held-out images to caption with --by-style")
    p.add_argument("--videos", type=int, default=0, help="held-out clips to caption with --by-style")
    p.add_argument("--probe", action="append", metavar="FILE", help="the read-out weights (train_nano.py "
                   "--probe-file) of the tower in the --model given at the same place: measure the read-out")
    p.add_argument("--json", help="with --by-style or --probe, also write the counts to this .json file")
    p.add_argument("--n", type=positive_int, default=8, help="wrong captions to show")
    p.add_argument("--tries", type=positive_int, default=600, help="samples to caption at most")
    p.add_argument("--seed", type=int, default=nano_eval.EVAL_SEED)
    p.add_argument("--png", default=os.path.join(ROOT, "docs", "figures", "nano_failures.png"))
    args = p.parse_args(argv)
    names = args.model or [nano_eval.NANO_PATH]
    if args.json and os.path.exists(args.json):
        p.error(f"--json {args.json}: exists; give a new file name")
    if args.generator != "held-out" and (not args.by_style or args.probe):
        p.error(f"--generator {args.generator}: only with --by-style, without --probe")
    if args.probe and len(args.probe) != len(names):
        p.error(f"--probe: {len(args.probe)} read-out files for {len(names)} --model folders; give one per model")
    for path in args.probe or []:
        if not os.path.isfile(path):
            p.error(f"--probe {path}: no such file")
    if (args.by_style or args.probe) and (min(args.images, args.videos) < 0 or args.images + args.videos == 0):
        p.error(f"--images {args.images} --videos {args.videos}: counts of at least 0, not both 0")
    try:
        return run(args, names)
    except K25RefError as e:                                              # a model folder that is not one
        p.error(str(e))


def run(args, names):
    from k25ref.model import load_model
    from k25ref.tokenizer import Tokenizer
    if args.probe:
        from train_nano import load_probe
        readers = {m: load_probe(m, f) for m, f in zip(names, args.probe)}
        tables = probe_table(readers, args.images, args.videos, args.seed)
        write_json(args.json, {"seed": args.seed, "probe": dict(zip(names, args.probe)), "tables": tables})
        print(probe_markdown(tables, names))
        return
    if args.by_style:
        models = {m: (load_model(m), Tokenizer.from_pretrained(m)) for m in names}   # every folder read first
        tables = {m: by_style(*models[m], args.images, args.videos, args.seed, args.generator) for m in names}
        write_json(args.json, {"seed": args.seed, "generator": args.generator, "tables": tables})
        print(markdown(tables, names, args.generator))
        return
    model, tok = load_model(names[0]), Tokenizer.from_pretrained(names[0])
    with tempfile.TemporaryDirectory() as folder:
        found = failures(model, tok, args.n, args.tries, args.seed, folder)
        plot(found, args.png)
    for _, kind, truth, got, chunks in found:
        print(f"{kind} ({chunks} chunks): truth {truth!r}, model {got!r}")


if __name__ == "__main__":
    main()
