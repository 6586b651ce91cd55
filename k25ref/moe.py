"""DeepSeekMoE with sigmoid routing [DSV3 §2.1.2]: each token picks A of E fine-grained experts, plus shared ones.

    s[t, i]  = sigmoid(u_t . e_i)                                 affinity, float32          [DSV3 eq. 15]
    choose   = TopK_i(s[t, i] + b_i) inside the topk_group best   b steers the choice only   [DSV3 eq. 16, §2.1.2]
               groups, a group scored by the sum of its top 2      (auxiliary-loss-free balancing)
    g[t, i]  = route_scale * s[t, i] / (sum_{j chosen} s[t, j] + 1e-20)   (if norm_topk_prob)
    h_t      = sum_{i chosen} g[t, i] * FFN_i(u_t) + sum_shared FFN_s(u_t)               [DSV3 eq. 12]

K2.5: E = 384, A = 8, one group, route_scale 2.827, one shared expert of width 2048.
Same as: transformers DeepseekV3TopkRouter / DeepseekV3MoE; DeepSeek inference/model.py Gate, MoE.
"""
import numpy as np

from k25ref.config import TextConfig
from k25ref.nn import sigmoid, swiglu


def router_logits(u, gate_weight):  # (T, D), (E, D) -> (T, E) float32
    """u_t . e_i, the router's product in float32 [DSV3 eq. 15]; no copy of an operand already float32
    (the gate is (E, D): 11 MB per layer at K2.5's shapes)."""
    return u.astype(np.float32, copy=False) @ gate_weight.astype(np.float32, copy=False).T


def route(u, gate_weight, correction_bias, cfg: TextConfig):  # (T, D), (E, D), (E,) -> (T, A) int64, (T, A) float32
    """Choose A experts per token and their mixing weights. Indices are ordered best-first by s + b."""
    E, A, G, Gk = cfg.n_routed_experts, cfg.num_experts_per_tok, cfg.n_group, cfg.topk_group
    T = u.shape[0]
    s = sigmoid(router_logits(u, gate_weight))                                 # (T, E)   router in float32
    choice = s + correction_bias                                               # (T, E)   bias only for choosing
    grouped = choice.reshape(T, G, E // G)                                     # (T, G, E/G)
    group_score = np.sort(grouped, axis=-1)[..., -2:].sum(axis=-1)             # (T, G)   sum of each group's top 2
    best_groups = np.argsort(-group_score, axis=-1, kind="stable")[:, :Gk]     # (T, Gk)
    allowed = np.zeros((T, G), bool)
    np.put_along_axis(allowed, best_groups, True, axis=-1)
    choice = np.where(np.repeat(allowed, E // G, axis=-1), choice, -np.inf)   # (T, E)
    idx = np.argsort(-choice, axis=-1, kind="stable")[:, :A]                   # (T, A)
    weights = np.take_along_axis(s, idx, axis=-1)                              # (T, A)   from s, never s + b
    if cfg.norm_topk_prob:
        weights = weights / (weights.sum(axis=-1, keepdims=True) + np.float32(1e-20))
    return idx, (weights * np.float32(cfg.routed_scaling_factor)).astype(np.float32)


expert_ffn = swiglu   # (n, D) -> (n, D): one expert is a SwiGLU FFN, W_down (silu(W_gate x) * W_up x); its
                      # matrices may be INT4 or BF16 as stored (nn.linear)


def moe(u, idx, weights, expert, shared):  # (T, D), (T, A), (T, A) -> (T, D)
    """Weighted sum of the chosen experts' SwiGLU outputs, plus the shared expert(s).

    `expert(e)` returns (gate_proj, up_proj, down_proj) of routed expert e (float32 or Int4Weight; fetched on
    demand, so only chosen experts are ever read); `shared` is the shared experts' (gate, up, down), or None.
    Each chosen expert runs once on the tokens that chose it.
    """
    out = np.zeros_like(u)                                                     # (T, D)
    for e in np.unique(idx):
        tokens, slot = np.nonzero(idx == e)                                    # who chose e, in which slot
        y = expert_ffn(u[tokens], *expert(int(e)))                             # (n_e, D)
        np.add.at(out, tokens, y * weights[tokens, slot][:, None])
    return out if shared is None else out + expert_ffn(u, *shared)
