"""Obviously-correct float64 reference for `TokenStats` (for tests and runtime parity checks).

It materialises [N, V] float64 tensors: use it on small inputs only.
"""

from __future__ import annotations

import torch


def token_stats_reference(
    logits: torch.Tensor, tokens: torch.Tensor, *, temperature: float = 1.0
) -> dict[str, torch.Tensor]:
    """Per-token statistics computed naively in float64.

    Args:
        logits: [..., V] floating-point logits.
        tokens: [...] int sampled ids.
        temperature: divide the logits by this before the softmax.

    Returns:
        dict with keys logp, entropy, s, s_bar, sum_p2, each [...] float64 and differentiable
        (through autograd) with respect to `logits`.
    """
    x = logits.to(torch.float64) / temperature  # [..., V]
    logprobs = torch.log_softmax(x, dim=-1)  # [..., V]
    probs = logprobs.exp()  # [..., V]
    entropy = -(probs * logprobs).sum(-1)  # [...]
    logp = logprobs.gather(-1, tokens.long().unsqueeze(-1)).squeeze(-1)  # [...]
    s_all = probs * (entropy.unsqueeze(-1) + logprobs)  # [..., V]
    s = logp.exp() * (entropy + logp)  # [...]
    s_bar = (probs * s_all).sum(-1)  # [...]
    sum_p2 = (probs * probs).sum(-1)  # [...]
    return {"logp": logp, "entropy": entropy, "s": s, "s_bar": s_bar, "sum_p2": sum_p2}
