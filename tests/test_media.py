"""Tests for k25ref.media: MoonViT image/video preprocessing as released, and bad media.

The exactness tests compare against `hub_pipeline`, which redoes the released pipeline (hub `media_utils.py`)
the long way: PIL convert, PIL bicubic resize, np.pad, the hub's normalise, and patches cut one by one
with slices instead of reshape/transpose. Every bad-media case builds its own file in tmp_path.
"""

import io
import math
import os
import struct
import tempfile
import warnings
import zlib
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from k25ref import media
from k25ref.errors import MediaError

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


# ----------------------------------------------------------------------------
# helpers


def hub_pipeline(image, in_patch_limit=16384, patch_limit_on_one_side=512):
    """The released image pipeline written out longhand: an independent second computation."""
    image = image.convert("RGB")
    w, h = image.size
    s1 = math.sqrt(in_patch_limit / (max(1.0, w // 14) * max(1.0, h // 14)))
    scale = min(1.0, s1, patch_limit_on_one_side * 14 / w, patch_limit_on_one_side * 14 / h)
    new_w = min(max(1, int(w * scale)), patch_limit_on_one_side * 14)
    new_h = min(max(1, int(h * scale)), patch_limit_on_one_side * 14)
    pad_w, pad_h = (28 - new_w % 28) % 28, (28 - new_h % 28) % 28
    pixels = np.asarray(image.resize((new_w, new_h), resample=Image.Resampling.BICUBIC))
    pixels = np.pad(pixels, ((0, pad_h), (0, pad_w), (0, 0)), mode="constant", constant_values=0)
    x = (pixels / 255.0).astype(np.float32)
    x -= np.array([0.5, 0.5, 0.5])
    x *= 1.0 / np.array([0.5, 0.5, 0.5])
    gh, gw = x.shape[0] // 14, x.shape[1] // 14
    patches = [x[r * 14:(r + 1) * 14, c * 14:(c + 1) * 14, :].transpose(2, 0, 1)
               for r in range(gh) for c in range(gw)]
    return np.stack(patches), np.array([[1, gh, gw]])


def noise_image(w, h, seed=0, mode="RGB"):
    """Seeded noise plus a diagonal gradient, so bicubic resizing has something to do."""
    rng = np.random.default_rng(seed)
    channels = len(Image.new(mode, (1, 1)).getbands())
    ramp = (np.add.outer(np.arange(h), np.arange(w)) * 255 // max(1, w + h - 2)).astype(np.uint8)
    array = ramp[:, :, None] + rng.integers(0, 64, (h, w, channels), dtype=np.uint8)  # wraps mod 256
    return Image.fromarray(array[:, :, 0] if channels == 1 else array).convert(mode)


def save(image, path, fmt=None, **kwargs):
    image.save(path, fmt, **kwargs)
    return path


def encoded(image, fmt, **kwargs):
    buffer = io.BytesIO()
    image.save(buffer, fmt, **kwargs)
    return buffer.getvalue()


def save_bytes(path, data):
    path.write_bytes(data)
    return path


def png_header_only(width, height):
    """A PNG that declares width x height RGB but carries one byte of pixel data: a bomb's shape."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00"))
            + chunk(b"IEND", b""))


def unpatchify(patches, grid_thw):
    """(T*gh*gw, 3, 14, 14) -> (T, gh*14, gw*14, 3): the inverse of navit_patchify."""
    T, gh, gw = (int(v) for v in grid_thw)
    return patches.reshape(T, gh, gw, 3, 14, 14).transpose(0, 1, 4, 2, 5, 3).reshape(T, gh * 14, gw * 14, 3)


def video_plugin_or_skip():
    plugin = media._video_plugin()
    if plugin is None:
        pytest.skip("no ffmpeg backend (pip install av, or imageio[ffmpeg])")
    return plugin


# ----------------------------------------------------------------------------
# geometry and token arithmetic


@pytest.mark.parametrize("size, limit, geometry, tokens", [
    ((448, 448), 16384, (448, 448, 0, 0), 256),
    ((1920, 1080), 16384, (1920, 1080, 12, 12), 2691),       # 69 x 39 merge groups, no downscale
    ((4000, 3000), 16384, (2073, 1554, 27, 14), 4200),       # over the budget: scale 0.5183
    ((3000, 200), 16384, (3000, 200, 24, 24), 864),
    ((1, 5000), 16384, (1, 5000, 27, 12), 179),
    ((1, 1), 16384, (1, 1, 27, 27), 1),                      # one padded 28x28 merge group
    ((10000, 10), 16384, (7168, 7, 0, 21), 256),             # side limit: 512 patches = 7168 px
    ((1280, 720), 4096, (1202, 676, 2, 24), 1075),           # a 720p video frame
    ((1920, 1080), 4096, (1196, 672, 8, 0), 1032),           # a 1080p video frame
])
def test_navit_resize_and_tokens(size, limit, geometry, tokens):
    assert media.navit_resize(*size, in_patch_limit=limit) == geometry
    assert media.num_image_tokens(*size, in_patch_limit=limit) == tokens


def test_navit_resize_invariants_over_a_sweep_of_sizes():
    for w in (1, 2, 13, 14, 27, 28, 29, 97, 500, 1023, 3001, 7167, 7168, 7169, 20000):
        for h in (1, 15, 28, 333, 2048, 9000):
            new_w, new_h, pad_w, pad_h = media.navit_resize(w, h)
            assert 1 <= new_w <= min(w, 7168) and 1 <= new_h <= min(h, 7168), (w, h)  # never upscales
            assert 0 <= pad_w < 28 and 0 <= pad_h < 28
            assert (new_w + pad_w) % 28 == 0 and (new_h + pad_h) % 28 == 0
            assert (new_w + pad_w) // 14 <= 512 and (new_h + pad_h) // 14 <= 512


def test_navit_resize_rejects_zero_sizes_and_limits():
    with pytest.raises(MediaError, match="zero size"):
        media.navit_resize(0, 10)
    with pytest.raises(MediaError, match="patch limits"):
        media.navit_resize(10, 10, in_patch_limit=0)


def test_video_tokens_per_second_for_720p_at_30fps():
    # 60 s at 30 fps -> 120 sampled frames -> 30 chunks of 4, each costing one 1202x676 frame: 1075 tokens
    assert media.num_video_tokens(1280, 720, num_frames=1800, fps=30.0) == 30 * 1075
    # a 3-frame tail still costs a whole chunk
    assert media.num_video_tokens(1280, 720, num_frames=165, fps=30.0) == 3 * 1075


# ----------------------------------------------------------------------------
# images: exact equality with the released pipeline


# odd sizes; 2000x1700 is over the patch budget (142*121 > 16384); 7300x40 over the side limit
@pytest.mark.parametrize("size", [(37, 53), (53, 37), (3000, 200), (200, 3000), (2000, 1700),
                                  (7300, 40), (13, 13), (1, 1), (28, 28), (448, 448)])
def test_preprocess_image_equals_hub_pipeline(tmp_path, size):
    path = save(noise_image(*size, seed=sum(size)), tmp_path / "image.png", compress_level=0)
    pixel_values, grid_thw = media.preprocess_image(path)
    ref_values, ref_grid = hub_pipeline(Image.open(path))
    assert pixel_values.dtype == np.float32 and grid_thw.dtype == np.int64
    assert grid_thw.tolist() == ref_grid.tolist()
    assert np.array_equal(pixel_values, ref_values)


def test_preprocess_image_small_patch_limit_equals_hub_pipeline():
    image = noise_image(640, 480, seed=3)
    pixel_values, grid_thw = media.preprocess_image(image, in_patch_limit=4096)
    ref_values, ref_grid = hub_pipeline(image, in_patch_limit=4096)
    assert grid_thw.tolist() == ref_grid.tolist() and np.array_equal(pixel_values, ref_values)


def test_path_pil_image_and_array_inputs_agree(tmp_path):
    image = noise_image(61, 45, seed=7)
    path = save(image, tmp_path / "image.png")
    by_path = media.preprocess_image(path)
    by_str = media.preprocess_image(str(path))
    by_image = media.preprocess_image(image)
    by_array = media.preprocess_image(np.asarray(image))
    for values, grid in (by_str, by_image, by_array):
        assert np.array_equal(values, by_path[0]) and np.array_equal(grid, by_path[1])


@pytest.mark.parametrize("mode, fmt", [("RGBA", "PNG"), ("LA", "PNG"), ("L", "PNG"), ("1", "PNG"),
                                       ("CMYK", "TIFF"), ("CMYK", "JPEG"), ("L", "JPEG"), ("RGB", "WEBP"),
                                       ("RGB", "BMP"), ("RGBA", "TIFF")])
def test_modes_convert_like_the_hub(tmp_path, mode, fmt):
    # alpha is dropped, not composited: the hub's convert("RGB")
    path = save(noise_image(45, 33, seed=11, mode=mode), tmp_path / f"image.{fmt.lower()}", fmt)
    pixel_values, _ = media.preprocess_image(path)
    assert np.array_equal(pixel_values, hub_pipeline(Image.open(path))[0])


def test_alpha_is_dropped_not_composited():
    # transparent pixels that store blue reach the model blue (not white, not black)
    rgba = np.zeros((28, 28, 4), np.uint8)
    rgba[..., 2] = 255
    pixel_values, _ = media.preprocess_image(rgba)
    assert np.all(pixel_values[:, 0] == -1.0) and np.all(pixel_values[:, 2] == 1.0)


def test_palette_with_transparency_is_dropped_like_the_hub(tmp_path):
    image = Image.fromarray(np.arange(60, dtype=np.uint8).reshape(6, 10) % 4)
    image = image.convert("P")
    image.putpalette([0, 0, 0, 200, 10, 10, 10, 200, 10, 10, 10, 200])
    path = save(image, tmp_path / "palette.png", transparency=2)
    assert Image.open(path).info.get("transparency") == 2
    assert np.array_equal(media.preprocess_image(path)[0], hub_pipeline(Image.open(path))[0])


def test_16_bit_grey_keeps_the_high_byte(tmp_path):
    values = (np.arange(40 * 30, dtype=np.uint32).reshape(30, 40) * 54).astype(np.uint16)
    path = save(Image.fromarray(values), tmp_path / "grey16.png")
    assert Image.open(path).mode == "I;16"
    high_byte = Image.fromarray((values >> 8).astype(np.uint8))
    assert np.array_equal(media.preprocess_image(path)[0], hub_pipeline(high_byte)[0])


def test_32_bit_modes_in_byte_range_match_the_hub_and_out_of_range_is_an_error():
    in_range = Image.fromarray(np.arange(30 * 20, dtype=np.int32).reshape(30, 20) % 256)
    assert in_range.mode == "I"
    assert np.array_equal(media.preprocess_image(in_range)[0], hub_pipeline(in_range)[0])
    with pytest.raises(MediaError, match="outside 0..255"):
        media.preprocess_image(Image.fromarray(np.full((8, 8), 1000, np.int32)))
    with pytest.raises(MediaError, match="outside 0..255"):
        media.preprocess_image(Image.fromarray(np.full((8, 8), np.nan, np.float32)))


def test_exif_orientation_is_applied(tmp_path):
    image = noise_image(40, 20, seed=5)
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    path = save(image, tmp_path / "rotated.png", exif=exif)
    assert media.describe_image(path)["original_size"] == (20, 40)
    upright = image.transpose(Image.Transpose.ROTATE_270)
    assert np.array_equal(media.preprocess_image(path)[0], hub_pipeline(upright)[0])


def test_animated_image_gives_its_first_frame():
    with Image.open(EXAMPLES / "moving_square.gif") as gif:
        first = gif.convert("RGB")
    pixel_values, grid_thw = media.preprocess_image(EXAMPLES / "moving_square.gif")
    assert np.array_equal(pixel_values, hub_pipeline(first)[0])
    assert grid_thw.tolist() == [[1, 4, 6]]


def test_one_pixel_image_is_one_padded_merge_group():
    pixel_values, grid_thw = media.preprocess_image(np.full((1, 1, 3), 255, np.uint8))
    assert grid_thw.tolist() == [[1, 2, 2]]
    image = unpatchify(pixel_values, grid_thw[0])[0]
    assert np.all(image[0, 0] == 1.0)
    assert np.sum(image != -1.0) == 3  # everything else is padding


# ----------------------------------------------------------------------------
# patchify


def test_patchify_round_trip_gives_back_the_padded_normalised_image():
    image = noise_image(95, 61, seed=9)
    geometry = media.navit_resize(*image.size)
    padded = media.normalize(media.resize_and_pad(image, geometry))  # (H, W, 3)
    patches, grid_thw = media.navit_patchify(padded[None])
    assert grid_thw.tolist() == [1, padded.shape[0] // 14, padded.shape[1] // 14]
    assert np.array_equal(unpatchify(patches, grid_thw)[0], padded)
    assert np.all(padded[geometry[1]:] == -1.0) and np.all(padded[:, geometry[0]:] == -1.0)


def test_patches_are_raster_order_and_channel_first():
    pixels = np.arange(2 * 28 * 42 * 3, dtype=np.float32).reshape(2, 28, 42, 3)  # T=2, gh=2, gw=3
    patches, grid_thw = media.navit_patchify(pixels)
    assert grid_thw.tolist() == [2, 2, 3]
    for t in range(2):
        for r in range(2):
            for c in range(3):
                expected = pixels[t, r * 14:(r + 1) * 14, c * 14:(c + 1) * 14].transpose(2, 0, 1)
                assert np.array_equal(patches[t * 6 + r * 3 + c], expected)


def test_normalize_maps_bytes_to_minus_one_one():
    out = media.normalize(np.array([0, 1, 127, 128, 255], np.uint8))
    assert out.dtype == np.float32
    assert out[0] == -1.0 and out[-1] == 1.0
    assert np.array_equal(out, ((np.array([0, 1, 127, 128, 255]) / 255.0).astype(np.float32) - 0.5) * 2)


# ----------------------------------------------------------------------------
# video: sampling, chunks, timestamps


@pytest.mark.parametrize("num_frames, fps, sample_fps, expected", [
    (30, 10.0, 2.0, [0, 6, 12, 17, 23, 29]),     # 5.8, 11.6, 17.4, 23.2 rounded
    (12, 10.0, 2.0, [0, 11]),                    # round(2.4) = 2: first and last frame
    (10, 10.0, 2.0, [0, 9]),
    (7, 1.0, 2.0, [0, 1, 2, 3, 4, 5, 6]),        # slower than 2 fps: every frame
    (5, 4.0, 2.0, [0, 4]),                       # round(2.5) = 2 (half to even)
    (7, 4.0, 2.0, [0, 2, 4, 6]),                 # round(3.5) = 4
    (1, 30.0, 2.0, [0]),
    (2, 30.0, 2.0, [0]),                         # max(round(0.13), 1) = 1
    (90, 30.0, 2.0, [0, 18, 36, 53, 71, 89]),       # 3 s -> 6 frames; 17.8, 35.6, 53.4, 71.2
    (300, 30.0, 1.0, [0, 33, 66, 100, 133, 166, 199, 233, 266, 299]),  # sample_fps=1: 10 frames
])
def test_sample_frame_indices(num_frames, fps, sample_fps, expected):
    indices = media.sample_frame_indices(num_frames, fps, sample_fps)
    assert indices.dtype == np.int64 and indices.tolist() == expected


@pytest.mark.parametrize("num_frames, fps", [(0, 30.0), (10, 0.0), (10, -1.0), (10, float("nan")),
                                             (10, float("inf")), (10, None)])
def test_sample_frame_indices_rejects_empty_videos_and_bad_rates(num_frames, fps):
    with pytest.raises(MediaError):
        media.sample_frame_indices(num_frames, fps)


@pytest.mark.parametrize("seconds, text", [
    (0, "00:00:00.000"), (0.5, "00:00:00.500"), (2.0, "00:00:02.000"),
    (2.3, "00:00:02.299"),            # the hub truncates float milliseconds
    (17 / 30, "00:00:00.566"), (3661.5, "01:01:01.500"), (86399.9995, "23:59:59.999"),
    (86400, "00:00:00.000"),          # hours wrap after a day, as in the hub
])
def test_format_timestamp(seconds, text):
    assert media.format_timestamp(seconds) == text


def test_gif_video_chunks_timestamps_and_frames():
    path = EXAMPLES / "moving_square.gif"  # 30 frames at 10 fps
    pixel_values, grid_thw, timestamps = media.preprocess_video(path)
    assert grid_thw.dtype == np.int64 and grid_thw.tolist() == [[4, 4, 6], [2, 4, 6]]  # short last chunk
    assert timestamps == ["00:00:00.000", "00:00:02.299"]                             # frames 0 and 23
    assert pixel_values.shape == (6 * 24, 3, 14, 14)
    with Image.open(path) as gif:
        for j, k in enumerate([0, 6, 12, 17, 23, 29]):  # each sampled frame == that frame as an image
            gif.seek(k)
            frame = gif.convert("RGB")
            expected, _ = media.preprocess_image(frame, in_patch_limit=4096)
            assert np.array_equal(pixel_values[24 * j:24 * (j + 1)], expected), k


def test_frame_list_with_short_last_chunk():
    frames = [noise_image(90, 50, seed=k) for k in range(6)]
    pixel_values, grid_thw, timestamps = media.preprocess_video(frames, fps=2.0)  # 2 fps: all 6 kept
    assert grid_thw.tolist() == [[4, 4, 8], [2, 4, 8]]  # 90x50 -> padded 112x56: 4x8 patches a frame
    assert timestamps == ["00:00:00.000", "00:00:02.000"]
    as_arrays = media.preprocess_video(np.stack([np.asarray(f) for f in frames]), fps=2.0)
    assert np.array_equal(as_arrays[0], pixel_values) and np.array_equal(as_arrays[1], grid_thw)
    for k, frame in enumerate(frames):  # a one-frame chunk is the still image
        assert np.array_equal(pixel_values[32 * k:32 * (k + 1)],
                              media.preprocess_image(frame, in_patch_limit=4096)[0])


def test_large_frames_use_the_per_frame_patch_limit():
    frame = noise_image(1280, 720, seed=1)
    _, grid_thw, _ = media.preprocess_video([frame], fps=30.0)
    assert grid_thw.tolist() == [[1, 50, 86]]  # 1204x700 padded: 43x25 = 1075 tokens
    assert grid_thw[0, 1] * grid_thw[0, 2] // 4 == media.num_image_tokens(1280, 720, in_patch_limit=4096)


def test_chunk_geometry_comes_from_the_chunks_first_frame():
    big, small = noise_image(100, 80, seed=1), noise_image(50, 50, seed=2)
    pixel_values, grid_thw, _ = media.preprocess_video([big, small], fps=1.0)
    assert grid_thw.tolist() == [[2, 6, 8]]
    geometry = media.navit_resize(100, 80, in_patch_limit=4096)
    expected, _ = media.navit_patchify(media.normalize(media.resize_and_pad(small, geometry))[None])
    assert np.array_equal(pixel_values[48:], expected)


def test_frame_list_needs_fps_unless_single_frame():
    with pytest.raises(MediaError, match="pass fps="):
        media.preprocess_video([noise_image(20, 20), noise_image(20, 20)])
    _, grid_thw, timestamps = media.preprocess_video([noise_image(20, 20)])
    assert grid_thw.tolist() == [[1, 2, 2]] and timestamps == ["00:00:00.000"]


def test_gif_without_durations_needs_fps(tmp_path):
    frames = [noise_image(20, 20, seed=k) for k in range(3)]
    path = save(frames[0], tmp_path / "still.gif", save_all=True, append_images=frames[1:])
    with pytest.raises(MediaError, match="pass fps="):
        media.preprocess_video(path)
    _, grid_thw, timestamps = media.preprocess_video(path, fps=1.0)
    assert grid_thw.tolist() == [[3, 2, 2]] and timestamps == ["00:00:00.000"]


def test_animated_png_and_webp_read_as_videos(tmp_path):
    frames = [noise_image(30, 20, seed=k) for k in range(10)]
    for name in ("clip.png", "clip.webp"):
        path = save(frames[0], tmp_path / name, save_all=True, append_images=frames[1:], duration=250,
                    lossless=True)
        pixel_values, grid_thw, timestamps = media.preprocess_video(path)  # 4 fps: frames 0 2 4 7 | 9
        assert grid_thw.tolist() == [[4, 2, 4], [1, 2, 4]], name
        assert timestamps == ["00:00:00.000", "00:00:02.250"], name
        if name == "clip.png":  # lossless either way, but APNG frames are exactly the inputs
            last, _ = media.preprocess_image(frames[9], in_patch_limit=4096)
            assert np.array_equal(pixel_values[-8:], last)


def test_container_video_without_backend_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setattr(media, "_video_plugin", lambda: None)
    path = tmp_path / "clip.mp4"
    path.write_bytes(b"\x00\x00\x00\x18ftypmp42" + bytes(100))
    with pytest.raises(MediaError, match="pip install av"):
        media.preprocess_video(path)


def test_mp4_video_matches_its_frames_decoded_by_hand(tmp_path):
    plugin = video_plugin_or_skip()
    import imageio.v3 as iio
    frames = np.stack([np.asarray(noise_image(96, 64, seed=k)) for k in range(10)])
    path = tmp_path / "clip.mp4"
    iio.imwrite(path, frames, fps=5, plugin=plugin, codec="libx264")
    pixel_values, grid_thw, timestamps = media.preprocess_video(path)  # 10 frames at 5 fps -> 0 3 6 9
    assert grid_thw.tolist() == [[4, 6, 8]] and timestamps == ["00:00:00.000"]
    decoded = list(iio.imiter(path, plugin=plugin))
    by_hand = media.preprocess_video(decoded, fps=5.0)
    assert np.array_equal(pixel_values, by_hand[0])


def test_video_without_frames_is_an_error(tmp_path):
    video_plugin_or_skip()
    import subprocess
    imageio_ffmpeg = pytest.importorskip("imageio_ffmpeg")
    path = tmp_path / "audio_only.mp4"
    subprocess.run([imageio_ffmpeg.get_ffmpeg_exe(), "-v", "error", "-f", "lavfi", "-i", "anullsrc",
                    "-t", "0.5", str(path)], check=True, timeout=60)
    with pytest.raises(MediaError):
        media.preprocess_video(path)


# ----------------------------------------------------------------------------
# bad media: each case makes its own file


def _truncated(fmt, fraction):
    data = encoded(noise_image(64, 64), fmt)
    return data[:int(len(data) * fraction)]


def _corrupt_png():
    data = bytearray(encoded(noise_image(64, 64), "PNG"))
    data[data.find(b"IDAT") + 50] ^= 0xFF
    return bytes(data)


def _zero_size_jpeg():
    data = bytearray(encoded(noise_image(64, 64), "JPEG"))
    sof = data.find(b"\xff\xc0")
    data[sof + 5:sof + 9] = bytes(4)  # height = width = 0
    return bytes(data)


def _gif_without_frames():
    return b"GIF89a" + struct.pack("<HHBBB", 10, 10, 0, 0, 0) + b";"


def _gif_bomb():
    screen = struct.pack("<HHBBB", 30000, 30000, 0, 0, 0)  # 900 M pixel logical screen, 1x1 frame
    return b"GIF89a" + screen + b"," + struct.pack("<HHHHB", 0, 0, 1, 1, 0) + b"\x02\x02\x44\x01\x00;"


BAD_FILES = [  # (case, file name, bytes, message fragment)
    ("empty file", "empty.png", b"", "empty file"),
    ("truncated JPEG", "cut.jpg", _truncated("JPEG", 0.6), "truncated"),
    ("truncated PNG", "cut.png", _truncated("PNG", 0.5), "truncated"),
    ("corrupt PNG data", "flipped.png", _corrupt_png(), "cannot decode"),
    ("JPEG with zero size", "zero.jpg", _zero_size_jpeg(), "not a decodable image"),
    ("text named .png", "text.png", b"hello, world\n", "not a decodable image"),
    ("unsupported format (PPM)", "image.ppm", encoded(noise_image(8, 8), "PPM"), "not a decodable image"),
    ("unsupported format (TGA)", "image.tga", encoded(noise_image(8, 8), "TGA"), "not a decodable image"),
    ("GIF without frames", "none.gif", _gif_without_frames(), "not a decodable image"),
    ("GIF bomb", "bomb.gif", _gif_bomb(), "decompression-bomb"),
    ("PNG bomb (2x Pillow limit)", "bomb.png", png_header_only(20000, 20000), "decompression-bomb"),
    ("PNG bomb (Pillow warning)", "warn.png", png_header_only(10000, 10000), "decompression-bomb"),
]


@pytest.mark.parametrize("case, name, data, message", BAD_FILES, ids=[row[0] for row in BAD_FILES])
@pytest.mark.parametrize("preprocess", [media.preprocess_image, media.preprocess_video],
                         ids=["image", "video"])
def test_bad_files_raise_media_error_naming_the_file(tmp_path, case, name, data, message, preprocess):
    path = tmp_path / name
    path.write_bytes(data)
    with pytest.raises(MediaError, match=message) as info:
        preprocess(path)
    assert str(path) in str(info.value)


def test_missing_file_and_directory(tmp_path):
    with pytest.raises(MediaError, match="no such file"):
        media.preprocess_image(tmp_path / "nope.png")
    with pytest.raises(MediaError, match="is a directory"):
        media.preprocess_image(tmp_path)
    with pytest.raises(MediaError, match="no such file"):
        media.preprocess_video(tmp_path / "nope.mp4")
    with pytest.raises(MediaError, match="is a directory"):
        media.preprocess_video(tmp_path)


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs POSIX FIFOs")
def test_fifo_is_refused_instead_of_hanging(tmp_path):
    os.mkfifo(tmp_path / "pipe.png")
    with pytest.raises(MediaError, match="not a regular file"):
        media.preprocess_image(tmp_path / "pipe.png")


def test_max_pixels_is_configurable(tmp_path):
    path = save(noise_image(100, 100), tmp_path / "image.png")
    with pytest.raises(MediaError, match="max_pixels=9,999"):
        media.preprocess_image(path, max_pixels=9_999)
    assert media.preprocess_image(path, max_pixels=10_000)[1].tolist() == [[1, 8, 8]]
    with pytest.raises(MediaError, match="max_pixels"):
        media.preprocess_image(np.zeros((100, 100, 3), np.uint8), max_pixels=9_999)
    with pytest.raises(MediaError, match="max_pixels"):
        media.preprocess_video(path, max_pixels=9_999)
    # just under Pillow's warning threshold: our default limit lets it through to the decoder, which
    # then finds the pixel data missing
    with pytest.raises(MediaError, match="cannot decode"):
        media.preprocess_image(save_bytes(tmp_path / "big.png", png_header_only(9000, 9000)))
    with pytest.raises(MediaError, match="max_pixels"):
        media.preprocess_image(tmp_path / "big.png", max_pixels=80_000_000)


def test_bomb_warning_filter_is_restored(tmp_path):
    path = save_bytes(tmp_path / "warn.png", png_header_only(10000, 10000))
    before = list(warnings.filters)
    with pytest.raises(MediaError):
        media.preprocess_image(path)
    assert warnings.filters == before


def test_max_frames_is_enforced():
    with pytest.raises(MediaError, match="max_frames"):
        media.preprocess_video(EXAMPLES / "moving_square.gif", max_frames=29)


@pytest.mark.parametrize("bad", [123, None, b"bytes", np.zeros((4, 4, 3), np.float32),
                                 np.zeros((0, 5, 3), np.uint8), np.zeros((4, 4, 2), np.uint8)])
def test_wrong_input_types_are_media_errors(bad):
    with pytest.raises(MediaError):
        media.preprocess_image(bad)


def test_wrong_video_inputs_are_media_errors():
    with pytest.raises(MediaError, match="no frames"):
        media.preprocess_video([], fps=30.0)
    with pytest.raises(MediaError, match=r"\(T, H, W, C\)"):
        media.preprocess_video(np.zeros((4, 4, 3), np.uint8), fps=30.0)
    with pytest.raises(MediaError, match="fps"):
        media.preprocess_video([np.zeros((4, 4, 3), np.uint8)] * 2, fps=0)
    with pytest.raises(MediaError, match="frame 1 of the list"):
        media.preprocess_video([np.zeros((4, 4, 3), np.uint8), np.zeros((4, 4, 3), np.float32)], fps=1.0)
    with pytest.raises(MediaError, match="temporal_merge_kernel_size"):
        media.preprocess_video([np.zeros((4, 4, 3), np.uint8)], temporal_merge_kernel_size=0)
    with pytest.raises(MediaError):
        media.preprocess_video(42)


@pytest.mark.parametrize("size, grid", [((3000, 200), [1, 16, 216]), ((200, 3000), [1, 216, 16]),
                                        ((1, 5000), [1, 358, 2]), ((5000, 1), [1, 2, 358]),
                                        ((10000, 1), [1, 2, 512])])
def test_absurd_aspect_ratios_are_accepted(size, grid):
    pixel_values, grid_thw = media.preprocess_image(np.zeros(size[::-1] + (3,), np.uint8))
    assert grid_thw.tolist() == [grid] and pixel_values.shape == (grid[1] * grid[2], 3, 14, 14)


# ----------------------------------------------------------------------------
# describe and plot


def test_describe_image():
    assert media.describe_image(EXAMPLES / "red_circle.png") == {
        "original_size": (300, 200), "resized_size": (300, 200), "padded_size": (308, 224),
        "grid_thw": [1, 16, 22], "patches": 352, "tokens": 88}
    assert media.describe_image(np.zeros((1080, 1920, 3), np.uint8))["tokens"] == 2691


def test_plot_patch_grid_writes_a_png(tmp_path):
    out = tmp_path / "grid.png"
    info = media.plot_patch_grid(EXAMPLES / "red_circle.png", out)
    assert info["tokens"] == 88
    with Image.open(out) as plot:
        assert plot.format == "PNG" and plot.width > 300


# ----------------------------------------------------------------------------
# fuzz: random or mutated bytes never escape as anything but MediaError


def _seed_files():
    image = noise_image(24, 18, seed=1)
    frames = [image, noise_image(24, 18, seed=2)]
    seeds = [encoded(image, fmt) for fmt in ("PNG", "JPEG", "BMP", "TIFF", "WEBP")]
    seeds += [encoded(frames[0], fmt, save_all=True, append_images=frames[1:], duration=100)
              for fmt in ("GIF", "PNG", "WEBP")]
    return seeds


SEEDS = _seed_files()
SUFFIXES = [".png", ".jpg", ".gif", ".webp", ".bmp", ".tif", ".mp4", ".webm", ".bin"]


@st.composite
def media_bytes(draw):
    if draw(st.booleans()):
        return draw(st.binary(max_size=2048))
    data = bytearray(draw(st.sampled_from(SEEDS)))
    for _ in range(draw(st.integers(0, 8))):
        data[draw(st.integers(0, len(data) - 1))] = draw(st.integers(0, 255))
    return bytes(data[:draw(st.integers(0, len(data)))])


@pytest.mark.fuzz
@settings(max_examples=int(os.environ.get("K25REF_FUZZ_EXAMPLES", 100)), deadline=None,
          suppress_health_check=[HealthCheck.too_slow])
@given(data=media_bytes(), suffix=st.sampled_from(SUFFIXES))
def test_fuzz_bytes_give_a_result_or_media_error(data, suffix):
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / f"fuzz{suffix}"
        path.write_bytes(data)
        for preprocess in (media.preprocess_image, media.preprocess_video):
            try:
                result = preprocess(path, max_pixels=4_000_000)
            except MediaError:
                continue
            pixel_values, grid_thw = result[0], result[1]
            assert pixel_values.shape == (int(np.prod(grid_thw, axis=1).sum()), 3, 14, 14)
            assert np.all(np.abs(pixel_values) <= 1.0)
