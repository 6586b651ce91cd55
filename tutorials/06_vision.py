# ---
# jupyter:
#   jupytext:
#     formats: py:percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 06 · Vision: patches, 2×2 merge groups, position interpolation, and a 4-frame video chunk
#
# **You will learn** how an image becomes 14×14 patches and then one LLM token per 2×2 group of patches,
# how MoonViT's learned 64×64 position table is resampled to any grid, and how a chunk of 4 video frames
# costs the tokens of a single frame (time is averaged away). **Needs** 01. **Runs in** about 3 s, no downloads.
# **Code** `k25ref/media.py` (`preprocess_image`, `preprocess_video`, `plot_patch_grid`), `k25ref/moonvit.py`
# (`pos_emb_interpolate`, `bicubic_matrix`, `temporal_embedding`), `k25ref/projector.py` (`temporal_merge`).
# **Docs** docs/media.md, docs/moonvit.md. **Papers** [Kimi-VL §2.1], [K2.5 §MoonViT-3D].
#
# $$ x_n = W_{\text{patch}}\,\mathrm{vec}(p_n) + b + \big(M_h E_{\text{pos}} M_w^\top\big)_{r(n),c(n)} \qquad
#    m_{r,c,k} = \frac1t \sum_{f<t} y_{f,\;2r + \lfloor k/2\rfloor,\;2c + k \bmod 2} $$

# %%
import os
import sys
import tempfile

import numpy as np
from matplotlib.figure import Figure
from PIL import Image, ImageDraw

import k25ref
from k25ref import media
from k25ref.make_tiny import make_tiny
from k25ref.moonvit import bicubic_matrix, pos_emb_interpolate, temporal_embedding
from k25ref.multimodal import count_media_tokens
from k25ref.projector import temporal_merge

FIGURES = os.environ.get("K25REF_FIGURES") or (
    sys.argv[sys.argv.index("--figures") + 1] if "--figures" in sys.argv else "k25ref-figures")
os.makedirs(FIGURES, exist_ok=True)
print(f"figures go to {os.path.abspath(FIGURES)} (--figures DIR or K25REF_FIGURES=DIR chooses)")

# %% [markdown]
# ## An image becomes patches
# A 150 × 100 drawing. The NaViT rule keeps its size (it is under the patch budget) and pads it with
# zeros to multiples of 28 px, so that 2 × 2 patches of 14 px tile it exactly.

# %%
image = Image.new("RGB", (150, 100), (235, 235, 220))
draw = ImageDraw.Draw(image)
draw.ellipse((20, 15, 90, 85), fill=(200, 40, 40))
draw.rectangle((95, 30, 140, 75), fill=(40, 90, 200))
pixel_values, grid_thw = media.preprocess_image(image)                 # (N, 3, 14, 14), (1, 3)
t, h, w = grid_thw[0]
print("pixel_values", pixel_values.shape, "grid_thw", grid_thw.tolist(), "->", h * w // 4, "LLM tokens")
assert (t, h, w) == (1, 8, 12) and pixel_values.shape == (h * w, 3, 14, 14)
assert count_media_tokens(grid_thw) == h * w // 4

# %% [markdown]
# Claim: patch n is the 14×14 block at row n // w, column n % w of the normalised, padded picture
# (channel first, values in [-1, 1]; padding is 0 → -1).

# %%
canvas = pixel_values.reshape(h, w, 3, 14, 14).transpose(0, 3, 1, 4, 2).reshape(h * 14, w * 14, 3)   # (H, W, 3)
expected = np.asarray(image, np.float32) / 255 * 2 - 1                 # (100, 150, 3) normalised
assert np.allclose(canvas[:100, :150], expected, atol=1e-6) and np.all(canvas[100:] == -1)
info = media.plot_patch_grid(image, os.path.join(FIGURES, "06_patch_grid.png"))
print(info)

# %% [markdown]
# ## Position embeddings: a learned table, resampled bicubically
# K2.5 learns a 64 × 64 table of position vectors; an h × w grid reads it through two 1-D bicubic
# resampling matrices, $E' = M_h E M_w^\top$. Claims: each row of M sums to 1 (a constant table stays
# constant), and at the table's own size M is exactly the identity.

# %%
Ht = Wt = 8                                                            # the tiny tower's table; K2.5: 64
yy, xx = np.meshgrid(np.arange(Ht), np.arange(Wt), indexing="ij")
table = np.stack([np.sin(xx / 2.0) + np.cos(yy / 3.0), (xx + yy) % 3 - 1.0], axis=-1).astype(np.float32)  # (Ht, Wt, 2)
M = bicubic_matrix(w, Wt)                                              # (w, Wt) columns: 8 -> 12
assert np.allclose(M.sum(axis=1), 1, atol=1e-6)
assert np.array_equal(bicubic_matrix(Ht, Ht), np.eye(Ht, dtype=np.float32))
resized = pos_emb_interpolate(table, h, w)                             # (h, w, 2)
assert np.allclose(pos_emb_interpolate(table, Ht, Wt), table)
print("table", table.shape, "->", resized.shape)

# %%
fig = Figure(figsize=(8, 2.8))
for k, (arr, name) in enumerate(((table[..., 0], f"learned table {Ht}x{Wt}"), (resized[..., 0], f"resampled to {h}x{w}"))):
    ax = fig.add_subplot(1, 3, k + 1)
    ax.imshow(arr, cmap="coolwarm", interpolation="nearest")
    ax.set_title(f"{name} (channel 0)", fontsize=8)
ax = fig.add_subplot(1, 3, 3)
ax.imshow(M, cmap="Greys", interpolation="nearest")
ax.set_title(f"M_w: {w} x {Wt} (4 taps a row), rows sum to 1", fontsize=8)
fig.tight_layout()
fig.savefig(os.path.join(FIGURES, "06_pos_emb.png"), dpi=90)

# %% [markdown]
# ## A 4-frame video chunk and temporal pooling
# Four frames of a moving square at 2 fps: K2.5 samples 2 frames per second and groups 4 into a chunk,
# so this is one chunk, `grid_thw = [[4, h, w]]`. The tower sees all 4 frames (with a sin/cos term per
# frame); the projector then averages each patch over the frames before the 2 × 2 merge.
# Claims: the chunk costs h·w/4 tokens, like one frame; a 2×2 merge group gathers patches
# (2r, 2c), (2r, 2c+1), (2r+1, 2c), (2r+1, 2c+1); pooling is the mean over frames.

# %%
frames = []
for f in range(4):
    frame = Image.new("RGB", (112, 84), (20, 20, 20))
    ImageDraw.Draw(frame).rectangle((8 + 22 * f, 20, 36 + 22 * f, 48), fill=(250, 200, 0))
    frames.append(frame)
video_pixels, video_grid, stamps = media.preprocess_video(frames, fps=2.0)
vt, vh, vw = video_grid[0]
print("video", video_pixels.shape, "grid_thw", video_grid.tolist(), "timestamps", stamps)
assert video_grid.tolist() == [[4, vh, vw]] and count_media_tokens(video_grid) == vh * vw // 4

N = vt * vh * vw
index = np.arange(N, dtype=np.float32)[:, None]                        # (N, 1) feature = packed patch index
merged = temporal_merge(index, video_grid)                             # (vh*vw/4, 4, 1)
frame_area = vh * vw
first_group = [0, 1, vw, vw + 1]                                       # patches of group (0, 0) in frame 0
assert merged.shape == (vh * vw // 4, 4, 1)
assert np.allclose(merged[0, :, 0], np.mean([np.array(first_group) + f * frame_area for f in range(4)], axis=0))
emb = temporal_embedding(4, 8)                                         # (t, D) frame codes, 0 for a still image
assert np.allclose(temporal_embedding(1, 8), 0) and not np.allclose(emb[1], emb[0])

# %% [markdown]
# ## Through the tower
# A tiny random checkpoint with a vision tower (the `tiny` preset of `make_tiny`) turns the image and the
# chunk into LLM-width features: one row per merge group, in prompt order.

# %%
scratch = tempfile.TemporaryDirectory(prefix="k25ref-")                # removed when Python exits
tiny = make_tiny(os.path.join(scratch.name, "tiny"), "tiny", seed=0, shards=1)
model = k25ref.load_model(tiny)
both = np.concatenate([pixel_values, video_pixels]), np.concatenate([grid_thw, video_grid])
features = model.vision_features(*both)                               # (M, D)
print("features", features.shape, "=", count_media_tokens(both[1]), "tokens x D", model.cfg.text.hidden_size)
assert features.shape == (count_media_tokens(both[1]), model.cfg.text.hidden_size) and np.isfinite(features).all()

# %%
pooled = video_pixels.reshape(vt, vh, vw, 3, 14, 14).mean(axis=0)      # what averaging does to raw pixels
fig = Figure(figsize=(10, 2.2))
for f in range(5):
    ax = fig.add_subplot(1, 5, f + 1)
    src = video_pixels.reshape(vt, vh, vw, 3, 14, 14)[f] if f < 4 else pooled
    img = src.transpose(0, 3, 1, 4, 2).reshape(vh * 14, vw * 14, 3)
    ax.imshow((img + 1) / 2, interpolation="nearest")
    for y in range(0, vh * 14 + 1, 28):
        ax.axhline(y - 0.5, color="cyan", lw=0.6)
    for x in range(0, vw * 14 + 1, 28):
        ax.axvline(x - 0.5, color="cyan", lw=0.6)
    ax.set_axis_off()
    ax.set_title(f"frame {f} ({stamps[0] if f == 0 else '+' + str(f / 2) + ' s'})" if f < 4 else
                 "mean over the chunk", fontsize=8)
fig.suptitle(f"06 one chunk: 4 frames -> {vh * vw // 4} tokens (cyan: 2x2 merge groups)", fontsize=9)
fig.tight_layout()
fig.savefig(os.path.join(FIGURES, "06_video_chunk.png"), dpi=90)

# %% [markdown]
# (The tower averages *features*, not pixels; the last panel only shows what is being pooled.)
#
# **Exercise.** Give the video 6 frames. How many chunks, and how many tokens? Check with
# `media.num_video_tokens(112, 84, 6, fps=2.0)`.
