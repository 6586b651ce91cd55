"""From MoonViT patch features to LLM input embeddings: temporal pooling, 2x2 patch merging, projection.

Each item [t, h, w] becomes h/2 * w/2 tokens in the text model's width D, whatever its t: a video chunk of
up to 4 frames costs the tokens of one frame, because time is averaged away [K2.5 report, MoonViT-3D]:

    m[r, c, k]  = mean_f y[f, 2r + k // 2, 2c + k % 2]      k = 0..3 = (0,0), (0,1), (1,0), (1,1)   (M, 4, Dvis)
    z           = [LN(m_0) | LN(m_1) | LN(m_2) | LN(m_3)]    one LayerNorm per sub-patch, then concat (M, 4*Dvis)
    features    = W_2 gelu_erf(W_1 z + b_1) + b_2                                                   (M, D)

Merged tokens come in raster order over the (h/2, w/2) grid, items one after another.

Same as: transformers `get_vision_temporal_merge_index` + `Kimi_K25MultimodalProjection`; hub
`tpool_patch_merger` + `K2VLMultiModalProjector` (checkpoint names `mm_projector.pre_norm`,
`mm_projector.proj.0`, `mm_projector.proj.2`).
"""
import numpy as np

from k25ref.config import KimiK25Config
from k25ref.moonvit import REFERENCE, vision_config, vision_tower

PROJECTOR = "mm_projector."


def temporal_merge(x, grid_thw):  # (N, Dvis), (I, 3) -> (M, 4, Dvis),  M = sum h*w/4
    """Average each item over its frames, then gather every 2x2 block of patches into one row of 4."""
    D = x.shape[-1]
    parts, start = [], 0
    for t, h, w in (tuple(int(n) for n in row) for row in np.asarray(grid_thw)):
        item = x[start:start + t * h * w].reshape(t, h // 2, 2, w // 2, 2, D)      # (t, h/2, 2, w/2, 2, Dvis)
        item = item.transpose(1, 3, 0, 2, 4, 5).reshape(h * w // 4, t, 4, D)       # (h/2*w/2, t, 4, Dvis)
        parts.append(item.mean(axis=1, dtype=np.float32))                          # (h/2*w/2, 4, Dvis)
        start += t * h * w
    assert start == x.shape[0], "grid_thw must cover every row of x"
    return np.concatenate(parts)


def project(W, cfg: KimiK25Config, merged, ops=REFERENCE):  # (M, 4, Dvis) -> (M, D)
    """The patch-merger projector: per-sub-patch LayerNorm, concat, Linear, exact GELU, Linear.

    The GELU here is the exact erf form (torch nn.GELU()), unlike the tower's tanh approximation.
    """
    v = vision_config(cfg)
    M, K, Dvis = merged.shape
    assert (K, Dvis) == (4, v.hidden_size)
    z = ops.layer_norm(merged, W.f32(f"{PROJECTOR}pre_norm.weight"), W.f32(f"{PROJECTOR}pre_norm.bias"),
                       v.projector_ln_eps)                                          # (M, 4, Dvis)
    z = z.reshape(M, K * Dvis)                                                      # (M, 4*Dvis)  k*Dvis + c
    h = ops.gelu_erf(z @ W.f32(f"{PROJECTOR}proj.0.weight").T + W.f32(f"{PROJECTOR}proj.0.bias"))  # (M, 4*Dvis)
    return h @ W.f32(f"{PROJECTOR}proj.2.weight").T + W.f32(f"{PROJECTOR}proj.2.bias")        # (M, D)


def vision_features(W, cfg: KimiK25Config, pixel_values, grid_thw, capture=None,
                    ops=REFERENCE):  # (N, 3, P, P), (I, 3) -> (M, D)
    """Images and video chunks -> one LLM embedding per merged 2x2 block, in prompt order.

    Row counts: item [t, h, w] gives h*w/4 rows (k25ref.multimodal.count_media_tokens). `capture` also
    receives `vision.tower` (final LayerNorm output), `vision.merged` and `vision.features`.
    """
    y = vision_tower(W, cfg, pixel_values, grid_thw, capture, ops)                  # (N, Dvis), grid checked
    merged = temporal_merge(y, grid_thw)                                            # (M, 4, Dvis)
    features = project(W, cfg, merged, ops)                                         # (M, D)
    if capture is not None:
        capture.update({"vision.tower": y, "vision.merged": merged, "vision.features": features})
    return features
