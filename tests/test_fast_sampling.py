"""The engine's top-p and sampling choose what transformers' own would (worker/fast_sampling.py)."""

from __future__ import annotations

import pytest
import torch
from transformers import TopPLogitsWarper
from transformers.generation.continuous_batching import cb_logits_processors as cbl

from worker.fast_sampling import CANDIDATES, nucleus_mask, sample


def library_mask(scores: torch.Tensor, top_p: torch.Tensor) -> torch.Tensor:
    reference = cbl.ContinuousBatchingTopPLogitsWarper(TopPLogitsWarper(0.9))
    return reference(scores, top_p.view(torch.int32)) == float("-inf")


@pytest.mark.parametrize("scale", [0.5, 2.0, 5.0, 20.0, 100.0])
def test_the_nucleus_is_the_one_the_library_keeps(scale: float) -> None:
    torch.manual_seed(int(scale * 10))
    scores = torch.randn(12, 49152) * scale
    scores[3] = 0.0  # a flat row: the nucleus is far beyond the candidates (exact fallback)
    scores[4, :5] = 1000.0  # a tie at the top
    top_p = torch.tensor([0.9, 0.5, 0.99, 0.9, 0.9, 0.1, 1.0, 0.95, 0.7, 0.9, 0.3, 0.8])
    fell_back: list[int] = []

    def exact(rows: torch.Tensor) -> torch.Tensor:
        fell_back.extend(rows.tolist())
        return library_mask(scores[rows], top_p[rows])

    ours = nucleus_mask(scores, top_p, 1, exact)
    assert torch.equal(ours, library_mask(scores, top_p))
    assert 3 in fell_back and 6 in fell_back  # flat, and top_p=1.0 (keeps every token)
    if scale >= 20:
        assert fell_back == [3, 6]  # the peaked rows did not need the sort
    assert (~ours).sum(-1).min() >= 1


def test_rows_with_a_wide_nucleus_fall_back_to_the_exact_sort() -> None:
    scores = torch.zeros(1, CANDIDATES * 4)
    calls = []

    def exact(rows: torch.Tensor) -> torch.Tensor:
        calls.append(rows.tolist())
        return library_mask(scores[rows], torch.tensor([0.9]))

    ours = nucleus_mask(scores, torch.tensor([0.9]), 1, exact)
    assert calls == [[0]] and torch.equal(ours, library_mask(scores, torch.tensor([0.9])))


def test_sampling_follows_the_probabilities_and_never_picks_a_removed_token() -> None:
    torch.manual_seed(0)
    probs = torch.tensor([0.0, 0.1, 0.0, 0.6, 0.3, 0.0])
    draws = sample(probs.expand(200_000, -1).contiguous()).squeeze(-1)
    freq = torch.bincount(draws, minlength=6).float() / draws.numel()
    assert freq[[0, 2, 5]].sum() == 0  # zero probability: never, at either end
    assert torch.allclose(freq, probs, atol=0.005)


def test_the_engine_installs_them(smol: object) -> None:
    from transformers.generation.continuous_batching.model_runner import ModelRunner

    from worker.fast_sampling import install

    install()
    assert cbl.CLASSIC_TO_CB_PROCESSORS_MAP[TopPLogitsWarper].__name__ == "CandidateTopP"
    assert ModelRunner._sample.__module__ == "worker.fast_sampling"
