"""Choosing the next token from logits: greedy, or temperature -> top-k -> top-p sampling (transformers' order)."""
import numpy as np

from k25ref.nn import softmax


def greedy(logits):  # (V,) -> int
    """argmax; the lowest id wins a tie, like torch.argmax."""
    return int(np.argmax(logits))


def filter_top_k(logits, k):  # (V,) -> (V,)
    """Keep the k largest logits (ties at the k-th value are kept), -inf elsewhere; k <= 0 keeps all."""
    if k <= 0 or k >= logits.size:
        return logits
    kth = np.partition(logits, -k)[-k]
    return np.where(logits >= kth, logits, -np.inf)


def filter_top_p(logits, p):  # (V,) -> (V,)
    """Nucleus: keep the smallest set of most likely tokens whose probability reaches p (at least one)."""
    if p >= 1.0:
        return logits
    order = np.argsort(logits)                                  # ascending
    cum = np.cumsum(softmax(logits[order].astype(np.float64)))
    drop = cum <= 1.0 - p                                       # the unlikely tail, as transformers' TopPLogitsWarper
    drop[-1] = False
    out = logits.copy()
    out[order[drop]] = -np.inf
    return out


def sample(logits, temperature, top_k, top_p, rng):  # (V,) -> int
    """temperature 0 is greedy; otherwise scale, filter, and draw from the softmax with `rng`."""
    if temperature == 0:
        return greedy(logits)
    scaled = filter_top_p(filter_top_k(logits.astype(np.float64) / temperature, top_k), top_p)
    probs = softmax(scaled)
    return int(rng.choice(probs.size, p=probs / probs.sum()))
