"""Kimi-K2.5-nano: the synthetic shapes data, the trained checkpoint shipped in k25ref/assets/nano, and the
trainer's export to the released layout (checked against k25ref and the transformers oracle).

The export and oracle tests need torch + transformers and are skipped without them.
"""
import os
import sys

import numpy as np
import pytest

from k25ref import shapes
from k25ref.nano_eval import NANO_PATH, caption, caption_accuracy, text_losses

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOOLS = os.path.join(ROOT, "tools")
needs_nano = pytest.mark.skipif(not os.path.exists(os.path.join(NANO_PATH, "config.json")),
                                reason="the trained nano checkpoint is not in k25ref/assets/nano")


def rel_err(out, ref):
    ref = np.asarray(ref, np.float64)
    return float(np.abs(np.asarray(out, np.float64) - ref).max() / np.abs(ref).max())


# ----------------------------------------------------------------------------
# the generator


def object_mask(image, colour, tol=45):  # PIL image -> (H, W) bool
    """Pixels within `tol` per channel of a colour's base value (tints are at most 18 off)."""
    a = np.asarray(image).astype(int)
    return (np.abs(a - np.array(shapes.COLOURS[colour])) <= tol).all(axis=2)


def test_image_captions_follow_the_grammar_and_the_pixels():
    rng = np.random.default_rng(5)
    for _ in range(40):
        image, text, objects = shapes.random_image(rng)
        assert shapes.parse_caption(text) == objects
        assert 1 <= len(objects) <= 2
        order = list(shapes.POSITIONS)
        assert [order.index(o.position) for o in objects] == sorted(order.index(o.position) for o in objects)
        if len(objects) == 1:                      # a lone object's pixels sit in its named region
            (o,) = objects
            ys, xs = np.nonzero(object_mask(image, o.colour))
            assert xs.size > 0, text
            W, H = image.size
            fx, fy = shapes.POSITIONS[o.position]
            assert abs(xs.mean() / W - fx) < 0.2 and abs(ys.mean() / H - fy) < 0.2, text


def test_video_object_moves_the_named_way():
    rng = np.random.default_rng(6)
    for _ in range(20):
        frames, text, (o,) = shapes.random_video(rng)
        assert 4 <= len(frames) <= 8 and text == o.phrase()
        centres = []
        for f in frames:
            ys, xs = np.nonzero(object_mask(f, o.colour))
            centres.append((xs.mean(), ys.mean()))
        (x0, y0), (x1, y1) = centres[0], centres[-1]
        dx, dy = shapes.DIRECTIONS[o.direction]
        moved = np.array([x1 - x0, y1 - y0])
        assert moved @ np.array([dx, dy]) > 0.25 * min(frames[0].size), (text, centres)


def test_generator_is_seeded():
    a = shapes.random_image(np.random.default_rng(3))
    b = shapes.random_image(np.random.default_rng(3))
    assert a[1] == b[1] and np.array_equal(np.asarray(a[0]), np.asarray(b[0]))


def test_score_caption():
    truth = shapes.parse_caption("a red circle in the top left and a blue square in the center")
    s = shapes.score_caption("a red circle in the top left and a blue triangle in the center", truth)
    assert s == {"exact": 0, "colour": [2, 2], "shape": [1, 2], "position": [2, 2]}
    assert shapes.score_caption("a red circle in the top left and a blue square in the center", truth)["exact"] == 1
    assert shapes.score_caption("the sky", truth)["colour"] == [0, 2]
    assert shapes.parse_caption("a red circle moving sideways") is None


def test_captions_are_checked_against_the_grammar_the_prompt_asks_for():
    from k25ref.nano_eval import in_grammar_of
    assert in_grammar_of("a red circle moving left", "video") and not in_grammar_of("a red circle moving left", "image")
    assert in_grammar_of("a red circle in the center", "image") and not in_grammar_of("a red circle in the center", "video")
    assert not in_grammar_of("a red circle moving left and a blue square in the center", "video")
    assert not in_grammar_of("the sky", "image")


# ----------------------------------------------------------------------------
# the shipped checkpoint, run by k25ref


@pytest.fixture(scope="module")
def nano():
    from k25ref.model import load_model
    from k25ref.tokenizer import Tokenizer
    return load_model(NANO_PATH), Tokenizer.from_pretrained(NANO_PATH)


@needs_nano
def test_nano_checkpoint_is_small_and_k25_shaped(nano):
    model, tok = nano
    size = sum(os.path.getsize(os.path.join(NANO_PATH, f)) for f in os.listdir(NANO_PATH))
    assert size < 8 * 2**20
    t = model.cfg.text
    assert (t.vocab_size, tok.vocab_size, model.cfg.media_placeholder_token_id) == (4096, 4096, tok.media_pad_id)
    assert t.n_routed_experts == 16 and t.num_experts_per_tok == 2 and t.n_shared_experts == 1
    assert model.cfg.quant is not None and model.cfg.vision is not None
    assert tok.im_end_id in model.stop_ids


@needs_nano
def test_nano_beats_unigram_on_heldout_text(nano):
    r = text_losses(*nano, window=64, max_tokens=256)
    assert r["model_nats_per_token"] < r["unigram_nats_per_token"] - 1.0, r


@needs_nano
@pytest.mark.parametrize("kind, example, truth", [("image", "red_circle.png", "a red circle in the center"),
                                                  ("video", "moving_square.gif", "a yellow square moving right")])
def test_nano_captions_the_readme_examples_as_the_docs_say(nano, kind, example, truth):
    """docs/nano.md quotes these two captions (README.md the first); a new checkpoint must still give them."""
    with open(os.path.join(ROOT, "docs", "nano.md"), encoding="utf-8") as f:
        assert f"`{truth}`" in " ".join(f.read().split()), "docs/nano.md no longer quotes this caption"
    path = os.path.join(ROOT, "examples", example)
    got, _ = caption(*nano, kind, path if kind == "image" else (path, None))
    assert got == truth


@needs_nano
def test_nano_looks_at_the_image(nano):
    """Colour, shape and position are read from the pixels: a blind captioner gets 1/7, 1/3 and 1/5."""
    r = caption_accuracy(*nano, 12, "image", seed=11)
    assert min(r["attributes"].values()) >= 0.8, r


@needs_nano
def test_nano_sees_which_way_a_shape_moves(nano):
    """Direction needs the frames in order (a blind captioner gets 1/4)."""
    r = caption_accuracy(*nano, 8, "video", seed=11)
    assert r["attributes"]["direction"] >= 0.75, r


# ----------------------------------------------------------------------------
# the trainer's export and the oracle (torch side)


@pytest.fixture(scope="module")
def torch_side():
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    pytest.importorskip("compressed_tensors")
    sys.path.insert(0, TOOLS)
    import oracle
    import train_nano
    return train_nano, oracle


def test_export_round_trip(torch_side, tmp_path):
    """A freshly initialised nano, saved in the released layout, gives the same logits (weights rounded as
    saved) in torch, in the oracle loaded from the folder, and in k25ref: text, an image, a two-chunk video."""
    import k25ref
    from k25ref.tokenizer import Tokenizer
    train_nano, oracle = torch_side
    hub = train_nano.nano_hub_config()
    model = train_nano.build_model(hub, seed=3)
    with __import__("torch").no_grad():                 # make the experts non-trivial for INT4
        for ex in train_nano.experts_modules(model):
            ex.gate_up_proj.normal_(0, 0.1)
            ex.down_proj.normal_(0, 0.1)
    train_nano.save_released(model, hub, str(tmp_path))
    train_nano.round_to_saved(model)
    model.eval()
    data = train_nano.Data.__new__(train_nano.Data)      # no training text needed: media samples only
    data.tok, data.rng = Tokenizer.from_pretrained(str(tmp_path)), np.random.default_rng(0)
    data.pad, data.large, data.varied = data.tok.media_pad_id, False, 0.0
    ours, orc = k25ref.load_model(str(tmp_path)), oracle.load_oracle(str(tmp_path))
    video = data.chat_video()
    while len(video[3]) < 2:                             # a two-chunk video: t = 4, then the rest
        video = data.chat_video()
    for sample in (data.chat_image(), video):
        ref = train_nano.torch_logits(model, sample)
        assert rel_err(train_nano.torch_logits(orc, sample), ref) < 1e-5
        assert rel_err(ours.logits(sample[0], sample[2], sample[3]), ref) < 1e-3


@needs_nano
def test_nano_agrees_with_the_oracle(torch_side, nano):
    _, oracle = torch_side
    model, tok = nano
    orc = oracle.load_oracle(NANO_PATH)
    ids = np.array(tok.encode("ROMEO:\nWhat light through yonder window breaks? It is the east."), np.int64)
    assert rel_err(model.logits(ids), oracle.oracle_logits(orc, ids)) < 1e-3


def test_token_labels_name_the_object_each_token_shows(torch_side):
    """The trainer's read-out targets: object tokens carry the object's colour x shape and its position (or
    direction); the other tokens are background; and they sit where the object's pixels are."""
    from k25ref import media
    train_nano, _ = torch_side
    rng = np.random.default_rng(5)
    for _ in range(8):
        image, _, objects = shapes.random_image(rng, (112, 112))
        pv, grid = media.preprocess_image(image)
        kind, where, on = train_nano.token_labels(pv, grid, objects)
        t, h, w = grid[0]
        assert kind.shape == (h * w // 4,) and on.any() and not on.all()
        kinds = {1 + list(shapes.COLOURS).index(o.colour) * 3 + shapes.SHAPES.index(o.shape) for o in objects}
        assert set(kind[on].tolist()) <= kinds and (kind[~on] == 0).all()
        named = {list(shapes.POSITIONS).index(o.position) for o in objects}
        assert set(where[on].tolist()) <= named
        for o in objects:                                   # the object's own colour fills one of its tokens
            token = np.argmax(object_mask(image, o.colour)[:h // 2 * 28, :w // 2 * 28]
                              .reshape(h // 2, 28, w // 2, 28).sum((1, 3)))
            assert on[token]
    frames, _, objects = shapes.random_video(rng, (112, 84))
    pv, grid, _ = media.preprocess_video(frames, fps=shapes.VIDEO_FPS)
    kind, where, on = train_nano.token_labels(pv, grid, objects)
    assert on.any() and (where[on] == list(shapes.DIRECTIONS).index(objects[0].direction)).all()


def test_vision_only_phase_trains_the_tower_alone_and_hands_it_on(torch_side, tmp_path):
    """--vision-only changes the tower and projector and leaves the decoder as initialised; --vision-from puts
    that tower into another run (here one with learning rate 0, so what it saves is what it loaded)."""
    import torch
    train_nano, oracle = torch_side
    hub = train_nano.nano_hub_config()
    train_nano.save_released(train_nano.build_model(hub, seed=3), hub, str(tmp_path / "init"))
    common = ["--quick", "--qat", "0", "--threads", "1", "--seed", "3", "--probe-file", str(tmp_path / "probe.pt")]
    train_nano.main(common + ["--vision-only", "--out", str(tmp_path / "vision")])
    assert (tmp_path / "probe.pt").exists()
    train_nano.main(common + ["--lr", "0", "--vision-from", str(tmp_path / "vision"), "--out", str(tmp_path / "next")])
    init, vision, after = (oracle.load_oracle(str(tmp_path / d)).model for d in ("init", "vision", "next"))

    def same(a, b):
        return all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))

    assert same(vision.language_model.embed_tokens, init.language_model.embed_tokens)
    assert same(vision.language_model.layers[0], init.language_model.layers[0])
    assert not same(vision.vision_tower, init.vision_tower)
    assert same(after.vision_tower, vision.vision_tower) and same(after.mm_projector, vision.mm_projector)


def test_side_by_side_plot_draws_each_run_from_minute_zero(torch_side, tmp_path):
    train_nano, _ = torch_side
    logs = []
    for name, seconds in (("A", 30), ("B", 50)):
        (tmp_path / name).mkdir()
        (tmp_path / name / "log.jsonl").write_text("".join(
            f'{{"step": {k + 1}, "seconds": {seconds * (k + 1)}, "probe_loss": {3 - k / 60}, "qat": false}}\n'
            for k in range(120)))
        logs.append(str(tmp_path / name / "log.jsonl"))
    train_nano.main(["--plot", str(tmp_path / "cmp.png"), "--side-by-side", "--log", ",".join(logs)])
    assert (tmp_path / "cmp.png").stat().st_size > 10_000


def test_phase_plot_draws_every_loss_with_phases_and_qat_marked(torch_side, tmp_path):
    train_nano, _ = torch_side
    for name, qat in (("a", "false"), ("b", "true")):
        (tmp_path / f"{name}.jsonl").write_text("".join(
            f'{{"step": {k + 1}, "seconds": {30 * (k + 1)}, "text_loss": {4 - k / 100}, "media_loss": '
            f'{1 - k / 200}, "probe_loss": {2 - k / 150}, "qat": {qat}}}\n' for k in range(150)))
    png = tmp_path / "phases.png"
    train_nano.main(["--plot", str(png), "--log", f"{tmp_path}/a.jsonl,{tmp_path}/b.jsonl"])
    assert png.stat().st_size > 10_000


def test_loss_logs_of_phases_share_one_clock(torch_side, tmp_path):
    """Phase b starts at the minute phase a ended; a loss a phase did not compute (0.0) is left out."""
    train_nano, _ = torch_side
    for name, losses in (("a", [0.0, 0.0]), ("b", [2.0, 1.0, 0.5])):
        (tmp_path / f"{name}.jsonl").write_text("".join(
            f'{{"step": {k + 1}, "seconds": {60 * (k + 1)}, "text_loss": {v}, "qat": false}}\n'
            for k, v in enumerate(losses)))
    recs, starts = train_nano.read_logs([f"{tmp_path}/a.jsonl", f"{tmp_path}/b.jsonl"])
    assert [r["minute"] for r in recs] == [1.0, 2.0, 3.0, 4.0, 5.0] and starts == [2.0]
    assert [[r["minute"] for r in run] for run in train_nano.runs_of(recs, "text_loss")] == [[3.0, 4.0, 5.0]]


# ----------------------------------------------------------------------------
# the varied training scenes and the independent held-out generator


def test_varied_scenes_follow_the_grammar():
    from k25ref import media
    rng = np.random.default_rng(8)
    for k in range(20):
        image, text, objects = shapes.varied_image(rng, large=k % 2 == 0)
        assert shapes.parse_caption(text) == objects and image.mode == "RGB"
        assert min(image.size) >= 36 and max(image.size) <= (320 if k % 2 == 0 else 160)
    chunks = set()
    for k in range(30):
        frames, fps, text, (o,) = shapes.varied_video(rng, large=k % 2 == 0)
        assert text == o.phrase() and 1.0 <= fps <= 10.0
        _, grid, _ = media.preprocess_video(frames, fps=fps)
        assert grid[:, 0].sum() >= 2
        chunks.add(len(grid))
    assert chunks == {1, 2, 3, 4}


@pytest.mark.parametrize("kind", shapes.BACKGROUNDS)
def test_varied_backgrounds_are_seeded_and_leave_objects_visible(kind):
    """Every background style is fixed by its seed, and an object painted on it, small or large, in any
    colour, differs from the background under it."""
    from PIL import Image, ImageDraw
    size = (72, 48)
    a, b = (shapes.varied_background(np.random.default_rng(5), ["red"], size, kind) for _ in range(2))
    assert np.array_equal(np.asarray(a), np.asarray(b))
    rng = np.random.default_rng(6)
    for colour in shapes.COLOURS:
        for shape in shapes.SHAPES:
            for r in (3.0, 12.0):
                background = shapes.varied_background(rng, [colour], size, kind)
                look = shapes.Look.random(rng, colour, r)
                image, mask = background.copy(), Image.new("L", size, 0)
                shapes._paint(ImageDraw.Draw(image), shape, look, 36.0, 24.0, r)
                shapes._paint(ImageDraw.Draw(mask), shape, shapes.Look(255, None, 0, look.angle), 36.0, 24.0, r)
                inside = np.asarray(mask) > 0
                diff = np.abs(np.asarray(image, float) - np.asarray(background, float)).sum(-1)[inside]
                assert inside.sum() >= 9 and diff.mean() > 60, (colour, shape, r, diff.mean())


def test_varied_scenes_draw_tiny_frames_small_objects_and_pairs_often():
    """The training scenes put weight where held-out captions fail: tiny frames, small objects, two objects."""
    rng = np.random.default_rng(11)
    scenes = [shapes.varied_image(rng) for _ in range(200)]
    tiny = sum(max(image.size) <= 56 for image, _, _ in scenes)
    pairs = sum(len(objects) == 2 for _, _, objects in scenes)
    assert tiny >= 40 and pairs >= 100, (tiny, pairs)
    radii = [shapes.varied_radius(rng, (100, 100), 0.2, 0.3) for _ in range(400)]
    assert 80 <= sum(r < 12.5 for r in radii) <= 160 and min(radii) >= 7.0


def test_small_object_share_sets_how_often_varied_objects_are_small(monkeypatch):
    """p_small (train_nano --small-objects) is the share of varied objects drawn at 7-12% of the short side:
    none at 0, all at 1, and images and clips pass it on for every object they draw."""
    rng = np.random.default_rng(12)
    assert all(shapes.varied_radius(rng, (100, 100), 0.2, 0.3, p_small=0.0) >= 20.0 for _ in range(200))
    assert all(shapes.varied_radius(rng, (100, 100), 0.2, 0.3, p_small=1.0) <= 12.0 for _ in range(200))
    asked, radius = [], shapes.varied_radius
    monkeypatch.setattr(shapes, "varied_radius", lambda *a: asked.append(a[-1]) or radius(*a))
    shapes.varied_image(rng, p_small=0.9)
    shapes.varied_video(rng, p_small=0.8)
    assert asked[-1] == 0.8 and set(asked[:-1]) == {0.9}, asked


def test_tiny_frame_share_sets_how_often_varied_frames_are_tiny():
    """p_tiny (train_nano --tiny-frames) is the share of not-large varied frames drawn 36-56 px a side: the
    default keeps FRAME_WEIGHTS (so default draws are those of before), 1 gives only tiny frames, 0 only the
    small squares of other families that happen to be as small, and images and clips pass it on; large
    frames are never tiny."""
    assert shapes.frame_weights(shapes.P_TINY_FRAME) == list(shapes.FRAME_WEIGHTS)
    assert abs(sum(shapes.frame_weights(0.8)) - 1.0) < 1e-12

    def tiny(p, large=False, video=False, n=200):
        rng = np.random.default_rng(13)
        return sum(max(shapes.varied_size(rng, large, video, p_tiny=p)) <= 56 for _ in range(n))
    assert tiny(0.0) <= 30 and tiny(1.0) == 200 and tiny(1.0, video=True) == 200 and tiny(1.0, large=True) == 0
    assert 130 <= tiny(0.8) <= 190, tiny(0.8)
    rng = np.random.default_rng(14)
    assert max(shapes.varied_image(rng, p_tiny=1.0)[0].size) <= 56
    assert max(shapes.varied_video(rng, p_tiny=1.0)[0][0].size) <= 56


def test_by_style_records_heldout_draws_without_changing_them(tmp_path):
    """tools/nano_failures.py --by-style notes each held-out draw's frame, background and object sizes; the
    draws, and the random stream after them, are those of eval-nano."""
    from k25ref import nano_eval, shapes_eval
    sys.path.insert(0, TOOLS)
    import nano_failures
    for kind in ("image", "video"):
        for k in range(6):
            plain, noted = (np.random.default_rng([77, k]) for _ in range(2))
            a = nano_eval.draw(kind, "held-out", plain, str(tmp_path))
            with nano_failures.recording({}) as scene:
                b = nano_eval.draw(kind, "held-out", noted, str(tmp_path))
            assert a[1] == b[1] and plain.random() == noted.random()
            if kind == "image":
                assert np.array_equal(np.asarray(a[0]), np.asarray(b[0]))
            assert scene["frame"] in shapes_eval.FRAMES and scene["background"] in shapes_eval.BACKGROUNDS
            assert len(scene["sizes"]) == len(b[2]) and min(scene["sizes"]) >= 3
            groups = dict(nano_failures.groups(kind, scene, b[0], 1))
            assert groups["smallest object"] == nano_failures.size_bin(min(scene["sizes"]))
    assert shapes_eval.frame_size.__name__ == "frame_size"                   # restored on leaving
    table = {"image": {"all": {"all": [3, 4]}, "frame": {"tiny": [1, 2], "wide": [2, 2]}}}
    other = {"image": {"all": {"all": [1, 4]}, "frame": {"tiny": [0, 2], "wide": [1, 2]}}}
    text = nano_failures.markdown({"A": table, "B": other}, ["A", "B"])
    assert "| images | frame | tiny (n=2) | 50% | 0% |" in text and "| images | all | all (n=4) | 75% | 25% |" in text


def test_by_style_on_varied_scenes_notes_frames_and_radii_without_changing_them():
    """--by-style --generator varied: the training family's scenes, the same pixels and random stream as
    shapes.varied_* drawn plainly, with the frame (tiny or other) and every object's radius noted."""
    sys.path.insert(0, TOOLS)
    import nano_failures
    for kind in ("image", "video"):
        for k in range(8):
            plain, noted = (np.random.default_rng([78, k]) for _ in range(2))
            a = nano_failures.draw_varied(kind, plain)
            with nano_failures.recording_varied({}) as scene:
                b = nano_failures.draw_varied(kind, noted)
            assert a[1] == b[1] and plain.random() == noted.random()
            first = (lambda s: s if kind == "image" else s[0][0])
            assert np.array_equal(np.asarray(first(a[0])), np.asarray(first(b[0])))
            assert scene["frame"] == ("tiny" if max(first(b[0]).size) <= 56 else "other")
            assert len(scene["sizes"]) == len(b[2]) and min(scene["sizes"]) >= 3
            groups = dict(nano_failures.groups(kind, scene, b[0], 1))
            assert "file" not in groups and "background" not in groups and groups["frame"] == scene["frame"]
    assert shapes.varied_radius.__name__ == "varied_radius"                  # restored on leaving
    text = nano_failures.markdown({"A": {"image": {"all": {"all": [1, 2]}}}}, ["A"], "varied")
    assert text.startswith("| varied | group | value | A |")
    for args in (["--generator", "varied"], ["--generator", "varied", "--by-style", "--probe", __file__]):
        with pytest.raises(SystemExit) as e:
            nano_failures.main(args)
        assert e.value.code == 2


def test_heldout_coverage_is_the_shape_geometry():
    """The held-out rasteriser covers the area of the shape it names, centred where asked."""
    from k25ref import shapes_eval
    for shape, area in (("circle", np.pi * 20 ** 2), ("square", (1.76 * 20) ** 2),
                        ("triangle", 3 * np.sqrt(3) / 4 * (1.1 * 20) ** 2)):
        a = shapes_eval.coverage(shape, 50.0, 40.0, 20.0, 0.1, 100, 120)
        assert a.shape == (100, 120) and abs(a.sum() / area - 1) < 0.02, shape
        ys, xs = np.mgrid[0:100, 0:120] + 0.5
        assert abs((a * xs).sum() / a.sum() - 50) < 0.5 and abs((a * ys).sum() / a.sum() - 40) < 0.5, shape


def test_heldout_images_are_seeded_and_follow_the_grammar():
    from k25ref import shapes_eval
    rng = np.random.default_rng(9)
    sizes = []
    for _ in range(30):
        image, text, objects = shapes_eval.random_image(rng)
        assert shapes.parse_caption(text) == objects
        sizes.append(image.size)
    assert min(min(s) for s in sizes) < 57 and max(max(s) for s in sizes) > 200       # tiny and large frames
    assert any(w > 1.4 * h for w, h in sizes) and any(h > 1.4 * w for w, h in sizes)  # wide and tall
    a, b = (shapes_eval.random_image(np.random.default_rng(3)) for _ in range(2))
    assert a[1] == b[1] and np.array_equal(np.asarray(a[0]), np.asarray(b[0]))


def test_heldout_clips_are_gif_and_mp4_files_of_one_to_four_chunks(tmp_path):
    """Clips are read back from their files by k25ref.media at 2 fps: 1-4 chunks, single chunks included."""
    from k25ref import media, shapes_eval
    rng = np.random.default_rng(10)
    chunks, kinds = [], set()
    for k in range(24):
        path, text, (o,) = shapes_eval.random_video(rng, str(tmp_path), f"c{k}")
        assert text == o.phrase() and os.path.exists(path)
        kinds.add(os.path.splitext(path)[1])
        _, grid, stamps = media.preprocess_video(path)
        assert grid[:, 0].sum() >= 2 and len(stamps) == len(grid)
        chunks.append(len(grid))
    assert kinds == {".gif", ".mp4"} and set(chunks) <= {1, 2, 3, 4} and chunks.count(1) >= 4, chunks


def test_varied_scenes_give_their_object_masks_without_changing_the_draw():
    """shapes.varied_image / varied_video with a `masks` list draw exactly what they draw without one and
    append where the objects are: white on black, a frame per frame, at the named place or moving the named way."""
    for k in range(12):
        plain, noted, masks = np.random.default_rng([9, k]), np.random.default_rng([9, k]), []
        a, b = shapes.varied_image(plain), shapes.varied_image(noted, masks=masks)
        assert np.array_equal(np.asarray(a[0]), np.asarray(b[0])) and plain.random() == noted.random()
        (mask,) = masks
        on = np.asarray(mask).max(-1) > 127
        assert mask.size == a[0].size and on.any() and set(np.unique(np.asarray(mask)).tolist()) <= {0, 255}
        if len(a[2]) == 1:
            ys, xs = np.nonzero(on)
            fx, fy = shapes.POSITIONS[a[2][0].position]
            assert abs(xs.mean() / mask.size[0] - fx) < 0.2 and abs(ys.mean() / mask.size[1] - fy) < 0.2
        plain, noted, masks = np.random.default_rng([10, k]), np.random.default_rng([10, k]), []
        frames, _, _, (o,) = shapes.varied_video(plain)
        again = shapes.varied_video(noted, masks=masks)[0]
        assert all(np.array_equal(np.asarray(f), np.asarray(g)) for f, g in zip(frames, again))
        assert len(masks) == len(frames)
        centres = [np.argwhere(np.asarray(m).max(-1) > 127).mean(0)[::-1] for m in (masks[0], masks[-1])]
        step = np.sign(np.round(centres[1] - centres[0]))
        assert tuple(step) == shapes.DIRECTIONS[o.direction], (o, centres)


def test_token_labels_read_varied_scenes_off_the_drawn_mask(torch_side):
    """On varied scenes (no flat background) the read-out's targets come from the drawn object mask: object
    tokens carry only the objects drawn, and small objects in tiny frames are objects, not background."""
    from k25ref import media
    train_nano, _ = torch_side
    rng, labelled, drawn, tiny_small = np.random.default_rng(12), 0, 0, 0
    for k in range(40):
        masks = []
        image, _, objects = shapes.varied_image(rng, large=k % 4 == 0, masks=masks)
        pv, grid = media.preprocess_image(image)
        kind, where, on = train_nano.token_labels(pv, grid, objects, media.preprocess_image(masks[0])[0])
        kinds = {1 + list(shapes.COLOURS).index(o.colour) * 3 + shapes.SHAPES.index(o.shape) for o in objects}
        assert set(kind[on].tolist()) <= kinds and (kind[~on] == 0).all()
        labelled, drawn = labelled + len(set(kind[on].tolist())), drawn + len(objects)
        tiny_small += max(image.size) <= 56 and on.any()
    assert labelled >= 0.9 * drawn and tiny_small >= 5, (labelled, drawn, tiny_small)


@pytest.mark.parametrize("option,value", [("--varied", "2"), ("--small-objects", "-0.1"), ("--qat", "x"),
                                          ("--p-large", "1.5"), ("--varied", "nan"), ("--tiny-frames", "1.01")])
def test_share_options_refuse_values_outside_zero_to_one(torch_side, option, value, capsys):
    """Shares (--varied, --small-objects, --tiny-frames, --qat, --p-large) are fractions: anything else is a one-line usage
    error before any training starts."""
    train_nano, _ = torch_side
    from k25ref.options import share_arg
    assert share_arg("0") == 0.0 and share_arg("1") == 1.0
    with pytest.raises(SystemExit) as e:
        train_nano.main([option, value, "--quick"])
    assert e.value.code == 2 and f"argument {option}: {value!r}" in capsys.readouterr().err


@pytest.mark.parametrize("option,value", [("--minutes", "0"), ("--lr", "-0.001"), ("--lr", "nan"), ("--probe", "-1"),
                                          ("--decoder-lr", "inf"), ("--threads", "0"), ("--save-every", "0"),
                                          ("--seed", "-1"), ("--steps", "0")])
def test_numeric_options_refuse_values_at_their_edges(torch_side, option, value, capsys):
    """Minutes, rates, thread counts and the read-out's weight have a sign: 0 minutes, a negative rate or
    weight, NaN or infinity are one-line usage errors, not a run that does nothing or diverges."""
    train_nano, _ = torch_side
    with pytest.raises(SystemExit) as e:
        train_nano.main([option, value, "--quick"])
    assert e.value.code == 2 and f"argument {option}: {value!r}" in capsys.readouterr().err


@pytest.mark.parametrize("argv", [["--probe", "0", "--probe-per-object"], ["--probe", "0", "--probe-file", "p.pt"],
                                  ["--tiny-frames", "0.8"], ["--varied", "0", "--small-objects", "0.5"],
                                  ["--probe", "0.5", "--vision-only"]])
def test_options_that_would_be_ignored_are_refused(torch_side, argv, capsys):
    """--probe-per-object or --probe-file with --probe 0 (and no --vision-only) would weigh, load or save a
    read-out that does not exist, and --tiny-frames or --small-objects without --varied would shape scenes that
    are never drawn, and --probe beside --vision-only would weigh the only loss against nothing: a one-line
    usage error, not a run that silently ignores them."""
    train_nano, _ = torch_side
    with pytest.raises(SystemExit) as e:
        train_nano.main(argv + ["--quick"])
    flag = next(a for a in reversed(argv) if a.startswith("--") and a != "--varied" and a != "--probe")
    assert e.value.code == 2 and f"error: {flag} " in capsys.readouterr().err


@pytest.mark.parametrize("argv,named", [
    (["--freeze-decoder"], "--freeze-decoder"),
    (["--freeze-decoder", "--init", NANO_PATH, "--vision-only"], "--freeze-decoder"),
    (["--freeze-decoder", "--init", NANO_PATH, "--decoder-lr", "0.5"], "--decoder-lr"),
    (["--freeze-decoder", "--init", NANO_PATH, "--text-batch", "4"], "--text-batch"),
    (["--freeze-decoder", "--init", NANO_PATH, "--qat", "0"], "--qat"),
    (["--freeze-decoder", "--init", NANO_PATH, "--image-batch", "0", "--video-batch", "0"], "--image-batch"),
    (["--vision-only", "--image-batch", "0", "--video-batch", "0"], "--image-batch"),
    (["--text-batch", "0", "--chat-text-batch", "0", "--image-batch", "0", "--video-batch", "0"], "--text-batch"),
    (["--probe-file", "/nonexistent/probe.pt"], "--probe-file"), (["--probe-file", "."], "--probe-file"),
    (["--probe-file", ""], "--probe-file"),
    (["--freeze-decoder", "--init", NANO_PATH, "--text-teacher", NANO_PATH], "--text-teacher"),
    (["--vision-only", "--text-teacher", NANO_PATH], "--text-teacher"),
    (["--text-teacher", NANO_PATH, "--text-batch", "0", "--chat-text-batch", "0"], "--text-teacher")])
def test_frozen_decoder_and_empty_batches_are_refused_where_meaningless(torch_side, argv, named, capsys):
    """--freeze-decoder needs a decoder to keep (--init) and refuses the options that only shape the decoder's
    training; a run whose batches are all empty (or, training only the tower, whose media batches are) has
    nothing to learn from; a read-out file that could not be saved would fail only after the whole run. Each is a
    one-line usage error naming the option, before any work."""
    train_nano, _ = torch_side
    with pytest.raises(SystemExit) as e:
        train_nano.main(argv + ["--quick"])
    err = capsys.readouterr().err
    assert e.value.code == 2 and "Traceback" not in err
    assert "error: " in err.strip().splitlines()[-1] and named in err.strip().splitlines()[-1]


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no named pipes here")
def test_probe_file_that_is_a_pipe_is_refused(torch_side, tmp_path, capsys):
    """An existing read-out file is read at the start: a named pipe would block there, so it is a usage error."""
    train_nano, _ = torch_side
    pipe = tmp_path / "probe.pt"
    os.mkfifo(pipe)
    with pytest.raises(SystemExit) as e:
        train_nano.main(["--probe-file", str(pipe), "--quick"])
    err = capsys.readouterr().err
    assert e.value.code == 2 and "--probe-file" in err and "not a regular file" in err


@pytest.mark.parametrize("option", ["--text-batch", "--chat-text-batch", "--image-batch", "--video-batch"])
def test_batch_sizes_are_whole_numbers_of_zero_or_more(torch_side, option, capsys):
    train_nano, _ = torch_side
    from k25ref.options import nonnegative_int
    assert nonnegative_int("0") == 0 and nonnegative_int("12") == 12
    for value in ("-1", "2.5"):
        with pytest.raises(SystemExit) as e:
            train_nano.main([option, value, "--quick"])
        assert e.value.code == 2 and f"argument {option}: {value!r}" in capsys.readouterr().err


def test_frozen_decoder_trains_the_tower_on_captions_and_saves_the_decoder_byte_for_byte(torch_side, tmp_path):
    """--freeze-decoder: the tower and projector learn from captions, and every decoder tensor of the saved
    folder is the --init folder's, bytes and dtype (INT4 experts are not quantised a second time, which would
    move them); the log shows caption steps without text."""
    import json
    from k25ref.checkpoint import Checkpoint
    train_nano, _ = torch_side
    hub = train_nano.nano_hub_config()
    train_nano.save_released(train_nano.build_model(hub, seed=3), hub, str(tmp_path / "init"))
    train_nano.main(["--quick", "--freeze-decoder", "--init", str(tmp_path / "init"), "--threads", "1",
                     "--seed", "3", "--out", str(tmp_path / "frozen")])
    init, frozen = Checkpoint(str(tmp_path / "init")), Checkpoint(str(tmp_path / "frozen"))
    assert set(init.names()) == set(frozen.names())
    vision = set(train_nano.vision_tensors(train_nano.from_hf(hub)))
    for name in init.names():
        same = init.info(name).dtype == frozen.info(name).dtype and np.array_equal(init.raw(name), frozen.raw(name))
        assert same or name in vision, name
    assert any(not np.array_equal(init.raw(n), frozen.raw(n)) for n in vision)
    steps = [json.loads(line) for line in open(tmp_path / "frozen" / "train_log.jsonl")]
    assert steps and all(r["text_loss"] == 0.0 and r["media_loss"] > 0 for r in steps)


@pytest.mark.parametrize("config", ['{"text_config": {"vocab_size": 163840}}', '{"text_config": {}}', "not json"])
def test_text_teacher_of_another_vocabulary_is_refused(torch_side, tmp_path, config, capsys):
    """A teacher whose next-token distributions are not over the nano's 4096 ids (another model, or a config
    that does not say) cannot teach: a one-line usage error before any work, not a shape error at step 1."""
    train_nano, _ = torch_side
    (tmp_path / "config.json").write_text(config)
    with pytest.raises(SystemExit) as e:
        train_nano.main(["--text-teacher", str(tmp_path), "--quick"])
    err = capsys.readouterr().err
    assert e.value.code == 2 and "error: --text-teacher: " in err and "4096" in err and "Traceback" not in err


def test_text_teacher_is_the_kl_to_its_folder_and_what_the_text_trains_on(torch_side, tmp_path, monkeypatch):
    """--text-teacher: a text batch's KL(teacher || model) is the mean over the masked targets of
    sum_v p_t (log p_t - log p_m), 0 when the model is the teacher, and it carries gradient to the model; in a
    run, the text batches' gradient comes from that KL and none from their cross entropy, which is still logged
    (text_loss) beside it (text_kl, from 0 when --init is the teacher)."""
    import json
    import torch
    train_nano, oracle = torch_side
    from k25ref.tokenizer import Tokenizer
    hub = train_nano.nano_hub_config()
    for seed in (3, 4):
        train_nano.save_released(train_nano.build_model(hub, seed=seed), hub, str(tmp_path / f"s{seed}"))
    teacher, same, other = (oracle.load_oracle(str(tmp_path / f)) for f in ("s3", "s3", "s4"))
    data = train_nano.Data(Tokenizer.from_pretrained(str(tmp_path / "s3")), seed=0)
    samples = data.batch(["text", "chat_text"])
    pad = data.pad
    ce, kl = train_nano.batch_loss(same, samples, pad, teacher=teacher)
    assert abs(kl.item()) < 1e-6 and ce.item() == train_nano.batch_loss(same, samples, pad)[0].item() > 0
    ce, kl = train_nano.batch_loss(other, samples, pad, teacher=teacher)
    student, targets, _ = train_nano.masked_logits(other, samples, pad)
    p_t = torch.softmax(train_nano.masked_logits(teacher, samples, pad)[0], -1).double()
    by_hand = (p_t * (p_t.log() - torch.log_softmax(student, -1).double())).sum(-1).mean()
    assert kl.item() > 1e-3 and abs(kl.item() - by_hand.item()) < 1e-5 * by_hand.item() + 1e-7
    kl.backward()
    assert other.lm_head.weight.grad.abs().sum() > 0 and teacher.lm_head.weight.grad is None
    taught = []                                   # (cross entropy, KL) of each text batch, their gradients kept
    def spy(*args, **kwargs):
        ce, second = real(*args, **kwargs)
        if kwargs.get("teacher") is not None:
            ce = ce.detach().requires_grad_()        # a leaf: .grad is set if the step's loss includes it
            second.retain_grad()
            taught.append((ce, second))
        return ce, second
    real = train_nano.batch_loss
    monkeypatch.setattr(train_nano, "batch_loss", spy)
    train_nano.main(["--quick", "--qat", "0", "--threads", "1", "--seed", "3", "--init", str(tmp_path / "s3"),
                     "--text-teacher", str(tmp_path / "s3"), "--out", str(tmp_path / "run")])
    assert len(taught) == 4 and all(ce.grad is None and kl.grad is not None for ce, kl in taught)
    steps = [json.loads(line) for line in open(tmp_path / "run" / "train_log.jsonl")]
    assert abs(steps[0]["text_kl"]) < 1e-4 and all(r["text_kl"] >= 0 and r["text_loss"] > 0 for r in steps)
    assert [r["text_loss"] for r in steps] == [round(ce.item(), 4) for ce, _ in taught]


@pytest.mark.parametrize("size", ["192x3", "96x4", "288x4"])
def test_grown_tower_sees_what_the_smaller_one_saw(torch_side, size):
    """--grow-from: a tower grown wider (channels repeated) or deeper (identity blocks) gives the projector's
    output of the smaller tower it grew from, before any training; with noise the copies differ."""
    import torch
    from k25ref import media
    train_nano, _ = torch_side
    small = train_nano.build_model(train_nano.nano_hub_config(), seed=3).eval()
    for module in small.model.vision_tower.modules():                  # biases and norms not at their init
        if isinstance(module, (torch.nn.LayerNorm, torch.nn.Linear)) and module.bias is not None:
            torch.nn.init.normal_(module.bias, std=0.1)
    pv, grid = media.preprocess_image(shapes.varied_image(np.random.default_rng(5))[0])
    with torch.no_grad():
        want = train_nano.vision_features(small, pv, grid)
        grown = train_nano.build_model(train_nano.nano_hub_config(train_nano.tower(size)), seed=4).eval()
        train_nano.grow_vision(grown, small, noise=0.0)
        got = train_nano.vision_features(grown, pv, grid)
        assert float((got - want).abs().max()) < 1e-4 * float(want.abs().max())
        train_nano.grow_vision(grown, small, noise=0.01)
        moved = float((train_nano.vision_features(grown, pv, grid) - want).abs().max())
    assert (moved > 1e-4 * float(want.abs().max())) == (size != "96x4")         # only copies get noise
    with pytest.raises(ValueError, match="grows only"):
        train_nano.grow_vision(train_nano.build_model(train_nano.nano_hub_config(train_nano.tower("144x3")), 0), small)


def test_grow_from_needs_a_larger_tower(torch_side, tmp_path):
    """--grow-from without --tower, with --vision-from, or into a tower that is not a whole multiple as wide
    or is shallower: a one-line usage error."""
    train_nano, _ = torch_side
    hub = train_nano.nano_hub_config()
    train_nano.save_released(train_nano.build_model(hub, seed=5), hub, str(tmp_path / "small"))
    for extra in ([], ["--tower", "144x3"], ["--tower", "192x2"], ["--tower", "192x3", "--vision-from", str(tmp_path / "small")]):
        with pytest.raises(SystemExit) as e:
            train_nano.main(["--quick", "--grow-from", str(tmp_path / "small")] + extra)
        assert e.value.code == 2
    for folder in (tmp_path / "missing", tmp_path / "small" / "config.json"):          # not a checkpoint folder
        with pytest.raises(SystemExit) as e:
            train_nano.main(["--quick", "--tower", "192x3", "--grow-from", str(folder)])
        assert e.value.code == 2


def test_tower_option_sizes_the_vision_tower_and_follows_the_folder(torch_side, tmp_path):
    """--tower WIDTHxBLOCKS: heads of 48, MLP twice the width, 96x3 the shipped tower; a bad value or one
    that contradicts the --vision-from folder is a one-line usage error."""
    train_nano, oracle = torch_side
    assert train_nano.tower("96x3") == train_nano.NANO_VISION
    assert {k: v for k, v in train_nano.tower("192X4").items() if k.startswith("vt_")} == {
        "vt_hidden_size": 192, "vt_num_hidden_layers": 4, "vt_num_attention_heads": 4, "vt_intermediate_size": 384}
    for bad in ("100x3", "96", "0x3", "96x0", "axb", "96x3x2"):
        with pytest.raises(SystemExit) as e:
            train_nano.main(["--tower", bad, "--quick"])
        assert e.value.code == 2
    common = ["--quick", "--qat", "0", "--threads", "1", "--seed", "4", "--varied", "1"]
    train_nano.main(common + ["--vision-only", "--tower", "144x2", "--out", str(tmp_path / "v")])
    train_nano.main(common + ["--lr", "0", "--vision-from", str(tmp_path / "v"), "--out", str(tmp_path / "next")])
    assert train_nano.vision_of(str(tmp_path / "next")) == train_nano.tower("144x2")
    vision, after = (oracle.load_oracle(str(tmp_path / d)).model for d in ("v", "next"))
    assert train_nano.vision_of(str(tmp_path / "v")) == train_nano.tower("144x2")
    assert all(a.shape == b.shape and bool((a == b).all()) for a, b in
               zip(vision.vision_tower.state_dict().values(), after.vision_tower.state_dict().values()))
    hub = train_nano.nano_hub_config()
    train_nano.save_released(train_nano.build_model(hub, seed=5), hub, str(tmp_path / "init"))
    train_nano.main(common + ["--lr", "0", "--init", str(tmp_path / "init"), "--vision-from", str(tmp_path / "v"),
                              "--out", str(tmp_path / "both")])
    init, both = (oracle.load_oracle(str(tmp_path / d)) for d in ("init", "both"))
    for a, b in ((init.model.language_model.embed_tokens, both.model.language_model.embed_tokens),
                 (init.model.language_model.layers[0], both.model.language_model.layers[0]),
                 (init.lm_head, both.lm_head), (vision.vision_tower, both.model.vision_tower),
                 (vision.mm_projector, both.model.mm_projector)):
        assert all(bool((x == y).all()) for x, y in zip(a.state_dict().values(), b.state_dict().values()))
    with pytest.raises(SystemExit) as e:
        train_nano.main(common + ["--tower", "96x3", "--vision-from", str(tmp_path / "v"),
                                  "--out", str(tmp_path / "x")])
    assert e.value.code == 2


def test_read_objects_names_what_the_read_out_says(torch_side, monkeypatch):
    """read_objects votes over each object's tokens: a read-out that returns the targets reads every object
    right; one that swaps two shapes reads them wrong; an object without tokens counts as not seen."""
    import torch
    from k25ref import media
    train_nano, _ = torch_side
    n_kinds = 1 + len(shapes.COLOURS) * len(shapes.SHAPES)
    D = n_kinds + len(shapes.POSITIONS)

    def features(model, pv, grid):                       # the targets themselves, one-hot
        kind, where, _ = train_nano.token_labels(pv, grid, model["objects"], model["drawn"])
        return torch.cat([torch.eye(n_kinds)[kind], torch.eye(len(shapes.POSITIONS))[where]], 1)

    monkeypatch.setattr(train_nano, "vision_features", features)
    probe = train_nano.Probe(D)
    with torch.no_grad():
        probe.kind.weight.copy_(10 * torch.eye(n_kinds, D))
        probe.kind.bias.zero_()
        probe.position.weight.copy_(10 * torch.eye(D)[n_kinds:])
        probe.position.bias.zero_()
    rng, reads = np.random.default_rng(13), []
    for _ in range(6):
        masks = []
        image, _, objects = shapes.varied_image(rng, large=True, masks=masks)
        pv, grid = media.preprocess_image(image)
        drawn = media.preprocess_image(masks[0])[0]
        model = {"objects": objects, "drawn": drawn}
        reads += train_nano.read_objects(model, probe, pv, grid, objects, drawn)
        circles = [i for i, o in enumerate(objects) if o.shape == "circle"]
        with torch.no_grad():                             # circle <-> square in the kind head
            swapped = train_nano.Probe(D)
            swapped.load_state_dict(probe.state_dict())
            rows = [1 + c * 3 + s for c in range(len(shapes.COLOURS)) for s in (0, 1)]
            swapped.kind.weight[rows] = probe.kind.weight[[r + (1 if r % 3 == 1 else -1) for r in rows]]
        for i in circles:
            assert train_nano.read_objects(model, swapped, pv, grid, objects, drawn)[i][2] is False
    assert reads and all(r == (True, True, True, True) for r in reads), reads
    blank = np.full_like(drawn, -1.0)
    assert train_nano.read_objects({"objects": objects, "drawn": blank}, probe, pv, grid, objects, blank)[0] == \
        (False, False, False, False)


def test_probe_per_object_counts_each_object_once_whatever_its_size(torch_side, monkeypatch):
    """--probe-per-object: the read-out loss is the mean over the background and each object of the mean over
    its tokens (an object of one token weighs as much as one of three); by default, the mean over tokens."""
    import torch
    import torch.nn.functional as F
    train_nano, _ = torch_side
    kind = torch.tensor([0, 0, 0, 0, 4, 4, 4, 9])           # background x4, a large object x3, a small one x1
    where = torch.tensor([0, 0, 0, 0, 2, 2, 2, 4])
    on = kind > 0
    monkeypatch.setattr(train_nano, "token_labels", lambda *a: (kind, where, on))
    sample = (None, None, None, None, [shapes.Shape("red", "circle", position="center")], None)
    torch.manual_seed(0)
    feats = torch.randn(8, 16)
    for per_object in (False, True):
        probe = train_nano.Probe(16, per_object)
        kind_ce = F.cross_entropy(probe.kind(feats), kind, reduction="none")
        where_ce = F.cross_entropy(probe.position(feats), where, reduction="none")
        if per_object:
            groups = [[0, 1, 2, 3], [4, 5, 6], [7]]
            want = sum(kind_ce[g].mean() for g in groups) / 3 + sum(where_ce[g].mean() for g in groups[1:]) / 2
        else:
            want = kind_ce.mean() + where_ce[on].mean()
        assert torch.allclose(probe.loss(feats, sample), want), per_object
    assert train_nano.per_group_mean(torch.tensor([3, 0, 3, 7])).tolist() == [0.5, 1.0, 0.5, 1.0]


def test_probe_measures_a_tower_on_heldout_objects(torch_side, tmp_path):
    """tools/nano_failures.py --probe: the held-out draws are recorded with their objects' coverage (where the
    picture shows the object), preprocessed like the picture, and every object is counted once per group."""
    from k25ref import nano_eval
    train_nano, _ = torch_side
    import nano_failures
    for kind in ("image", "video"):
        for k in range(4):
            with nano_failures.recording({}, masks=True) as scene:
                sample, _, objects = nano_eval.draw(kind, "held-out", np.random.default_rng([78, k]), str(tmp_path))
            pv, grid, drawn = nano_failures.pixels(kind, sample, scene)
            assert drawn.shape == pv.shape and (drawn > 0).any()
            if kind == "image":
                covered = np.max(scene["covered"], axis=0) > 0.5
                picture = np.asarray(sample).astype(int)
                inside, outside = picture[covered].mean(0), picture[~covered].mean(0)
                assert len(scene["covered"]) == len(objects) and np.abs(inside - outside).sum() > 30
            else:
                assert scene["frame_ms"] > 0 and len(scene["covered"]) >= 2
    args = ["--quick", "--vision-only", "--qat", "0", "--threads", "1", "--seed", "5", "--varied", "1"]
    train_nano.main(args + ["--probe-file", str(tmp_path / "p.pt"), "--out", str(tmp_path / "v")])
    readers = {"v": train_nano.load_probe(str(tmp_path / "v"), str(tmp_path / "p.pt"))}
    tables = nano_failures.probe_table(readers, 3, 2, seed=5150)
    rngs = [nano_eval.eval_rng(5150, kind, "held-out") for kind in ("image", "video")]
    objects = [sum(len(nano_eval.draw(kind, "held-out", rng, str(tmp_path))[2]) for _ in range(n))
               for kind, rng, n in (("image", rngs[0], 3), ("video", rngs[1], 2))]
    for kind, n in zip(("image", "video"), objects):
        table = tables["v"][kind]
        assert table["all"]["all"][4] == n and sum(c[4] for c in table["object size"].values()) == n
        assert all(0 <= c <= counts[4] for group in table.values() for counts in group.values() for c in counts[:4])
    text = nano_failures.probe_markdown(tables, ["v"])
    assert f"| images | all | all (n={objects[0]}) | " in text and "seen / colour / shape / where" in text


def test_varied_clips_palette_pass_reaches_every_frame_the_sampler_keeps():
    """The GIF-style palette pass (spent only on the frames 2 fps sampling keeps) reaches all of them in about
    40% of the clips: the kept frames of a clip then have at most 256 colours each."""
    from k25ref import media
    rng, paletted = np.random.default_rng(15), 0
    for k in range(40):
        frames, fps, _, _ = shapes.varied_video(rng, large=True)             # large: noise gives thousands
        kept = media.sample_frame_indices(len(frames), fps)
        paletted += max(len(np.unique(np.asarray(frames[i]).reshape(-1, 3), axis=0)) for i in kept) <= 256
    assert 8 <= paletted <= 28, paletted
