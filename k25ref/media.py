"""Images and videos -> MoonViT patches, exactly as the released Kimi K2.5 pipeline cuts them.

The vision tower eats 14x14 RGB patches. An image gets there in five steps (hub `media_utils.py` and
`kimi_k25_vision_processing.py`, k25-facts §5.1):

1. decode to 8-bit RGB with Pillow's `convert("RGB")` (alpha is dropped, not composited);
2. NaViT resize: shrink, never enlarge, to at most `in_patch_limit` patches and at most
   `patch_limit_on_one_side` patches per side, with Pillow bicubic;
3. zero-pad bottom/right to multiples of 28 px, so 14-px patches tile the image and every 2x2 block of
   patches (one merge group = one LLM token) is complete;
4. normalise x -> (x/255 - 0.5)/0.5 into [-1, 1]; padding becomes -1;
5. cut into patches in raster order, each channel-first (3, 14, 14).

A video is sampled at 2 frames/s and cut into chunks of 4 frames (§5.3). Each chunk goes through the same
steps with a per-frame limit of 4096 patches, and costs one frame's tokens, because the tower averages over
time.

Bad media (missing, empty, truncated, corrupt, decompression bombs, unsupported formats, videos without
frames) raises `MediaError` naming the file. docs/media.md has the table and the limits.
"""

import contextlib
import importlib.util
import itertools
import math
import os
import warnings
from datetime import datetime, timezone

import numpy as np
from PIL import Image, ImageOps

from k25ref.errors import MediaError
from k25ref.files import FileProblem, check_regular

# ----------------------------------------------------------------------------
# constants: preprocessor_config.json `media_proc_cfg` (k25-facts §5.1)

PATCH_SIZE = 14                       # patch_size: one MoonViT patch is 14x14 px
MERGE_KERNEL_SIZE = 2                 # merge_kernel_size: 2x2 patches -> one LLM token
MERGE_PIXELS = PATCH_SIZE * MERGE_KERNEL_SIZE  # 28: padded sides are multiples of this
IN_PATCH_LIMIT = 16384                # in_patch_limit: patches per image (before padding)
PATCH_LIMIT_ON_ONE_SIDE = 512         # patch_limit_on_one_side: 512 patches = 7168 px per side
IN_PATCH_LIMIT_EACH_FRAME = 4096      # in_patch_limit_each_frame: patches per video frame
SAMPLE_FPS = 2.0                      # sample_fps: video frames kept per second
TEMPORAL_MERGE_KERNEL_SIZE = 4        # temporal_merge_kernel_size: frames per video chunk
IMAGE_MEAN = 0.5                      # image_mean, the same for R, G and B
IMAGE_STD = 0.5                       # image_std, the same for R, G and B

# ----------------------------------------------------------------------------
# limits of k25ref itself (not of the model): they keep bad files from hanging or exhausting memory

DEFAULT_MAX_PIXELS = 89_478_485       # Pillow's own default Image.MAX_IMAGE_PIXELS (~0.25 GB of RGB)
DEFAULT_MAX_FRAMES = 100_000          # decoded frames per video: ~55 min at 30 fps
DEFAULT_MAX_TOTAL_PIXELS = 2**34      # frames x width x height decoded per video: ~10 min of 720p at 30 fps
IMAGE_FORMATS = ("PNG", "JPEG", "WEBP", "GIF", "BMP", "TIFF")  # the decoders Pillow may use (JPEG covers MPO)
VIDEO_CONTAINERS = (".mp4", ".m4v", ".mov", ".webm", ".mkv", ".avi")  # decoded through ffmpeg


# ----------------------------------------------------------------------------
# decoding: any bytes -> an 8-bit RGB PIL image, or a MediaError


@contextlib.contextmanager
def _decoding(what):
    """Turn whatever a decoder raises on bad bytes into one MediaError that names `what`.

    Pillow's plugins raise OSError, SyntaxError, ValueError, EOFError, struct.error, zlib.error, ... on
    malformed files, and ffmpeg backends raise their own types, so the net is deliberately wide; keep the
    `with` body down to decoder calls. The message keeps the first line of the decoder's complaint; the
    whole exception stays chained as __cause__. Pillow's DecompressionBombWarning becomes an error here
    (only inside this block: the process-wide warning filters are restored on exit).
    """
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            yield
        except MediaError:
            raise
        except Image.UnidentifiedImageError as exc:
            raise MediaError(f"{what}: not a decodable image: unknown format or damaged header "
                             f"(supported: {', '.join(IMAGE_FORMATS)})") from exc
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
            raise MediaError(f"{what}: refused by Pillow's decompression-bomb guard ({exc}); "
                             "raise PIL.Image.MAX_IMAGE_PIXELS and max_pixels to accept it") from exc
        except Exception as exc:  # noqa: BLE001 -- decoder boundary, see docstring
            root = _root_cause(exc)          # imageio wraps ffmpeg's own complaint in "can not handle the uri"
            reason = (str(root).strip().splitlines() or [""])[0][:200]  # ffmpeg appends pages of stderr
            raise MediaError(f"{what}: cannot decode: damaged, truncated or unsupported file "
                             f"({type(root).__name__}: {reason})") from exc


def _root_cause(exc):
    """The innermost exception of a chain (what the decoder itself said)."""
    seen = {id(exc)}
    while (inner := exc.__cause__ or exc.__context__) is not None and id(inner) not in seen:
        seen.add(id(inner))
        exc = inner
    return exc


def _regular_file(path, role="image"):
    """Check that `path` names a non-empty regular file under the size cap of its role (files.CAPS): a FIFO
    or /dev/zero would hang a decoder or never end."""
    if not os.path.lexists(path):
        raise MediaError(f"{path}: no such file")
    try:
        size = check_regular(path, role)
    except FileProblem as e:
        raise MediaError(f"{path}: {e.detail}") from None
    if size == 0:
        raise MediaError(f"{path}: empty file")
    return os.fspath(path)


def _check_budget(frames, width, height, max_frames, max_total_pixels, what):
    """Refuse a video whose decoding would exceed max_frames or max_total_pixels (frames x width x height)."""
    if frames > max_frames:
        raise MediaError(f"{what}: {frames} frames is over max_frames={max_frames}")
    if max_total_pixels is not None and frames * width * height > max_total_pixels:
        raise MediaError(f"{what}: {frames} frames of {width}x{height} = {frames * width * height:,} pixels to decode "
                         f"is over max_total_pixels={max_total_pixels:,}")


def _check_pixels(width, height, max_pixels, what):
    """Refuse zero-sized images and images over `max_pixels`, from the header, before decoding."""
    if width < 1 or height < 1:
        raise MediaError(f"{what}: image has zero size ({width}x{height})")
    if max_pixels is not None and width * height > max_pixels:
        raise MediaError(f"{what}: {width}x{height} = {width * height:,} pixels is over "
                         f"max_pixels={max_pixels:,} (decompression-bomb guard; pass a larger max_pixels)")


def _open_image_file(path, max_pixels):
    """Open (header only) an image file with the allowed decoders. Call inside `_decoding`."""
    image = Image.open(path, formats=IMAGE_FORMATS)
    _check_pixels(*image.size, max_pixels, path)
    return image


def _image_from_array(array, what):
    """uint8 (H, W), (H, W, 1), (H, W, 3) or (H, W, 4) -> PIL image of mode L, L, RGB or RGBA."""
    if not isinstance(array, np.ndarray) or array.dtype != np.uint8:
        dtype = getattr(array, "dtype", type(array).__name__)
        raise MediaError(f"{what}: expected a uint8 array, got {dtype}")
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[:, :, 0]
    if not (array.ndim == 2 or (array.ndim == 3 and array.shape[2] in (3, 4))):
        raise MediaError(f"{what}: expected an (H, W), (H, W, 3) or (H, W, 4) array, got {array.shape}")
    if array.shape[0] < 1 or array.shape[1] < 1:
        raise MediaError(f"{what}: image has zero size {array.shape}")
    return Image.fromarray(np.ascontiguousarray(array))


def to_rgb(image, what="image"):
    """Any Pillow mode -> 8-bit RGB, as the released pipeline's `image.convert("RGB")` does it.

    - RGBA, LA, PA, P with a transparent colour: alpha is dropped; transparent pixels show whatever
      colour they store (often black). Not composited on black or white: the hub does not.
    - CMYK, YCbCr, LAB, HSV, 1-bit: Pillow's plain conversion; ICC profiles are ignored, as in the hub.
    - 16-bit grey (I;16*): keep the high byte, as Pillow itself decodes 16-bit RGB PNGs. This departs from
      the hub, whose convert("RGB") clips at 255 and turns such images nearly white.
    - 32-bit int (I) and float (F): converted like the hub only when every value lies in [0, 255];
      otherwise there is no agreed 8-bit meaning, and a MediaError says so.
    """
    if image.mode.startswith("I;16"):
        high_byte = (np.asarray(image).astype(np.uint16) >> 8).astype(np.uint8)  # (H, W) u16 -> u8
        return Image.fromarray(high_byte).convert("RGB")
    if image.mode in ("I", "F"):
        values = np.asarray(image)
        if not np.all((values >= 0) & (values <= 255)):  # also catches NaN
            raise MediaError(f"{what}: mode {image.mode} image has values outside 0..255 "
                             "(no defined 8-bit meaning); convert it to 8-bit RGB first")
    return image.convert("RGB")


def load_image(image_or_path, *, max_pixels=DEFAULT_MAX_PIXELS):
    """A path, PIL image or uint8 HWC array -> an upright 8-bit RGB PIL image.

    Files are opened with the decoders in IMAGE_FORMATS only, checked against `max_pixels` from the header
    (and against Pillow's own process-wide guard, as an error), then fully decoded with `.load()`, so a
    truncated or corrupt file fails here rather than later. EXIF orientation is applied
    (`ImageOps.exif_transpose`, as transformers' `load_image` does), then `to_rgb`. An animated file gives
    its first frame; an already-open PIL image gives its current frame.
    """
    if isinstance(image_or_path, (str, os.PathLike)):
        path = _regular_file(image_or_path)
        with _decoding(path), _open_image_file(path, max_pixels) as image:
            image.load()
            return to_rgb(ImageOps.exif_transpose(image), path)
    if isinstance(image_or_path, Image.Image):
        image, what = image_or_path, "PIL image"
    elif isinstance(image_or_path, np.ndarray):
        image, what = _image_from_array(image_or_path, "array"), "array"
    else:
        raise MediaError("expected an image path, PIL.Image or uint8 array, "
                         f"got {type(image_or_path).__name__}")
    _check_pixels(*image.size, max_pixels, what)
    with _decoding(what):
        image.load()
        return to_rgb(ImageOps.exif_transpose(image), what)


# ----------------------------------------------------------------------------
# the NaViT geometry: how big the image becomes and how many tokens it costs


def navit_resize(width, height, *, in_patch_limit=IN_PATCH_LIMIT,
                 patch_limit_on_one_side=PATCH_LIMIT_ON_ONE_SIDE):
    """NaViT resize rule of the hub (`navit_resize_image`): (w, h) -> (new_w, new_h, pad_w, pad_h).

        s     = min(1, sqrt(L / (max(1, w//14) * max(1, h//14))), 512*14/w, 512*14/h)   # never upscale
        new_w = min(max(1, int(w*s)), 7168)       # int() truncates; likewise new_h
        pad_w = (28 - new_w % 28) % 28            # zero pad right; likewise pad_h at the bottom

    The patch budget L counts whole patches of the *original* image, so after padding an image may hold
    slightly more than L patches (4000x3000 -> 4200 tokens = 16800 patches): that is the hub's rule.
    """
    if width < 1 or height < 1:
        raise MediaError(f"image has zero size ({width}x{height})")
    if in_patch_limit < 1 or patch_limit_on_one_side < 1:
        raise MediaError(f"patch limits must be >= 1, got in_patch_limit={in_patch_limit}, "
                         f"patch_limit_on_one_side={patch_limit_on_one_side}")
    max_side = patch_limit_on_one_side * PATCH_SIZE
    patches = max(1.0, width // PATCH_SIZE) * max(1.0, height // PATCH_SIZE)
    scale = min(1.0, math.sqrt(in_patch_limit / patches), max_side / width, max_side / height)
    new_w = min(max(1, int(width * scale)), max_side)
    new_h = min(max(1, int(height * scale)), max_side)
    pad_w = (MERGE_PIXELS - new_w % MERGE_PIXELS) % MERGE_PIXELS
    pad_h = (MERGE_PIXELS - new_h % MERGE_PIXELS) % MERGE_PIXELS
    return new_w, new_h, pad_w, pad_h


def num_image_tokens(width, height, *, in_patch_limit=IN_PATCH_LIMIT,
                     patch_limit_on_one_side=PATCH_LIMIT_ON_ONE_SIDE):
    """LLM tokens (<|media_pad|> copies) of a width x height image: one per 28x28 merge group."""
    new_w, new_h, pad_w, pad_h = navit_resize(width, height, in_patch_limit=in_patch_limit,
                                              patch_limit_on_one_side=patch_limit_on_one_side)
    return ((new_w + pad_w) // MERGE_PIXELS) * ((new_h + pad_h) // MERGE_PIXELS)


# ----------------------------------------------------------------------------
# pixels: resize, pad, normalise, patchify


def resize_and_pad(image, geometry):
    """RGB PIL image -> (new_h + pad_h, new_w + pad_w, 3) uint8: bicubic resize, zeros bottom/right."""
    new_w, new_h, pad_w, pad_h = geometry
    resized = np.asarray(image.resize((new_w, new_h), Image.Resampling.BICUBIC))  # (new_h, new_w, 3)
    return np.pad(resized, ((0, pad_h), (0, pad_w), (0, 0)))                        # zeros -> -1 below


def normalize(pixels):
    """(..., 3) uint8 -> (..., 3) float32: x = (x/255 - mean) / std, in the hub's order of roundings.

    The division by 255 happens in float64 and is rounded once to float32; with mean = std = 0.5 the rest
    is exact, so this matches the hub bit for bit.
    """
    x = (pixels / 255.0).astype(np.float32)
    return (x - np.float32(IMAGE_MEAN)) * np.float32(1.0 / IMAGE_STD)


def navit_patchify(pixels):
    """(T, H, W, 3) -> patches (T * H/14 * W/14, 3, 14, 14) and grid_thw (3,) int64 = [T, H/14, W/14].

    Patches come in raster order: frame by frame, then row by row, then column by column; each patch is
    channel-first (c, y, x), ready for the patch embedding (a 14x14 stride-14 convolution).
    """
    T, H, W, C = pixels.shape
    gh, gw = H // PATCH_SIZE, W // PATCH_SIZE
    patches = pixels.reshape(T, gh, PATCH_SIZE, gw, PATCH_SIZE, C)  # (T, gh, y, gw, x, C)
    patches = patches.transpose(0, 1, 3, 5, 2, 4)                    # (T, gh, gw, C, y, x)
    return (np.ascontiguousarray(patches.reshape(-1, C, PATCH_SIZE, PATCH_SIZE)),
            np.array([T, gh, gw], dtype=np.int64))


def preprocess_image(image_or_path, *, in_patch_limit=IN_PATCH_LIMIT,
                     patch_limit_on_one_side=PATCH_LIMIT_ON_ONE_SIDE, max_pixels=DEFAULT_MAX_PIXELS):
    """An image (path, PIL image or uint8 HWC array) -> (pixel_values, grid_thw) for MoonViT.

    pixel_values: (gh*gw, 3, 14, 14) float32 in [-1, 1]; grid_thw: (1, 3) int64 [[1, gh, gw]].
    The LLM sees gh*gw/4 tokens. Images above `max_pixels` pixels raise MediaError before decoding.
    """
    image = load_image(image_or_path, max_pixels=max_pixels)
    geometry = navit_resize(*image.size, in_patch_limit=in_patch_limit,
                            patch_limit_on_one_side=patch_limit_on_one_side)
    pixels = normalize(resize_and_pad(image, geometry))[None]  # (1, H, W, 3)
    patches, grid_thw = navit_patchify(pixels)
    return patches, grid_thw[None]


# ----------------------------------------------------------------------------
# video: sample frames at 2 fps, chunk them by 4, stamp each chunk with its start time


def sample_frame_indices(num_frames, fps, sample_fps=SAMPLE_FPS):
    """Which of `num_frames` frames (at `fps`) the hub keeps: (n,) int64, ascending.

        sample_fps = min(sample_fps, fps)
        n          = max(round(num_frames * sample_fps / fps), 1)       # Python round: half to even
        indices    = round(linspace(0, num_frames - 1, n))             # first and last frame always kept
    """
    if num_frames < 1:
        raise MediaError("video has no frames")
    fps, sample_fps = _rate(fps, "fps"), _rate(sample_fps, "sample_fps")
    sample_fps = min(sample_fps, fps)
    n = max(round(num_frames * sample_fps / fps), 1)
    return np.linspace(0, num_frames - 1, n).round().astype(np.int64)


def format_timestamp(seconds):
    """Seconds -> "HH:MM:SS.mmm" as the hub writes chunk times (`timestamp_as_str`, "hh:mm:ss.fff").

    Kept bug-compatible: milliseconds are truncated from a float (2.3 s -> "00:00:02.299") and hours wrap
    after 24 (UTC time of day).
    """
    try:
        clock = datetime.fromtimestamp(seconds, tz=timezone.utc).strftime("%H:%M:%S")
    except (OverflowError, OSError, ValueError) as exc:
        raise MediaError(f"video timestamp {seconds!r} s is out of range ({exc})") from None
    return clock + f".{int((seconds % 1) * 1000):03d}"


def num_video_tokens(width, height, num_frames, fps, *, sample_fps=SAMPLE_FPS,
                     in_patch_limit_each_frame=IN_PATCH_LIMIT_EACH_FRAME,
                     temporal_merge_kernel_size=TEMPORAL_MERGE_KERNEL_SIZE,
                     patch_limit_on_one_side=PATCH_LIMIT_ON_ONE_SIDE):
    """LLM tokens of a whole video: chunks x tokens of one frame (time is pooled away in each chunk)."""
    sampled = len(sample_frame_indices(num_frames, fps, sample_fps))
    chunks = -(-sampled // temporal_merge_kernel_size)
    return chunks * num_image_tokens(width, height, in_patch_limit=in_patch_limit_each_frame,
                                     patch_limit_on_one_side=patch_limit_on_one_side)


def _video_plugin():
    """The imageio plugin that can decode mp4/webm here: "pyav" (package av), "FFMPEG" (imageio-ffmpeg)."""
    if importlib.util.find_spec("av") is not None:
        return "pyav"
    if importlib.util.find_spec("imageio_ffmpeg") is not None:
        return "FFMPEG"
    return None


def _rate(value, name, what="video"):
    """A frame rate as a float: finite and > 0, or a MediaError (None means the file did not say)."""
    if value is None:
        raise MediaError(f"{what}: frame rate unknown; pass fps=")
    try:
        rate = float(value)
    except (TypeError, ValueError):
        rate = math.nan
    if not (math.isfinite(rate) and rate > 0):
        raise MediaError(f"{what}: {name} must be a finite number > 0, got {value!r}")
    return rate


def gif_durations(f):
    """Each frame's display time in ms, read from a GIF's block structure without decoding any pixels.

    A frame's time is the delay (1/100 s) of the graphic control extension before it, 0 without one -- what
    Pillow reports as info["duration"]. Bytes that are no block are skipped, as Pillow skips them.
    """
    head = f.read(13)                                        # "GIF89a", logical screen descriptor
    if len(head) < 13 or not head.startswith(b"GIF"):
        raise MediaError("not a GIF file")
    if head[10] & 0x80:
        f.seek(3 << ((head[10] & 7) + 1), os.SEEK_CUR)       # global colour table
    durations, delay = [], 0
    while (tag := f.read(1)) not in (b"", b";"):
        if tag == b"!":                                      # extension: label, then data sub-blocks
            label, first = f.read(1), _skip_sub_blocks(f)
            if label == b"\xf9" and len(first) >= 3:
                delay = int.from_bytes(first[1:3], "little") * 10
        elif tag == b",":                                    # image descriptor (+ local colour table) + LZW data
            desc = f.read(9)
            if len(desc) < 9:
                break
            if desc[8] & 0x80:
                f.seek(3 << ((desc[8] & 7) + 1), os.SEEK_CUR)
            f.read(1)
            _skip_sub_blocks(f)
            durations.append(delay)
            delay = 0
    return durations


def _skip_sub_blocks(f):
    """Skip a chain of GIF data sub-blocks (length byte, bytes; 0 ends it) -> the first sub-block's bytes."""
    first = None
    while (n := f.read(1)) and n[0]:
        block = f.read(n[0])
        first = block if first is None else first
    return first or b""


def _pillow_video(path, fps, sample_fps, max_pixels, max_frames, max_total_pixels=DEFAULT_MAX_TOTAL_PIXELS):
    """Animated GIF/PNG/WebP (or a still image = one frame) -> (indices, fps, iterator of RGB frames).

    The frame rate is frames / total duration (average over variable frame durations). A GIF's durations are
    read from its block structure (gif_durations), other formats' by visiting each frame; then only the
    sampled frames are decoded. Frame count and frames x pixels are checked before anything is decoded.
    """
    with _decoding(path), _open_image_file(path, max_pixels) as image:
        num_frames = getattr(image, "n_frames", 1)
        _check_budget(num_frames, *image.size, max_frames, max_total_pixels, path)
        if fps is None and image.format == "GIF":
            with open(path, "rb") as f:
                durations = gif_durations(f)
            total_ms = sum(durations) if len(durations) == num_frames else None
        if fps is None and (image.format != "GIF" or total_ms is None):
            total_ms = 0
            for k in range(num_frames):
                image.seek(k)
                image.load()
                total_ms += image.info.get("duration") or 0
        if fps is None:
            fps = num_frames * 1000.0 / total_ms if total_ms > 0 else (1.0 if num_frames == 1 else None)
    fps = _rate(fps, "fps", path)
    indices = sample_frame_indices(num_frames, fps, sample_fps)

    def frames():
        with _decoding(path):
            image = _open_image_file(path, max_pixels)
        with image:
            for k in indices:
                with _decoding(path):
                    image.seek(int(k))
                    image.load()
                    frame = to_rgb(image, f"{path} frame {k}")
                yield frame

    return indices, fps, frames()


def _container_video(path, fps, sample_fps, max_pixels, max_frames, max_total_pixels=DEFAULT_MAX_TOTAL_PIXELS):
    """mp4/webm/... through imageio's ffmpeg plugin -> (indices, fps, iterator of RGB frames).

    Container frame counts are estimates (imageio reports inf for mp4), so the frames are counted by
    decoding them -- stopping as soon as the frame or pixel budget is spent; a second pass keeps the sampled ones.
    """
    plugin = _video_plugin()
    if plugin is None:
        raise MediaError(f"{path}: decoding {os.path.splitext(path)[1]} video needs an ffmpeg backend, "
                         "none is installed: pip install av  (or: pip install imageio[ffmpeg])")
    import imageio.v3 as iio

    with _decoding(path):
        fps = _rate(fps if fps is not None else iio.immeta(path, plugin=plugin).get("fps"), "fps", path)
        num_frames = 0
        for frame in iio.imiter(path, plugin=plugin):
            _check_pixels(frame.shape[1], frame.shape[0], max_pixels, path)
            num_frames += 1
            _check_budget(num_frames, frame.shape[1], frame.shape[0], max_frames, max_total_pixels, path)
    indices = sample_frame_indices(num_frames, fps, sample_fps)

    def frames():
        wanted = set(indices.tolist())
        with contextlib.closing(iio.imiter(path, plugin=plugin)) as stream:
            for k in range(int(indices[-1]) + 1):
                with _decoding(path):
                    frame = next(stream, None)
                if frame is None:
                    raise MediaError(f"{path}: ended at frame {k}, but the first pass counted {num_frames}")
                if k in wanted:
                    yield to_rgb(_image_from_array(frame, f"{path} frame {k}"))

    return indices, fps, frames()


def _frame_list_video(frames, fps, sample_fps, max_pixels):
    """A list of PIL images / uint8 HWC arrays (or a (T, H, W, C) array) -> (indices, fps, frames)."""
    if isinstance(frames, np.ndarray) and frames.ndim != 4:
        raise MediaError(f"frame array: expected (T, H, W, C), got shape {frames.shape}")
    frames = list(frames)
    if not frames:
        raise MediaError("video has no frames (empty frame list)")
    if len(frames) == 1 and fps is None:
        fps = 1.0  # one frame sits at t = 0 whatever the rate
    fps = _rate(fps, "fps", "frame list")
    indices = sample_frame_indices(len(frames), fps, sample_fps)
    return indices, fps, (_load_frame(frames[k], k, max_pixels) for k in indices)


def _load_frame(frame, k, max_pixels):
    """load_image for frame k of a list, with the frame number in any error."""
    try:
        return load_image(frame, max_pixels=max_pixels)
    except MediaError as exc:
        raise MediaError(f"frame {k} of the list: {exc}") from exc


def preprocess_video(path_or_frames, *, fps=None, sample_fps=SAMPLE_FPS,
                     in_patch_limit_each_frame=IN_PATCH_LIMIT_EACH_FRAME,
                     temporal_merge_kernel_size=TEMPORAL_MERGE_KERNEL_SIZE,
                     patch_limit_on_one_side=PATCH_LIMIT_ON_ONE_SIDE,
                     max_pixels=DEFAULT_MAX_PIXELS, max_frames=DEFAULT_MAX_FRAMES,
                     max_total_pixels=DEFAULT_MAX_TOTAL_PIXELS):
    """A video -> (pixel_values, grid_thw, timestamps) for MoonViT, one grid row per chunk of frames.

    Input: a path (mp4/m4v/mov/webm/mkv/avi via imageio + ffmpeg; animated GIF/PNG/WebP via Pillow) or a
    list of frames (PIL images or uint8 HWC arrays) with `fps`. `fps` given with a file overrides the
    container's rate. Frames are sampled by `sample_frame_indices`, grouped into chunks of
    `temporal_merge_kernel_size`, and every frame of a chunk is resized to the geometry of the chunk's
    first frame with the per-frame patch limit.

    pixel_values: (sum t*gh*gw, 3, 14, 14) float32, chunk by chunk, frame-major inside a chunk.
    grid_thw: (chunks, 3) int64 rows [t, gh, gw]; the last chunk may have t < 4.
    timestamps: one "HH:MM:SS.mmm" per chunk, the time of its first frame.
    """
    if temporal_merge_kernel_size < 1:
        raise MediaError(f"temporal_merge_kernel_size must be >= 1, got {temporal_merge_kernel_size}")
    if isinstance(path_or_frames, (str, os.PathLike)):
        path = _regular_file(path_or_frames, "video")
        read = _container_video if path.lower().endswith(VIDEO_CONTAINERS) else _pillow_video
        indices, fps, frames = read(path, fps, sample_fps, max_pixels, max_frames, max_total_pixels)
    elif isinstance(path_or_frames, (list, tuple, np.ndarray)):
        indices, fps, frames = _frame_list_video(path_or_frames, fps, sample_fps, max_pixels)
    else:
        raise MediaError(f"expected a video path or a list of frames, got {type(path_or_frames).__name__}")

    all_patches, grids, timestamps = [], [], []
    for start in range(0, len(indices), temporal_merge_kernel_size):
        chunk = list(itertools.islice(frames, temporal_merge_kernel_size))  # t <= 4 RGB frames
        geometry = navit_resize(*chunk[0].size, in_patch_limit=in_patch_limit_each_frame,
                                patch_limit_on_one_side=patch_limit_on_one_side)
        pixels = normalize(np.stack([resize_and_pad(frame, geometry) for frame in chunk]))  # (t, H, W, 3)
        patches, grid_thw = navit_patchify(pixels)
        all_patches.append(patches)
        grids.append(grid_thw)
        timestamps.append(format_timestamp(int(indices[start]) / fps))
    return np.concatenate(all_patches), np.stack(grids), timestamps


# ----------------------------------------------------------------------------
# looking at it: sizes and a picture of the patch grid


def describe_image(image_or_path, *, in_patch_limit=IN_PATCH_LIMIT,
                   patch_limit_on_one_side=PATCH_LIMIT_ON_ONE_SIDE, max_pixels=DEFAULT_MAX_PIXELS):
    """Sizes along the pipeline, as (width, height): original (upright), resized, padded; grid; tokens."""
    image = load_image(image_or_path, max_pixels=max_pixels)
    new_w, new_h, pad_w, pad_h = navit_resize(*image.size, in_patch_limit=in_patch_limit,
                                              patch_limit_on_one_side=patch_limit_on_one_side)
    grid_thw = [1, (new_h + pad_h) // PATCH_SIZE, (new_w + pad_w) // PATCH_SIZE]
    return {
        "original_size": image.size,
        "resized_size": (new_w, new_h),
        "padded_size": (new_w + pad_w, new_h + pad_h),
        "grid_thw": grid_thw,
        "patches": grid_thw[1] * grid_thw[2],
        "tokens": grid_thw[1] * grid_thw[2] // MERGE_KERNEL_SIZE**2,
    }


def plot_patch_grid(image_or_path, out_png, *, in_patch_limit=IN_PATCH_LIMIT,
                    patch_limit_on_one_side=PATCH_LIMIT_ON_ONE_SIDE, max_pixels=DEFAULT_MAX_PIXELS):
    """Draw the resized, padded image with its 14-px patches and 28-px merge groups; save a PNG.

    Thin lines are patch borders, thick lines merge groups (one LLM token each), the dashed box the
    resized image (outside it: zero padding). Uses matplotlib's Agg canvas directly, so no global
    backend is switched. Returns `describe_image`'s dict.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.patches import Rectangle

    image = load_image(image_or_path, max_pixels=max_pixels)
    info = describe_image(image, in_patch_limit=in_patch_limit,
                          patch_limit_on_one_side=patch_limit_on_one_side, max_pixels=max_pixels)
    geometry = navit_resize(*image.size, in_patch_limit=in_patch_limit,
                            patch_limit_on_one_side=patch_limit_on_one_side)
    pixels = resize_and_pad(image, geometry)  # (H, W, 3) uint8, what the patches are cut from
    H, W = pixels.shape[:2]

    inches_per_px = 8.0 / max(W, H)  # the long side gets 8 inches
    fig = Figure(figsize=(max(3.0, W * inches_per_px), max(3.0, H * inches_per_px)))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    ax.imshow(pixels, interpolation="nearest", extent=(0, W, H, 0))
    for step, width, alpha in ((PATCH_SIZE, 0.4, 0.5), (MERGE_PIXELS, 1.2, 0.9)):
        ax.vlines(np.arange(0, W + 1, step), 0, H, colors="cyan", linewidth=width, alpha=alpha)
        ax.hlines(np.arange(0, H + 1, step), 0, W, colors="cyan", linewidth=width, alpha=alpha)
    new_w, new_h = info["resized_size"]
    ax.add_patch(Rectangle((0, 0), new_w, new_h, fill=False, edgecolor="yellow", linestyle="--"))
    ax.set_xlim(0, W)
    ax.set_ylim(H, 0)
    ax.set_title(f"{info['original_size'][0]}x{info['original_size'][1]} -> {new_w}x{new_h} "
                 f"(padded {W}x{H})\ngrid_thw {info['grid_thw']}, {info['patches']} patches, "
                 f"{info['tokens']} tokens", fontsize=9)
    fig.savefig(out_png, dpi=100, bbox_inches="tight")
    return info
