"""Synthetic shapes: the images and videos the nano model learns to describe, and the grammar of their captions.

An image holds one or two objects. Each object has a colour, a shape and a position, and the caption names
them in a fixed grammar, objects in reading order (top left, top right, center, bottom left, bottom right):

    a red circle in the top left
    a blue square in the top right and a white triangle in the center

A video holds one object moving in one direction over 4-8 frames:

    a green triangle moving left

Sizes, aspect ratios, backgrounds, colour tints and object sizes are random, so a describer has to look at the
pixels: nothing about the caption can be guessed from the image geometry. Everything is drawn with Pillow
from a `numpy.random.Generator`, so a seed fixes a data set exactly.

`varied_image` / `varied_video` draw the same grammar with everything incidental drawn wider (frame shapes,
tiny frames and small objects most, flat to textured backgrounds, looks, file passes, 1-10 fps clips of 1-4
chunks) for training; `k25ref.shapes_eval` draws it
with code of its own, for evaluation only.

`parse_caption` reads a caption back into objects; `score_caption` compares a generated caption with the
truth attribute by attribute (what `k25ref eval-nano` reports).
"""
import io
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

from k25ref import media

COLOURS = {"red": (220, 30, 30), "green": (40, 170, 60), "blue": (40, 80, 220), "yellow": (240, 220, 40),
           "purple": (140, 50, 170), "orange": (250, 140, 20), "white": (250, 250, 250)}
SHAPES = ("circle", "square", "triangle")
POSITIONS = {"top left": (0.25, 0.25), "top right": (0.75, 0.25), "center": (0.5, 0.5),
             "bottom left": (0.25, 0.75), "bottom right": (0.75, 0.75)}     # reading order = caption order
DIRECTIONS = {"left": (-1, 0), "right": (1, 0), "up": (0, -1), "down": (0, 1)}
IMAGE_PROMPT = "Describe the image."
VIDEO_PROMPT = "Describe the video."
VIDEO_FPS = 2.0            # frames per second of generated videos: the 2 fps sampler keeps every frame


@dataclass(frozen=True)
class Shape:
    """One drawn object; `position` is a POSITIONS key for images, `direction` a DIRECTIONS key for videos."""
    colour: str
    shape: str
    position: str = ""
    direction: str = ""

    def phrase(self):
        where = f"moving {self.direction}" if self.direction else f"in the {self.position}"
        return f"a {self.colour} {self.shape} {where}"


def caption(objects):
    """Objects (already in reading order) -> the caption sentence."""
    return " and ".join(o.phrase() for o in objects)


# ----------------------------------------------------------------------------
# drawing


SMALL, LARGE = (56, 112), (112, 320)      # side ranges in pixels: 4-16 and 16-~130 media tokens


def random_size(rng, large=None, p_large=0.25):
    """A random (width, height), each side uniform in SMALL or LARGE; large=None picks LARGE with p_large."""
    if large is None:
        large = rng.random() < p_large
    lo, hi = LARGE if large else SMALL
    return int(rng.integers(lo, hi + 1)), int(rng.integers(lo, hi + 1))


def _tint(rng, rgb, amount=18):
    """A colour jittered by up to `amount` per channel, so the model learns colour names, not exact values."""
    return tuple(int(np.clip(c + rng.integers(-amount, amount + 1), 0, 255)) for c in rgb)


def _background(rng, colours, size, tries=50):
    """A background far (RGB distance > 140) from every object colour, optionally with pixel noise."""
    for _ in range(tries):
        bg = rng.integers(0, 256, 3)
        if all(np.linalg.norm(bg - np.array(COLOURS[c])) > 140 for c in colours):
            break
    else:
        bg = np.array([30, 30, 30])
    W, H = size
    noise = rng.integers(0, 13)
    pixels = bg[None, None, :] + rng.integers(-noise, noise + 1, (H, W, 3))
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8), "RGB")


def _draw(draw, rng, shape, colour, cx, cy, r):
    """Draw one shape of 'radius' r centred at (cx, cy); now and then with a dark outline."""
    fill, outline = _tint(rng, COLOURS[colour]), None
    width = 0
    if rng.random() < 0.3:
        outline, width = (0, 0, 0), max(1, int(r / 15))
    if shape == "circle":
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=fill, outline=outline, width=width)
    elif shape == "square":
        s = 0.85 * r
        draw.rectangle((cx - s, cy - s, cx + s, cy + s), fill=fill, outline=outline, width=width)
    else:
        draw.polygon([(cx, cy - r), (cx - r, cy + 0.8 * r), (cx + r, cy + 0.8 * r)], fill=fill, outline=outline,
                     width=width)


def _centre(rng, position, size, r, jitter=0.05):
    """Pixel centre of an object in a named region, jittered, kept inside the image."""
    W, H = size
    fx, fy = POSITIONS[position]
    cx = np.clip((fx + rng.uniform(-jitter, jitter)) * W, r, W - r)
    cy = np.clip((fy + rng.uniform(-jitter, jitter)) * H, r, H - r)
    return float(cx), float(cy)


def _random_object(rng, **where):
    return Shape(str(rng.choice(list(COLOURS))), str(rng.choice(SHAPES)), **where)


def random_image(rng, size=None):
    """-> (RGB PIL image, caption, objects): one or two objects at distinct positions on a random background."""
    size = size or random_size(rng)
    n = 1 if rng.random() < 0.5 else 2
    names = list(POSITIONS)
    chosen = sorted(rng.choice(len(names), n, replace=False))               # reading order
    objects = [_random_object(rng, position=names[k]) for k in chosen]
    image = _background(rng, [o.colour for o in objects], size)
    draw = ImageDraw.Draw(image)
    short = min(size)
    for o in objects:
        r = short * (rng.uniform(0.18, 0.32) if n == 1 else rng.uniform(0.15, 0.2))
        _draw(draw, rng, o.shape, o.colour, *_centre(rng, o.position, size, r), r)
    return image, caption(objects), objects


def random_video(rng, size=None):
    """-> (list of RGB PIL frames, caption, [object]): one object moving left/right/up/down over 4-8 frames,
    to be read at VIDEO_FPS."""
    size = size or random_size(rng, large=False)
    W, H = size
    o = _random_object(rng, direction=str(rng.choice(list(DIRECTIONS))))
    frames_n = int(rng.integers(4, 9))
    r = min(size) * rng.uniform(0.14, 0.22)
    dx, dy = DIRECTIONS[o.direction]
    travel = rng.uniform(0.4, 0.7)                                          # fraction of the frame crossed
    # start on the trailing side, cross-axis position anywhere
    x0 = 0.5 - dx * travel / 2 if dx else rng.uniform(0.25, 0.75)
    y0 = 0.5 - dy * travel / 2 if dy else rng.uniform(0.25, 0.75)
    background = _background(rng, [o.colour], size)
    frames, state = [], rng.bit_generator.state
    for k in range(frames_n):
        f = k / (frames_n - 1)
        frame = background.copy()
        rng.bit_generator.state = state                                      # same tint and outline each frame
        cx = np.clip((x0 + dx * travel * f) * W, r, W - r)
        cy = np.clip((y0 + dy * travel * f) * H, r, H - r)
        _draw(ImageDraw.Draw(frame), rng, o.shape, o.colour, float(cx), float(cy), r)
        frames.append(frame)
    return frames, caption([o]), [o]


# ----------------------------------------------------------------------------
# reading captions back


def parse_caption(text):
    """A caption -> list of Shape, or None if it does not follow the grammar."""
    objects = []
    for part in text.strip().rstrip(".").split(" and "):
        words = part.split()
        if len(words) < 4 or words[0] != "a" or words[1] not in COLOURS or words[2] not in SHAPES:
            return None
        rest = " ".join(words[3:])
        if rest.startswith("in the ") and rest[7:] in POSITIONS:
            objects.append(Shape(words[1], words[2], position=rest[7:]))
        elif rest.startswith("moving ") and rest[7:] in DIRECTIONS:
            objects.append(Shape(words[1], words[2], direction=rest[7:]))
        else:
            return None
    return objects


def score_caption(predicted, truth):
    """Compare a generated caption with the true objects, object by object in caption order.

    -> {"exact": 0/1, "colour": [hits, n], "shape": [...], "position" or "direction": [...]}; a missing or
    unparsable object counts as wrong on every attribute."""
    got = parse_caption(predicted) or []
    key = "direction" if truth[0].direction else "position"
    out = {"exact": int(predicted.strip() == caption(truth)), "colour": [0, len(truth)],
           "shape": [0, len(truth)], key: [0, len(truth)]}
    for i, t in enumerate(truth):
        if i < len(got):
            for attr in ("colour", "shape", key):
                out[attr][0] += int(getattr(got[i], attr) == getattr(t, attr))
    return out


# ----------------------------------------------------------------------------
# varied scenes: the same grammar with everything incidental drawn wider (training)


FRAME_FAMILIES = ("square", "wide", "tall", "tiny", "any")
FRAME_WEIGHTS = (0.2, 0.15, 0.15, 0.3, 0.2)                 # tiny frames are the hardest to read: drawn most
FRAME_RATES = (1.0, 1.5, 2.0, 3.0, 4.0, 5.0, 6.0, 10.0)     # clip frame rates: 100 ms - 1 s per frame
P_SMALL_OBJECT = 0.3                                        # share of objects 7-12% of the short side
P_TINY_FRAME = FRAME_WEIGHTS[FRAME_FAMILIES.index("tiny")]  # share of (not large) frames 36-56 px a side


def frame_weights(p_tiny):
    """FRAME_WEIGHTS with the tiny family at p_tiny and the other families sharing the rest as before."""
    k = FRAME_FAMILIES.index("tiny")
    rest = (1.0 - p_tiny) / (1.0 - FRAME_WEIGHTS[k])
    return [p_tiny if i == k else w * rest for i, w in enumerate(FRAME_WEIGHTS)]


def varied_size(rng, large, video=False, p_tiny=P_TINY_FRAME):
    """(width, height) of a square, wide, tall, tiny or any-shaped frame; large frames are up to 320 px a
    side (224 for clips), small ones up to 160 (112 for clips); p_tiny of the small ones are tiny."""
    top = (224 if video else 320) if large else (112 if video else 160)
    lo = 112 if large else 40
    family = rng.choice(FRAME_FAMILIES, p=frame_weights(p_tiny))
    if family == "tiny" and not large:
        return int(rng.integers(36, 57)), int(rng.integers(36, 57))
    short = int(rng.integers(lo, max(lo + 1, top // (1 if family in ("square", "tiny") else 2)) + 1))
    if family in ("square", "tiny"):
        return short, short
    long_ = int(rng.integers(min(top, int(1.4 * short)), top + 1)) if family != "any" else int(rng.integers(lo, top + 1))
    return (long_, short) if family in ("wide", "any") else (short, long_)


def varied_radius(rng, size, lo, hi, p_small=P_SMALL_OBJECT):
    """An object's 'radius' in pixels: a share in [lo, hi] of the frame's short side, or, p_small of the
    time, a small object of 7-12% of it (never under 3 px)."""
    share = rng.uniform(0.07, 0.12) if rng.random() < p_small else rng.uniform(lo, hi)
    return max(3.0, min(size) * share)


def _far_colour(rng, colours, min_dist=140):
    for _ in range(50):
        c = rng.integers(0, 256, 3)
        if all(np.linalg.norm(c - np.array(COLOURS[n])) > min_dist for n in colours):
            return tuple(int(v) for v in c)
    return (30, 30, 30)


BACKGROUNDS = ("flat", "gradient", "stripes", "checks", "blotches", "octaves", "marble", "rings")
BACKGROUND_WEIGHTS = (0.1, 0.1, 0.08, 0.17, 0.1, 0.15, 0.15, 0.15)   # checks and textures drawn most


def _octaves(rng, size, octaves):
    """size (W, H) -> [H, W] float in 0..1: random grids of 2, 4, 8, ... cells smoothed up to the frame,
    each octave half the weight of the one before (fractal noise)."""
    W, H = size
    total, cells = np.zeros((H, W), np.float32), int(rng.integers(2, 4))
    for k in range(octaves):
        grid = rng.random((cells << k, cells << k)).astype(np.float32)
        total += np.asarray(Image.fromarray(grid, "F").resize(size, Image.BICUBIC)) / 2 ** k
    total -= total.min()
    return total / max(float(total.max()), 1e-6)


def _texture(rng, kind, size):
    """size (W, H) -> [H, W] float in 0..1: fractal noise ("octaves"), veins ("marble": a sine across the
    frame bent by noise) or wood rings ("rings": a sine of the distance from a centre, bent by noise)."""
    W, H = size
    noise = _octaves(rng, size, int(rng.integers(2, 6)))
    if kind == "octaves":
        return noise
    ys, xs = np.mgrid[0:H, 0:W].astype(np.float32) / max(size)
    if kind == "marble":
        angle = rng.uniform(0, np.pi)
        phase = (xs * np.cos(angle) + ys * np.sin(angle)) * rng.uniform(4, 30)
    else:
        phase = np.hypot(xs - rng.uniform(-0.5, 1.5), ys - rng.uniform(-0.5, 1.5)) * rng.uniform(15, 70)
    wave = 0.5 + 0.5 * np.sin(phase + rng.uniform(2, 8) * noise)
    return wave ** rng.uniform(0.3, 3.0)                                     # thin or broad veins


def _checks(rng, size):
    """An L mask of checks or stripes of a 2-40 px step, turned now and then."""
    W, H = size
    side, step = 2 * max(size), int(rng.integers(2, 41))
    turn = rng.random() < 0.4
    mask = np.indices((side if turn else H, side if turn else W)) // step
    mask = Image.fromarray(np.where(mask.sum(0) % 2 == 1, 255, 0).astype(np.uint8), "L")
    if turn:
        mask = mask.rotate(float(rng.uniform(0, 90)))
        mask = mask.crop((side // 4, side // 4, side // 4 + W, side // 4 + H))
    return mask


def varied_background(rng, colours, size, kind=None):
    """Flat, gradient, stripes, checks (2-40 px, some turned), blotches, or a texture (fractal noise,
    marble veins, wood rings) in colours far from the objects', then pixel noise (Pillow and NumPy).
    kind: one of BACKGROUNDS, or None to draw one."""
    W, H = size
    a, b = _far_colour(rng, colours), _far_colour(rng, colours)
    kind = kind or rng.choice(BACKGROUNDS, p=BACKGROUND_WEIGHTS)
    if kind == "flat":
        image = Image.new("RGB", size, a)
    elif kind in ("octaves", "marble", "rings"):
        stops = np.array([a, b, _far_colour(rng, colours)], np.float32)   # a three-colour ramp
        t = _texture(rng, kind, size)
        image = Image.fromarray(np.stack([np.interp(t, (0, 0.5, 1), stops[:, c]) for c in range(3)], -1)
                                .astype(np.uint8), "RGB")
    else:
        if kind == "gradient":
            side = 2 * max(size)                                             # turn, then keep the middle
            mask = Image.linear_gradient("L").resize((side, side)).rotate(float(rng.uniform(0, 360)))
            mask = mask.crop((side // 4, side // 4, 3 * side // 4, 3 * side // 4)).resize(size)
        elif kind == "blotches":
            cells = rng.integers(0, 256, (int(rng.integers(2, 9)), int(rng.integers(2, 9))), dtype=np.uint8)
            mask = Image.fromarray(cells, "L").resize(size, Image.BICUBIC)
        elif kind == "checks":
            mask = _checks(rng, size)
        else:
            mask = Image.new("L", size, 0)
            draw, step = ImageDraw.Draw(mask), int(rng.integers(3, 24))
            for x in range(0, W, 2 * step):
                draw.rectangle((x + step, 0, x + 2 * step - 1, H), fill=255)
            if rng.random() < 0.5:
                mask = mask.transpose(Image.Transpose.ROTATE_90).resize(size)
        image = Image.composite(Image.new("RGB", size, b), Image.new("RGB", size, a), mask)
    noise = int(rng.integers(0, 30))
    pixels = np.asarray(image, np.int32) + rng.integers(-noise, noise + 1, (H, W, 1 if rng.random() < 0.5 else 3))
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8), "RGB")


@dataclass(frozen=True)
class Look:
    """How one object is drawn, fixed for all frames of a clip."""
    fill: tuple
    outline: tuple
    width: int
    angle: float

    @classmethod
    def random(cls, rng, colour, r):
        gain = rng.uniform(0.88, 1.05)
        fill = tuple(int(np.clip(c * gain + rng.integers(-24, 25), 0, 255)) for c in COLOURS[colour])
        style = rng.random()
        outline = None if style < 0.55 else tuple(int(v) for v in (rng.integers(0, 60, 3) if style < 0.8
                                                                    else np.array(fill) // 2))
        width = int(rng.integers(1, max(1, int(r / 6)) + 1))                  # 1 px on objects under 12 px
        return cls(fill, outline, width, float(rng.uniform(-0.2, 0.2)))

    def as_mask(self):
        """The same outline and turn, every covered pixel white."""
        return Look((255, 255, 255), (255, 255, 255) if self.outline else None, self.width, self.angle)


def _paint(draw, shape, look, cx, cy, r):
    """Draw a circle, or a square / apex-up triangle turned by look.angle, of 'radius' r at (cx, cy)."""
    kw = dict(fill=look.fill, outline=look.outline, width=look.width if look.outline else 0)
    if shape == "circle":
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), **kw)
        return
    corners = [(-0.85, -0.85), (0.85, -0.85), (0.85, 0.85), (-0.85, 0.85)] if shape == "square" else \
        [(0.0, -1.0), (-1.0, 0.8), (1.0, 0.8)]
    c, s = np.cos(look.angle), np.sin(look.angle)
    draw.polygon([(cx + r * (c * u - s * v), cy + r * (s * u + c * v)) for u, v in corners], **kw)


def _degrade(rng, image):
    """Now and then a JPEG pass or a 48-256 colour palette, as files do to pictures."""
    k = rng.random()
    if k < 0.2:
        buf = io.BytesIO()
        image.save(buf, "JPEG", quality=int(rng.integers(40, 96)))
        return Image.open(io.BytesIO(buf.getvalue())).convert("RGB")
    if k < 0.4:
        return image.quantize(int(rng.integers(48, 257)), method=Image.Quantize.MEDIANCUT).convert("RGB")
    return image


def drawn_mask(size):
    """A black RGB canvas on which `_paint(..., look.as_mask(), ...)` marks the pixels an object covers."""
    return Image.new("RGB", size)


def varied_image(rng, large=False, masks=None, p_small=P_SMALL_OBJECT, p_tiny=P_TINY_FRAME):
    """random_image with varied frames, backgrounds, colours, object scales, turns, outlines and files.
    With a list `masks`, also appends the image's object mask (objects white on black, before the file pass);
    p_small is the share of small objects (varied_radius), p_tiny that of tiny frames (varied_size)."""
    size = varied_size(rng, large, p_tiny=p_tiny)
    n = 1 if rng.random() < 0.4 else 2                                      # two objects are harder: 60%
    names = list(POSITIONS)
    objects = [_random_object(rng, position=names[k]) for k in sorted(rng.choice(len(names), n, replace=False))]
    image = varied_background(rng, [o.colour for o in objects], size)
    draw, mask = ImageDraw.Draw(image), drawn_mask(size)
    for o in objects:
        r = varied_radius(rng, size, *((0.1, 0.32) if n == 1 else (0.09, 0.19)), p_small)
        look = Look.random(rng, o.colour, r)
        centre = _centre(rng, o.position, size, r, jitter=0.07)
        _paint(draw, o.shape, look, *centre, r)
        _paint(ImageDraw.Draw(mask), o.shape, look.as_mask(), *centre, r)
    if masks is not None:
        masks.append(mask)
    return _degrade(rng, image), caption(objects), objects


def varied_video(rng, large=False, masks=None, p_small=P_SMALL_OBJECT, p_tiny=P_TINY_FRAME):
    """-> (frames, fps, caption, [object]): one object moving over a clip whose frame rate is 1-10 fps and
    whose length gives 2-16 frames after 2 fps sampling (1-4 chunks; a single chunk 40% of the time).
    With a list `masks`, also appends the object mask of every frame (white on black); p_small and p_tiny
    as in varied_image."""
    size = varied_size(rng, large, video=True, p_tiny=p_tiny)
    W, H = size
    o = _random_object(rng, direction=str(rng.choice(list(DIRECTIONS))))
    fps = float(rng.choice(FRAME_RATES))
    chunks = rng.choice([1, 2, 3, 4], p=[0.4, 0.35, 0.15, 0.1])
    kept = int(rng.integers(max(2, 4 * chunks - 3), 4 * chunks + 1))
    n = max(2, int(round(kept * fps / min(fps, 2.0))))
    r = varied_radius(rng, size, 0.1, 0.22, p_small)
    look = Look.random(rng, o.colour, r)
    dx, dy = DIRECTIONS[o.direction]
    travel = rng.uniform(0.35, 0.7)
    x0 = 0.5 - dx * travel / 2 if dx else rng.uniform(0.25, 0.75)
    y0 = 0.5 - dy * travel / 2 if dy else rng.uniform(0.25, 0.75)
    background = varied_background(rng, [o.colour], size)
    frames = []
    for k in range(n):
        f = k / (n - 1)
        frame = background.copy()
        cx = np.clip((x0 + dx * travel * f) * W, r, W - r)
        cy = np.clip((y0 + dy * travel * f) * H, r, H - r)
        _paint(ImageDraw.Draw(frame), o.shape, look, float(cx), float(cy), r)
        frames.append(frame)
        if masks is not None:
            masks.append(drawn_mask(size))
            _paint(ImageDraw.Draw(masks[-1]), o.shape, look.as_mask(), float(cx), float(cy), r)
    if rng.random() < 0.4:                                                   # a GIF's palette, frame by frame
        colours = [int(rng.integers(32, 257)) for _ in frames]
        kept = set(media.sample_frame_indices(n, fps).tolist())              # only these are ever seen
        frames = [f.quantize(c).convert("RGB") if k in kept else f for k, (f, c) in enumerate(zip(frames, colours))]
    return frames, fps, caption([o]), [o]
