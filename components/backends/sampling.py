"""Choosing the next token of each row, as the hf backend samples (``components/backends/engine.py``).

Greedy at temperature 0; otherwise the logits are divided by the temperature, cut to the top-k (0: off)
and to the top-p nucleus (the smallest set of most likely tokens whose probability reaches ``top_p``,
as transformers' ``TopPLogitsWarper``), and one token is drawn with the row's own generator (inverse
CDF of one uniform draw). Logprobs are the log-softmax of the RAW logits, the hf backend's convention.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from components.backends.base import SamplingParams

RowLogprobs = tuple[float, torch.Tensor, torch.Tensor]


def filtered_probs(logits: torch.Tensor, params: list[SamplingParams]) -> torch.Tensor:
    """Sampling probabilities ``(rows, vocab)`` after temperature, top-k and top-p of each row."""
    temperature = torch.tensor([max(p.temperature, 1e-6) for p in params])[:, None]
    scores = logits / temperature
    vocab = scores.shape[1]
    if any(0 < p.top_k < vocab for p in params):
        top_k = torch.tensor([p.top_k if 0 < p.top_k < vocab else vocab for p in params])
        ranked = scores.sort(dim=1, descending=True).values
        kth = ranked.gather(1, (top_k - 1)[:, None])
        scores = scores.masked_fill(scores < kth, float("-inf"))
    if all(p.top_p >= 1 for p in params):
        return scores.softmax(dim=1)
    ascending, order = scores.sort(dim=1)
    cumulative = ascending.softmax(dim=1).cumsum(dim=1)
    top_p = torch.tensor([p.top_p for p in params])[:, None]
    remove = cumulative <= 1 - top_p
    remove[:, -1] = False
    scores = scores.scatter(1, order, ascending.masked_fill(remove, float("-inf")))
    return scores.softmax(dim=1)


def next_tokens(
    logits: torch.Tensor, params: list[SamplingParams], generators: list[torch.Generator | None]
) -> tuple[torch.Tensor, list[RowLogprobs]]:
    """The next token of every row, and (chosen logprob, top-k values, top-k ids) of the rows that asked."""
    tokens = logits.argmax(dim=1)
    sampled = [r for r, p in enumerate(params) if not p.greedy]
    if sampled:
        probs = filtered_probs(logits[sampled], [params[r] for r in sampled])
        draws = 1 - torch.cat([torch.rand(1, generator=generators[r]) for r in sampled])  # in (0, 1]
        cdf = probs.cumsum(dim=1)
        picks = torch.searchsorted(cdf, (draws * cdf[:, -1])[:, None]).squeeze(1)
        tokens[sampled] = picks.clamp(max=logits.shape[1] - 1)
    raw = torch.log_softmax(logits, dim=1)
    out: list[RowLogprobs] = []
    for r, p in enumerate(params):
        k = p.logprobs or 0
        top = raw[r].topk(k) if k > 0 else None
        values = top.values if top is not None else raw[r, :0]
        ids = top.indices if top is not None else raw[r, :0].long()
        out.append((float(raw[r, tokens[r]]), values, ids))
    return tokens, out
