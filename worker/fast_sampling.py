"""Top-p and sampling for the continuous-batching engine without full-vocabulary sorts.

On CPU, transformers' batched step spent about a third of its time outside the model
(16 conversations, SmolLM2's 49,152-token vocabulary, profiled with py-spy): per-request
top-p sorts every row (32 ms a step for 16 rows) and ``torch.multinomial`` draws over the
whole vocabulary (17 ms). The same choices cost far less:

- top-p: the nucleus lies within the few hundred largest logits unless a row is nearly
  flat, so take ``topk`` plus one ``logsumexp``; rows whose candidates do not reach
  ``top_p`` go through the library's exact sort.
- sampling: inverse CDF (a cumulative sum, one uniform draw per row, a binary search).

:func:`install` swaps them into transformers (pinned in pyproject.toml) once per process;
tests compare the masks with the library's and the sampled frequencies with the
probabilities.
"""

from __future__ import annotations

from typing import Any

CANDIDATES = 256  # logits per row searched for the nucleus before the exact fallback

_installed = False


def nucleus_mask(scores: Any, top_p: Any, min_keep: int, exact: Any) -> Any:
    """True where a logit is outside its row's nucleus, as ``TopPLogitsWarper`` decides
    (up to float rounding of a token sitting exactly on the ``top_p`` boundary).

    ``exact(rows)`` gives the library's mask for the rows the candidates do not settle.
    """
    import torch

    k = min(CANDIDATES, scores.size(-1))
    top, index = torch.topk(scores, k, dim=-1)  # descending
    probs = (top - torch.logsumexp(scores, dim=-1, keepdim=True)).exp()
    # Keep a token while the mass of the larger ones is still short of top_p (the library
    # removes tokens whose ascending cumulative mass is <= 1 - top_p: the same set).
    before = probs.cumsum(-1) - probs
    keep = before < top_p.unsqueeze(-1)
    keep[..., :min_keep] = True
    remove = torch.ones_like(scores, dtype=torch.bool)
    remove.scatter_(-1, index, ~keep)
    # top_p >= 1 keeps every token of non-zero probability: only the library's ascending
    # sum sees the ones too small to move a descending float32 sum.
    unsettled = ((probs.sum(-1) < top_p) | (top_p >= 1.0)).nonzero().squeeze(-1)
    if unsettled.numel():
        remove[unsettled] = exact(unsettled)
    return remove


def sample(probs: Any) -> Any:
    """One token per row drawn from ``probs`` ([rows, vocab]); zero-probability never."""
    import torch

    cdf = probs.cumsum(-1)
    draw = torch.rand(probs.size(0), 1, device=probs.device) * cdf[:, -1:]
    # right=True: the first index whose cumulative mass exceeds the draw, so a token of
    # zero probability (a flat step of the CDF) can never be it.
    return torch.searchsorted(cdf, draw, right=True).clamp_(max=probs.size(-1) - 1)


def install() -> None:
    """Use these in every continuous-batching manager this process creates."""
    global _installed
    if _installed:
        return
    import torch
    from transformers import TopPLogitsWarper
    from transformers.generation.continuous_batching import cb_logits_processors as cbl
    from transformers.generation.continuous_batching.model_runner import ModelRunner

    class CandidateTopP(cbl.ContinuousBatchingTopPLogitsWarper):
        def __call__(self, scores: torch.Tensor, tensor_arg: torch.Tensor) -> torch.Tensor:
            top_p = tensor_arg[: scores.size(0)].view(dtype=torch.float32)

            def exact(rows: torch.Tensor) -> torch.Tensor:
                kept = super(CandidateTopP, self).__call__(scores[rows], tensor_arg[rows])
                return kept == self.filter_value

            remove = nucleus_mask(scores, top_p, self.min_tokens_to_keep, exact)
            return scores.masked_fill(remove, self.filter_value)

    def _sample(self: Any, scores: torch.Tensor, output_ids: torch.Tensor) -> None:
        # ModelRunner._sample of transformers 5.23 with the draw replaced (see module doc).
        if self.do_sample or self.return_logprobs:
            probs = torch.nn.functional.softmax(scores[0], dim=-1)
        else:
            probs = scores.squeeze(0)
        if self.do_sample:
            next_tokens = sample(probs)
        else:
            next_tokens = torch.argmax(probs, dim=-1, keepdim=True)
        if self.return_logprobs:
            logprobs = probs.gather(dim=1, index=next_tokens).squeeze(-1).log()
        next_tokens = next_tokens.squeeze(-1)
        tokens = next_tokens.size(0)
        output_ids[0, :tokens].copy_(next_tokens)
        if self.return_logprobs:
            output_ids[1, :tokens].copy_(logprobs.view(dtype=torch.int32))

    cbl.CLASSIC_TO_CB_PROCESSORS_MAP[TopPLogitsWarper] = CandidateTopP
    ModelRunner._sample = _sample  # type: ignore[method-assign]  # the patch is the point
    _installed = True
