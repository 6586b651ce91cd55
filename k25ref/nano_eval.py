"""How good is Kimi-K2.5-nano? Measured with k25ref's own NumPy runtime (no torch anywhere).

Three numbers, each against a baseline that a model which does not look would reach:

1. Held-out text loss: mean next-token cross entropy, in nats per token, of data/tinyshakespeare/heldout.txt
   read in windows of `window` tokens (raw text, no chat template), next to the loss of the unigram model
   of the training text (add-one smoothed counts) on the same targets:

       loss = -1/N * sum_t log softmax(logits_t)[x_{t+1}]          unigram = -1/N * sum_t log p(x_{t+1})

2. Image captions: `n_images` fresh images (a seed the trainer never uses), prompt "Describe the image."
   through the real chat template (thinking off), greedy decoding; exact-match rate and per-attribute
   accuracy (colour, shape, position), objects compared in caption order, and how many captions are in
   the grammar the prompt asks for (positions for an image, directions for a video).
3. Video captions: the same for `n_videos` fresh clips (colour, shape, direction), "Describe the video.",
   with single-chunk clips (at most 4 frames after 2 fps sampling) also reported on their own.

Captions are measured on two generators: "training" (k25ref.shapes, what the trainer draws from, at another
seed) and "held-out" (k25ref.shapes_eval, drawn by independent code: other colours, backgrounds, frames,
outlines, and clips read back from GIF/MP4 files with 100 ms - 1 s frames).

`k25ref eval-nano` is the click command `eval_nano` below; `evaluate(...)` returns the same report as a dict.
"""
import json
import os
import tempfile
import time

import click
import numpy as np

from k25ref import media, shapes, shapes_eval
from k25ref.errors import K25RefError
from k25ref.files import atomic_open
from k25ref.options import FORCE, SEED, OutputFile
from k25ref.multimodal import expand_placeholders
from k25ref.progress import bar

NANO_PATH = os.path.join(os.path.dirname(__file__), "assets", "nano")
DATA = os.path.join(os.path.dirname(os.path.dirname(__file__)), "data", "tinyshakespeare")
EVAL_SEED = 20261129          # fresh media: the trainer draws from its own --seed (small integers)


# ----------------------------------------------------------------------------
# text


def window_loss(model, ids):  # (T,) -> (T-1,) float64
    """-log p(x_{t+1} | x_<=t) = logsumexp(z_t) - z_t[x_{t+1}] for every position of one window,
    from k25ref's full-sequence logits z (float64 for the sum)."""
    z = model.logits(ids[:-1]).astype(np.float64)                                # (T-1, V)
    m = z.max(axis=1)
    lse = m + np.log(np.exp(z - m[:, None]).sum(axis=1))                          # (T-1,)
    return lse - z[np.arange(len(ids) - 1), ids[1:]]


def unigram_logprobs(train_ids, vocab):  # (N,) -> (V,) float64
    """log p(x) of the add-one smoothed unigram model of the training tokens."""
    counts = np.bincount(train_ids, minlength=vocab).astype(np.float64) + 1.0
    return np.log(counts / counts.sum())


def text_losses(model, tok, window=128, max_tokens=None, data_dir=DATA):
    """Held-out nats/token of the model and of the unigram baseline, on the same targets."""
    for name in ("train.txt", "heldout.txt"):
        if not os.path.exists(os.path.join(data_dir, name)):
            raise K25RefError(f"{os.path.join(data_dir, name)}: missing (the text evaluation needs the "
                              "tinyshakespeare split)")
    with open(os.path.join(data_dir, "train.txt"), encoding="utf-8") as f:
        train = np.array(tok.encode(f.read()), np.int64)
    with open(os.path.join(data_dir, "heldout.txt"), encoding="utf-8") as f:
        held = np.array(tok.encode(f.read()), np.int64)
    if max_tokens:
        held = held[:max_tokens + 1]
    uni = unigram_logprobs(train, model.cfg.text.vocab_size)
    model_nll, targets = [], []
    for start in bar(range(0, len(held) - 1, window), desc="held-out text", unit="window"):
        ids = held[start:start + window + 1]
        if len(ids) < 2:
            break
        model_nll.append(window_loss(model, ids))
        targets.append(ids[1:])
    model_nll, targets = np.concatenate(model_nll), np.concatenate(targets)
    return {"tokens": int(targets.size), "model_nats_per_token": float(model_nll.mean()),
            "unigram_nats_per_token": float(-uni[targets].mean())}


# ----------------------------------------------------------------------------
# captions


def describe(model, tok, content, pixel_values, grid_thw, max_new_tokens=40):
    """Greedy reply of the model to one user turn with media (the same path as `k25ref generate --image`)."""
    ids = tok.apply_chat_template([{"role": "user", "content": content}], thinking=False)
    ids = expand_placeholders(ids, grid_thw, model.cfg.media_placeholder_token_id)
    out = list(model.generate(ids, max_new_tokens, pixel_values=pixel_values, grid_thw=grid_thw))
    return tok.decode(out)


def caption_image(model, tok, image):
    """Describe one image (path, PIL image or uint8 array)."""
    pv, grid = media.preprocess_image(image)
    return describe(model, tok, [{"type": "image"}, {"type": "text", "text": shapes.IMAGE_PROMPT}], pv, grid)


def video_prompt(video, fps=None):
    """A video (path, or frames at `fps`) -> (user content, pixel_values, grid_thw) for "Describe the video."."""
    pv, grid, stamps = media.preprocess_video(video, fps=fps)
    content = [{"type": "video", "timestamps": stamps}, {"type": "text", "text": shapes.VIDEO_PROMPT}]
    return content, pv, grid


def caption(model, tok, kind, sample):
    """Describe one drawn sample (see draw) -> (caption, chunks: 0 for an image, a video's 4-frame chunks)."""
    if kind == "image":
        return caption_image(model, tok, sample), 0
    content, pv, grid = video_prompt(*sample)
    return describe(model, tok, content, pv, grid), len(grid)


def eval_rng(seed, kind, generator):
    """The random stream of one (kind, generator) evaluation: the same samples for every model."""
    return np.random.default_rng([seed, 0 if kind == "image" else 1] + ([2] if generator == "held-out" else []))


GENERATORS = ("training", "held-out")


def draw(kind, generator, rng, folder):
    """One fresh sample -> (image, or (video, fps), truth caption, truth objects)."""
    if generator == "training":
        if kind == "image":
            return shapes.random_image(rng)
        frames, text, objects = shapes.random_video(rng)
        return (frames, shapes.VIDEO_FPS), text, objects
    if kind == "image":
        return shapes_eval.random_image(rng)
    path, text, objects = shapes_eval.random_video(rng, folder)
    return (path, None), text, objects


def in_grammar_of(text, kind):
    """Whether a caption is in the grammar of its prompt: every object "in the <position>" for an image,
    every object "moving <direction>" for a video."""
    objects = shapes.parse_caption(text)
    return bool(objects) and all(bool(o.direction) == (kind == "video") for o in objects)


class Tally:
    """Exact matches and per-attribute hits of scored captions."""

    def __init__(self):
        self.n, self.exact, self.hits = 0, 0, {}

    def add(self, score):
        self.n += 1
        self.exact += score["exact"]
        for attr, (hits, count) in ((a, v) for a, v in score.items() if a != "exact"):
            h, c = self.hits.get(attr, (0, 0))
            self.hits[attr] = (h + hits, c + count)

    def summary(self):
        return {"n": self.n, "exact_match": self.exact / self.n if self.n else 0.0,
                "attributes": {a: h / c for a, (h, c) in self.hits.items()}}


def caption_accuracy(model, tok, n, kind, seed=EVAL_SEED, examples=3, generator="training"):
    """Caption `n` fresh images or videos of a generator; -> exact-match rate, per-attribute accuracy, a few
    examples (and, for videos, the same split by single-chunk / multi-chunk clips)."""
    rng = eval_rng(seed, kind, generator)
    total, by_chunks, shown = Tally(), {"single-chunk": Tally(), "multi-chunk": Tally()}, []
    with tempfile.TemporaryDirectory() as folder:
        for _ in bar(range(n), desc=f"{kind} captions ({generator})", unit=kind):
            sample, truth_text, truth = draw(kind, generator, rng, folder)
            got, chunks = caption(model, tok, kind, sample)
            score = {**shapes.score_caption(got, truth), "grammar": [int(in_grammar_of(got, kind)), 1]}
            total.add(score)
            if kind == "video":
                by_chunks["single-chunk" if chunks == 1 else "multi-chunk"].add(score)
            if len(shown) < examples or (not score["exact"] and len(shown) < 2 * examples):
                shown.append({"truth": truth_text, "model": got})
    out = {**total.summary(), "examples": shown}
    if kind == "video":
        out["chunks"] = {k: t.summary() for k, t in by_chunks.items()}
    return out


def text_samples(model, tok, prompts=("ROMEO:", "First Citizen:\n"), n=60, seed=0):
    """Raw continuations (no template), sampled at temperature 0.8, top-k 40, for reading."""
    out = {}
    for p in prompts:
        ids = list(model.generate(tok.encode(p), n, temperature=0.8, top_k=40, seed=seed, stop_ids=()))
        out[p] = p + tok.decode(ids)
    return out


def evaluate(path=NANO_PATH, n_images=300, n_videos=150, text_tokens=None, window=128, seed=EVAL_SEED,
             samples=True):
    """The whole report as a dict (see the module doc)."""
    from k25ref.model import load_model
    from k25ref.tokenizer import Tokenizer
    model, tok = load_model(path), Tokenizer.from_pretrained(path)
    t0 = time.perf_counter()
    report = {"model": os.path.abspath(path), "text": text_losses(model, tok, window, text_tokens)}
    for generator in GENERATORS:
        prefix = "" if generator == "training" else "held-out "
        if n_images:
            report[prefix + "images"] = caption_accuracy(model, tok, n_images, "image", seed, generator=generator)
        if n_videos:
            report[prefix + "videos"] = caption_accuracy(model, tok, n_videos, "video", seed, generator=generator)
    if samples:
        report["samples"] = text_samples(model, tok)
    report["seconds"] = round(time.perf_counter() - t0, 1)
    return report


def summary_line(c):
    return f"exact match {c['exact_match']:.1%}; " + ", ".join(f"{a} {v:.1%}" for a, v in c["attributes"].items())


def format_report(r):
    """The report as readable lines."""
    t = r["text"]
    lines = [f"model: {r['model']}",
             f"held-out text: {t['model_nats_per_token']:.3f} nats/token (unigram {t['unigram_nats_per_token']:.3f}) "
             f"over {t['tokens']} tokens"]
    for kind in ("images", "videos", "held-out images", "held-out videos"):
        if kind in r:
            c = r[kind]
            lines.append(f"{kind}: {c['n']} fresh, {summary_line(c)}")
            for part, t in c.get("chunks", {}).items():
                lines.append(f"    {part} ({t['n']}): {summary_line(t)}")
            lines += [f"    truth: {e['truth']!r}  model: {e['model']!r}" for e in c["examples"]]
    for prompt, text in r.get("samples", {}).items():
        lines.append(f"sample from {prompt!r}:\n{text}")
    lines.append(f"({r['seconds']} s)")
    return lines


@click.command("eval-nano")
@click.option("--model", "-m", "model_dir", type=click.Path(exists=True, file_okay=False), default=NANO_PATH,
              show_default="the embedded nano model", help="Checkpoint folder to evaluate.")
@click.option("--images", "n_images", default=300, show_default=True, type=click.IntRange(0, 100_000),
              help="Fresh images to caption, per generator.")
@click.option("--videos", "n_videos", default=150, show_default=True, type=click.IntRange(0, 100_000),
              help="Fresh videos to caption, per generator.")
@click.option("--text-tokens", default=None, type=click.IntRange(1), help="Evaluate only the first N held-out tokens "
                                                                         "(default all).")
@click.option("--seed", default=EVAL_SEED, show_default=True, type=SEED, help="Seed of the fresh images and videos.")
@FORCE
@click.option("--json", "json_out", type=OutputFile(".json"), default=None,
              help="Also write the report to this .json file (checked before the evaluation starts).")
def eval_nano(model_dir, n_images, n_videos, text_tokens, seed, force, json_out):
    """Evaluate the nano model with k25ref: held-out Shakespeare loss vs unigram, caption accuracy on the
    training generator (k25ref.shapes) and on an independent held-out one (k25ref.shapes_eval)."""
    report = evaluate(model_dir, n_images, n_videos, text_tokens, seed=seed)
    for line in format_report(report):
        click.echo(line)
    if json_out:
        with atomic_open(json_out) as f:
            json.dump(report, f, indent=2)
