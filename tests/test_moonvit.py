"""MoonViT tower and projector: goldens from transformers, the live oracle, and identities that teach.

Goldens (tests/goldens_vision, made by tools/oracle_vision.py) need no torch. The live-oracle tests
build unseen random vision configs and run transformers next to k25ref (marker `oracle`).
"""
import hashlib
import importlib.util
import json
import pathlib

import numpy as np
import pytest

from conftest import check_close, rel_err
from k25ref import load_model
from k25ref.config import KimiK25Config, VisionConfig
from k25ref.errors import ConfigError, MediaError
from k25ref import moonvit
from k25ref.moonvit import (bicubic_matrix, check_media, patch_embed, pos_emb_interpolate, rope_2d,
                            temporal_embedding, vision_tower)
from k25ref.projector import temporal_merge, vision_features
from k25ref.rope import apply_rope_interleaved

ROOT = pathlib.Path(__file__).resolve().parents[1]
GOLDENS = ROOT / "tests" / "goldens_vision"
CASES = ["images", "video", "mixed"]
REL_TOL = 2e-5          # max |k25ref - oracle| / max |oracle|; measured ~1e-6. The brief asked < 1e-3, but a
                        # tanh-for-erf GELU swap moves the features by only 2e-4, so the bound is tighter.


@pytest.fixture(scope="module")
def golden_model():
    model = load_model(str(GOLDENS))             # the real loader: config, index, headers, BF16 widening
    return model.weights, model.cfg


def pixels(rng, grid, P=14):  # -> (N, 3, P, P) float32 in [-1, 1]
    return rng.uniform(-1, 1, (int(np.prod(grid, axis=1).sum()), 3, P, P)).astype(np.float32)


# ----------------------------------------------------------------------------
# goldens from transformers 5.23


def test_golden_files_match_manifest():
    manifest = json.loads((GOLDENS / "MANIFEST.json").read_text())
    assert manifest["versions"]["transformers"] == "5.23.0"
    for name, entry in manifest["files"].items():
        assert hashlib.sha256((GOLDENS / name).read_bytes()).hexdigest() == entry["sha256"], name


@pytest.mark.parametrize("case", CASES)
def test_goldens(golden_model, case):
    W, cfg = golden_model
    z = np.load(GOLDENS / f"{case}.npz")
    capture = {}
    features = vision_features(W, cfg, z["pixel_values"], z["grid_thw"], capture)
    assert features.shape == (sum(h * w // 4 for _, h, w in z["grid_thw"]), cfg.text.hidden_size)
    names = ["vision.embed", *(f"vision.blocks.{b}" for b in range(cfg.vision.num_hidden_layers)),
             "vision.tower", "vision.merged", "vision.features"]
    for name in names:
        err = rel_err(capture[name], z[name])
        assert err < REL_TOL, f"{case} {name}: rel err {err:.2e}"


# ----------------------------------------------------------------------------
# identities


def test_patch_embedding_is_the_strided_conv(rng):
    P, D = 14, 8
    image = rng.standard_normal((3, 2 * P, 3 * P)).astype(np.float32)      # a 2 x 3 patch image
    weight = rng.standard_normal((D, 3, P, P)).astype(np.float32)
    bias = rng.standard_normal(D).astype(np.float32)
    conv = np.empty((2, 3, D), np.float32)                                  # Conv2d(k=P, s=P), by definition
    for i in range(2):
        for j in range(3):
            window = image[:, i * P:(i + 1) * P, j * P:(j + 1) * P]
            conv[i, j] = np.sum(weight * window, axis=(1, 2, 3)) + bias
    patches = image.reshape(3, 2, P, 3, P).transpose(1, 3, 0, 2, 4).reshape(6, 3, P, P)  # raster order
    check_close(patch_embed(patches, weight, bias), conv.reshape(6, D), atol=1e-4, label="patch embed")


def test_interpolation_to_own_size_is_identity(rng):
    table = rng.standard_normal((8, 6, 5)).astype(np.float32)
    assert np.array_equal(bicubic_matrix(8, 8), np.eye(8, dtype=np.float32))
    assert np.array_equal(pos_emb_interpolate(table, 8, 6), table)


def test_interpolation_rows_sum_to_one():
    for out, inp in [(3, 8), (10, 8), (64, 64), (512, 64), (1, 7)]:
        m = bicubic_matrix(out, inp)
        assert np.allclose(m.sum(axis=1), 1.0, atol=1e-6), (out, inp)


@pytest.mark.parametrize("size", [(3, 5), (10, 4), (2, 12), (8, 8), (17, 1), (64, 22)])
def test_interpolation_equals_torch_bicubic(rng, size):
    torch = pytest.importorskip("torch")
    table = rng.standard_normal((8, 6, 7)).astype(np.float32)              # non-square table
    ref = torch.nn.functional.interpolate(torch.from_numpy(table).permute(2, 0, 1)[None], size=size,
                                          mode="bicubic", align_corners=False)[0].permute(1, 2, 0).numpy()
    check_close(pos_emb_interpolate(table, *size), ref, atol=2e-6, label=f"bicubic {size}")


def test_interpolation_equals_transformers_taps(rng):
    torch = pytest.importorskip("torch")
    vision_utils = pytest.importorskip("transformers.vision_utils")
    table = rng.standard_normal((8, 8, 5)).astype(np.float32)
    grid = [[1, 10, 4], [2, 2, 12], [1, 8, 8]]
    idx, w = vision_utils.get_vision_interpolation_indices_and_weights(
        torch.tensor(grid), 8, mode="bicubic", align_corners=False)
    ref = np.einsum("nk,nkd->nd", w.numpy(), table.reshape(64, 5)[idx.numpy()])   # embedding_bag(mode="sum")
    ours = np.concatenate([np.tile(pos_emb_interpolate(table, h, w_).reshape(h * w_, 5), (t, 1))
                           for t, h, w_ in grid])
    check_close(ours, ref, atol=2e-6, label="transformers taps")


def test_temporal_embedding_only_for_multi_frame_chunks():
    D = 12
    assert np.array_equal(temporal_embedding(1, D), np.zeros((1, D), np.float32))
    e = temporal_embedding(4, D)
    assert e.shape == (4, D)
    assert np.array_equal(e[0], np.r_[np.zeros(D // 2), np.ones(D // 2)].astype(np.float32))  # sin 0, cos 0
    assert np.allclose(e[1, 0], np.sin(1.0)) and np.allclose(e[3, D - 1], np.cos(3 * 10000 ** (-(D - 2) / D)))


def test_rope_2d_depends_only_on_the_offset(rng):
    """q.k after 2-D RoPE is a function of (row_k - row_q, col_k - col_q): shift both, nothing changes."""
    Dh, h, w = 16, 6, 8
    cos, sin = rope_2d((1, h, w), Dh)
    q, k = rng.standard_normal((2, Dh)).astype(np.float32)

    def score(a, b):  # patches a, b as (row, col)
        i, j = a[0] * w + a[1], b[0] * w + b[1]
        return apply_rope_interleaved(q[None], cos[i:i + 1], sin[i:i + 1])[0] @ \
            apply_rope_interleaved(k[None], cos[j:j + 1], sin[j:j + 1])[0]

    assert np.isclose(score((0, 1), (2, 4)), score((3, 3), (5, 6)), atol=1e-5)
    assert not np.isclose(score((0, 1), (2, 4)), score((0, 1), (4, 2)), atol=1e-3)     # rows and cols differ


def test_rope_2d_pairs_even_width_odd_height():
    cos, _ = rope_2d((2, 2, 3), 8)                                           # 2 frames of 2 x 3 patches
    angles = np.arccos(np.clip(cos, -1, 1))
    n = 1 * 3 + 2                                                            # row 1, col 2 (frame 0)
    assert np.allclose(angles[n, 0], 2.0) and np.allclose(angles[n, 1], 1.0)  # pair 0: col; pair 1: row
    assert np.array_equal(cos[:6], cos[6:])                                  # frames repeat the grid


def test_one_frame_chunk_equals_the_still_image(golden_model, rng):
    W, cfg = golden_model
    image = pixels(rng, [[1, 4, 6]])
    video = pixels(rng, [[3, 4, 2]])
    alone = vision_features(W, cfg, image, [[1, 4, 6]])
    packed = vision_features(W, cfg, np.concatenate([video, image]), [[3, 4, 2], [1, 4, 6]])
    check_close(packed[2:], alone, atol=1e-5, label="1-frame chunk after a video chunk")
    # two copies of the frame are a real 2-frame chunk: temporal term and joint attention change the tokens
    twice = vision_features(W, cfg, np.concatenate([image, image]), [[2, 4, 6]])
    assert twice.shape == alone.shape and rel_err(twice, alone) > 1e-2


def test_temporal_merge_order_and_mean(rng):
    t, h, w, D = 3, 4, 6, 2
    x = rng.standard_normal((t * h * w, D)).astype(np.float32)
    merged = temporal_merge(x, [[t, h, w]])
    assert merged.shape == (h * w // 4, 4, D)
    frames = x.reshape(t, h, w, D).mean(axis=0)
    r, c = 1, 2                                                              # merged token r * (w/2) + c
    expect = [frames[2 * r, 2 * c], frames[2 * r, 2 * c + 1], frames[2 * r + 1, 2 * c], frames[2 * r + 1, 2 * c + 1]]
    check_close(merged[r * (w // 2) + c], np.stack(expect), atol=1e-6, label="2x2 group")


def test_query_blocks_do_not_change_attention(golden_model, rng, monkeypatch):
    W, cfg = golden_model
    grid = [[2, 4, 6], [1, 2, 2]]
    x = pixels(rng, grid)
    whole = vision_tower(W, cfg, x, grid)                                    # 48 + 4 rows < QUERY_ROWS
    monkeypatch.setattr(moonvit, "QUERY_ROWS", 7)                            # ragged blocks inside each item
    check_close(vision_tower(W, cfg, x, grid), whole, atol=1e-5, label="query blocks of 7")


def test_capture_names_every_block(golden_model, rng):
    W, cfg = golden_model
    capture = {}
    out = vision_tower(W, cfg, pixels(rng, [[2, 2, 4]]), [[2, 2, 4]], capture)
    assert out.shape == (16, cfg.vision.hidden_size)
    assert sorted(capture) == ["vision.blocks.0", "vision.blocks.1", "vision.embed"]


# ----------------------------------------------------------------------------
# bad input


@pytest.mark.parametrize("grid, n, message", [
    ([[1, 3, 4]], 12, r"grid_thw\[0\] = \[1, 3, 4\]: h and w must be even"),
    ([[1, 2, 2], [5, 2, 2]], 24, r"grid_thw\[1\] = \[5, 2, 2\]: a video chunk holds at most 4 frames"),
    ([[1, 2, 2]], 5, r"pixel_values has shape \(5, 3, 14, 14\), but grid_thw \[\[1, 2, 2\]\] needs \(4, 3, 14, 14\)"),
    ([[0, 2, 2]], 0, r"every entry must be >= 1"),
    ([1, 2, 2], 4, r"grid_thw must be a non-empty integer array"),
])
def test_bad_media_is_a_media_error(grid, n, message):
    with pytest.raises(MediaError, match=message):
        check_media(np.zeros((n, 3, 14, 14), np.float32), grid, VisionConfig())


def test_non_finite_pixels_are_a_media_error():
    x = np.zeros((4, 3, 14, 14), np.float32)
    x[1, 0, 0, 0] = np.nan
    with pytest.raises(MediaError, match="finite"):
        check_media(x, [[1, 2, 2]], VisionConfig())


def test_text_only_checkpoint_refuses_media():
    cfg = KimiK25Config(vision=None)
    with pytest.raises(ConfigError, match="no vision_config"):
        vision_tower(None, cfg, np.zeros((4, 3, 14, 14), np.float32), [[1, 2, 2]])


# ----------------------------------------------------------------------------
# the live oracle on unseen configs


def _oracle_tool():
    spec = importlib.util.spec_from_file_location("oracle_vision", ROOT / "tools" / "oracle_vision.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


RANDOM_VISION = [  # (width, heads, layers, MLP, square table side, frames) -- none of them the golden's
    (24, 2, 1, 40, 5, 2),
    (48, 3, 2, 72, 6, 4),
    (16, 1, 2, 24, 3, 3),
]


@pytest.mark.oracle
@pytest.mark.parametrize("seed, dims", list(enumerate(RANDOM_VISION, start=11)))
def test_live_oracle_random_config(tmp_path, seed, dims):
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    from k25ref.make_tiny import make_tiny, preset

    tool = _oracle_tool()
    width, heads, layers, mlp, side, frames = dims
    hub = preset("tiny")
    hub["vision_config"].update(vt_hidden_size=width, mm_hidden_size=width, vt_num_attention_heads=heads,
                                vt_num_hidden_layers=layers, vt_intermediate_size=mlp, init_pos_emb_height=side,
                                init_pos_emb_width=side, init_pos_emb_time=frames)
    make_tiny(str(tmp_path), config=hub, seed=seed, shards=2, tokenizer=False)
    model = load_model(str(tmp_path))
    rng = np.random.default_rng(seed)
    grid = [[1, 2 * rng.integers(1, 5), 2 * rng.integers(1, 5)], [frames, 4, 2], [1, 2, 2 * side + 2]]
    x = pixels(rng, grid)
    capture = {}
    vision_features(model.weights, model.cfg, x, grid, capture)
    tower, projector, _ = tool.load_oracle(str(tmp_path))
    ref = tool.run_oracle(tower, projector, x, grid)
    for name, value in ref.items():
        err = rel_err(capture[name], value)
        assert err < REL_TOL, f"seed {seed} {name}: rel err {err:.2e}"
