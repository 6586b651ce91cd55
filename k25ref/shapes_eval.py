"""Held-out pictures and clips: a second generator, for evaluating the nano model only.

k25ref.shapes draws what the nano is trained on. This module draws the same kind of scene -- the same
caption grammar (`shapes.Shape`, `shapes.caption`, `shapes.score_caption`) -- with none of its drawing code,
so a model that scores well here has learned the words, not the generator:

- colours are drawn from hue/saturation/value ranges around each colour name (not a tinted RGB triple);
- objects are rasterised in NumPy from their geometry (4x4 supersampled coverage), squares and triangles
  turned by up to 8 degrees, with no outline, a dark outline or a darker shade of the fill;
- backgrounds are flat, linear or radial gradients, per-pixel noise, checkerboards, or procedural
  photo-like textures (fractal value noise, marble veins), their colours kept far from the objects';
- frames are square, wide, tall, tiny or large, and objects small, medium or large in them;
- images pass through PNG, JPEG or a GIF-style palette (64-256 colours, dithered or not);
- clips are written to a real GIF (palette) or MP4 (H.264) file with 100 ms - 1 s per frame and read back by
  `k25ref.media` like any user's file: after 2 fps sampling they hold 2-16 frames, 1-4 chunks of 4, with
  single-chunk clips over a third of them.

    image, caption, objects = random_image(rng)
    path, caption, objects = random_video(rng, folder)      # writes folder/clip.gif or clip.mp4

Every draw comes from one `numpy.random.Generator`, so a seed fixes the set exactly.
"""
import colorsys
import io
import os

import numpy as np
from PIL import Image

from k25ref.shapes import DIRECTIONS, POSITIONS, SHAPES, Shape, caption

# colour name -> (hue degrees, hue spread, saturation range, value range)
HSV = {"red": (0, 7, (0.75, 1.0), (0.7, 1.0)), "orange": (28, 4, (0.8, 1.0), (0.9, 1.0)),
       "yellow": (54, 4, (0.75, 1.0), (0.88, 1.0)), "green": (125, 15, (0.6, 0.95), (0.55, 0.9)),
       "blue": (225, 10, (0.7, 1.0), (0.7, 1.0)), "purple": (285, 10, (0.6, 0.85), (0.5, 0.8)),
       "white": (0, 180, (0.0, 0.06), (0.93, 1.0))}
FRAMES = ("square", "wide", "tall", "tiny", "large")
BACKGROUNDS = ("flat", "gradient", "noise", "checkerboard", "texture")
FRAME_MS = (100, 150, 200, 250, 333, 500, 750, 1000)       # clip frame durations
SS = 4                                                     # supersampling per axis


def object_rgb(rng, name):  # -> (3,) float in 0..255
    hue, spread, (s0, s1), (v0, v1) = HSV[name]
    h = ((hue + rng.uniform(-spread, spread)) % 360) / 360
    return 255 * np.array(colorsys.hsv_to_rgb(h, rng.uniform(s0, s1), rng.uniform(v0, v1)))


def frame_size(rng, family, video=False):
    """(width, height) of a frame family; clips stay under ~240 px a side (4 chunks fit the context)."""
    big = 240 if video else 400
    if family == "square":
        s = int(rng.integers(64, 225))
        return s, s
    if family == "tiny":
        return int(rng.integers(40, 57)), int(rng.integers(40, 57))
    if family == "large":
        return int(rng.integers(200, big + 1)), int(rng.integers(200, big + 1))
    long_, short = int(rng.integers(120, big + 1)), int(rng.integers(56, 121))
    long_ = max(long_, int(1.5 * short))
    return (long_, short) if family == "wide" else (short, long_)


# ----------------------------------------------------------------------------
# backgrounds: (H, W, 3) float arrays


def far_colour(rng, avoid, min_dist=130.0):
    """A random RGB at distance > min_dist from every colour in `avoid` (rejection, then a dark grey)."""
    for _ in range(200):
        c = rng.uniform(0, 255, 3)
        if all(np.linalg.norm(c - a) > min_dist for a in avoid):
            return c
    return np.full(3, 25.0)


def value_noise(rng, H, W, cells):  # -> (H, W) in 0..1, bilinear interpolation of a random grid
    g = rng.random((cells + 1, cells + 1))
    y, x = np.linspace(0, cells, H, endpoint=False), np.linspace(0, cells, W, endpoint=False)
    y0, x0 = y.astype(int), x.astype(int)
    fy, fx = (y - y0)[:, None], (x - x0)[None, :]
    fy, fx = fy * fy * (3 - 2 * fy), fx * fx * (3 - 2 * fx)                  # smoothstep
    top = g[y0][:, x0] * (1 - fx) + g[y0][:, x0 + 1] * fx
    bottom = g[y0 + 1][:, x0] * (1 - fx) + g[y0 + 1][:, x0 + 1] * fx
    return top * (1 - fy) + bottom * fy


def background(rng, H, W, avoid, kind):
    a, b = far_colour(rng, avoid), far_colour(rng, avoid)
    yy, xx = np.mgrid[0:H, 0:W] / max(H, W)
    if kind == "flat":
        t = np.zeros((H, W))
    elif kind == "gradient":
        if rng.random() < 0.5:
            angle = rng.uniform(0, 2 * np.pi)
            t = xx * np.cos(angle) + yy * np.sin(angle)
        else:
            t = np.hypot(xx - rng.random() * W / max(H, W), yy - rng.random() * H / max(H, W))
        t = (t - t.min()) / max(np.ptp(t), 1e-6)
    elif kind == "noise":
        sigma = rng.uniform(6, 28)
        return np.clip(a + rng.normal(0, sigma, (H, W, 3 if rng.random() < 0.5 else 1)), 0, 255)
    elif kind == "checkerboard":
        cell = int(rng.integers(3, 25))
        t = ((np.arange(H)[:, None] // cell + np.arange(W)[None, :] // cell) % 2).astype(float)
    else:                                                                   # procedural texture
        octaves = [(value_noise(rng, H, W, 2 ** (k + 1)), 0.5 ** k) for k in range(4)]
        t = sum(n * w for n, w in octaves) / sum(w for _, w in octaves)
        if rng.random() < 0.5:                                              # marble: veins bent by the noise
            f = rng.uniform(4, 14)
            t = 0.5 + 0.5 * np.sin(f * (xx + yy) * np.pi + 6 * t)
        t = (t - t.min()) / max(np.ptp(t), 1e-6)
    return a + t[..., None] * (b - a)


# ----------------------------------------------------------------------------
# objects: coverage masks from geometry


def coverage(shape, cx, cy, size, angle, H, W, grow=0.0):  # -> (H, W) fraction of each pixel covered
    """Supersampled inside-test of a circle, square or triangle of half-extent `size` (px), turned by `angle`."""
    ys = (np.arange(H * SS) + 0.5) / SS
    xs = (np.arange(W * SS) + 0.5) / SS
    dx, dy = xs[None, :] - cx, ys[:, None] - cy
    c, s = np.cos(angle), np.sin(angle)
    u, v = c * dx + s * dy, -s * dx + c * dy                                # object frame
    if shape == "circle":
        inside = u * u + v * v <= (size + grow) ** 2
    elif shape == "square":
        h = 0.88 * size + grow
        inside = (np.abs(u) <= h) & (np.abs(v) <= h)
    else:                                                                   # apex up, equilateral
        R = 1.1 * size
        apex, left, right = (0, -R), (-R * 0.866, R * 0.5), (R * 0.866, R * 0.5)
        inside = np.ones_like(u, bool)
        for (x0, y0), (x1, y1) in ((apex, right), (right, left), (left, apex)):
            ex, ey = x1 - x0, y1 - y0
            inside &= (ex * (v - y0) - ey * (u - x0)) / np.hypot(ex, ey) >= -grow
    return inside.reshape(H, SS, W, SS).mean((1, 3))


class Painter:
    """One object's look, fixed for all frames of a clip: colour, outline, turn, size."""

    def __init__(self, rng, obj, size):
        self.shape, self.size = obj.shape, size
        self.fill = object_rgb(rng, obj.colour)
        self.angle = 0.0 if obj.shape == "circle" else np.deg2rad(rng.uniform(-8, 8))
        style = rng.choice(["none", "dark", "shade"], p=[0.5, 0.3, 0.2])
        self.outline = None if style == "none" else (rng.uniform(0, 50, 3) if style == "dark" else 0.45 * self.fill)
        self.width = rng.uniform(1.0, max(1.5, size / 8))

    def paint(self, canvas, cx, cy):
        H, W, _ = canvas.shape
        if self.outline is not None:
            a = coverage(self.shape, cx, cy, self.size, self.angle, H, W, grow=self.width)[..., None]
            canvas = canvas * (1 - a) + self.outline * a
        a = coverage(self.shape, cx, cy, self.size, self.angle, H, W)[..., None]
        return canvas * (1 - a) + self.fill * a


def random_object(rng, **where):
    return Shape(str(rng.choice(list(HSV))), str(rng.choice(SHAPES)), **where)


def to_image(canvas):
    return Image.fromarray(np.clip(np.rint(canvas), 0, 255).astype(np.uint8), "RGB")


def round_trip(rng, image):
    """PNG, JPEG (quality 50-95) or a GIF-style palette (64-256 colours), decoded again."""
    kind = rng.choice(["png", "jpeg", "palette"])
    if kind == "palette":
        dither = Image.Dither.FLOYDSTEINBERG if rng.random() < 0.5 else Image.Dither.NONE
        return image.quantize(int(rng.integers(64, 257)), dither=dither).convert("RGB")
    buf = io.BytesIO()
    image.save(buf, "PNG" if kind == "png" else "JPEG", quality=int(rng.integers(50, 96)))
    return Image.open(io.BytesIO(buf.getvalue())).convert("RGB")


def random_image(rng):
    """-> (RGB PIL image, caption, objects): one or two objects at distinct positions, in reading order."""
    W, H = frame_size(rng, rng.choice(FRAMES))
    n = 1 if rng.random() < 0.5 else 2
    names = list(POSITIONS)
    objects = [random_object(rng, position=names[k]) for k in sorted(rng.choice(len(names), n, replace=False))]
    short = min(W, H)
    scale = (0.11, 0.3) if n == 1 else (0.1, 0.17)
    painters = [Painter(rng, o, short * rng.uniform(*scale)) for o in objects]
    canvas = background(rng, H, W, [p.fill for p in painters], rng.choice(BACKGROUNDS))
    for o, p in zip(objects, painters):
        fx, fy = POSITIONS[o.position]
        margin = p.size * 1.15
        cx = np.clip((fx + rng.uniform(-0.06, 0.06)) * W, margin, W - margin)
        cy = np.clip((fy + rng.uniform(-0.06, 0.06)) * H, margin, H - margin)
        canvas = p.paint(canvas, cx, cy)
    return round_trip(rng, to_image(canvas)), caption(objects), objects


# ----------------------------------------------------------------------------
# clips


def sampled_frames(num_frames, frame_ms):
    """Frames the 2 fps sampler keeps of a clip (k25ref.media.sample_frame_indices' count, re-derived)."""
    fps = 1000.0 / frame_ms
    return max(round(num_frames * min(2.0, fps) / fps), 1)


def clip_length(rng, frame_ms):
    """Raw frame count for 1-4 chunks after sampling (single chunk 40% of the time, 2-4 sampled frames)."""
    chunks = 1 if rng.random() < 0.4 else int(rng.integers(2, 5))
    want = int(rng.integers(2, 5)) if chunks == 1 else int(rng.integers(4 * chunks - 3, 4 * chunks + 1))
    n = max(2, round(want * (1000.0 / frame_ms) / min(2.0, 1000.0 / frame_ms)))
    while sampled_frames(n, frame_ms) > want:
        n -= 1
    while sampled_frames(n, frame_ms) < want:
        n += 1
    return n


def write_clip(frames, frame_ms, path, rng):
    """Frames -> a GIF (palette, per-frame duration) or MP4 (H.264 at 1000/frame_ms fps) file."""
    if path.endswith(".gif"):
        colours = int(rng.integers(32, 257))
        dither = Image.Dither.FLOYDSTEINBERG if rng.random() < 0.5 else Image.Dither.NONE
        pal = [f.quantize(colours, dither=dither) for f in frames]
        pal[0].save(path, save_all=True, append_images=pal[1:], duration=frame_ms, loop=0)
    else:
        import imageio.v3 as iio
        iio.imwrite(path, np.stack([np.asarray(f) for f in frames]), plugin="pyav", codec="libx264",
                    fps=1000.0 / frame_ms)


def random_video(rng, folder, name="clip"):
    """-> (path of a GIF/MP4 written in `folder`, caption, [object]): one object moving left/right/up/down."""
    fmt = "gif" if rng.random() < 0.5 else "mp4"
    W, H = frame_size(rng, rng.choice(FRAMES), video=True)
    if fmt == "mp4":
        W, H = W + W % 2, H + H % 2                                         # yuv420p needs even sides
    o = random_object(rng, direction=str(rng.choice(list(DIRECTIONS))))
    frame_ms = int(rng.choice(FRAME_MS))
    n = clip_length(rng, frame_ms)
    p = Painter(rng, o, min(W, H) * rng.uniform(0.1, 0.22))
    canvas = background(rng, H, W, [p.fill], rng.choice(BACKGROUNDS))
    dx, dy = DIRECTIONS[o.direction]
    travel = rng.uniform(0.35, 0.65)
    across = rng.uniform(0.3, 0.7)
    m = p.size * 1.15
    frames = []
    for k in range(n):
        f = 0.5 + travel * (k / (n - 1) - 0.5)
        cx = (f if dx > 0 else 1 - f) if dx else across
        cy = (f if dy > 0 else 1 - f) if dy else across
        frames.append(to_image(p.paint(canvas, np.clip(cx * W, m, W - m), np.clip(cy * H, m, H - m))))
    path = os.path.join(folder, f"{name}.{fmt}")
    write_clip(frames, frame_ms, path, rng)
    return path, caption([o]), [o]
