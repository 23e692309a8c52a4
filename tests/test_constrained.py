"""The continuous-batching processors for grammar masks and seeds, on real tokenizers.

Driven the way the manager drives them (prepare the step's args, then apply to the
logits), for the CPU path and for the unconditional path used on accelerators.
"""

from __future__ import annotations

import json
from types import SimpleNamespace
from typing import Any

import pytest
import torch

from shared.contract import ResponseFormat
from worker.constrained import (
    UNCONSTRAINED,
    Controls,
    GrammarMask,
    SeededDraw,
    _Grammar,
    generated_tokens,
)

SCHEMA = {
    "type": "object",
    "properties": {"ok": {"type": "boolean"}, "n": {"type": "integer"}},
    "required": ["ok", "n"],
    "additionalProperties": False,
}


def request(request_id: str, generated: list[int], prompt: int = 0) -> Any:
    state = SimpleNamespace(
        request_id=request_id,
        initial_tokens=list(range(prompt)),
        generated_tokens=list(generated),
        _true_initial_tokens=0,
    )
    return SimpleNamespace(state=state)


def matcher(tokenizer: Any, stop_ids: list[int]) -> Any:
    import llguidance.hf
    from llguidance import LLMatcher

    from shared.structured import grammar

    ll = llguidance.hf.from_tokenizer(tokenizer, n_vocab=len(tokenizer), eos_token=stop_ids)
    return LLMatcher(ll, grammar(ResponseFormat(type="json_schema", json_schema=SCHEMA)))


@pytest.mark.parametrize("always", [False, True])
def test_masked_greedy_decoding_writes_valid_json_and_leaves_others_alone(
    smol: Any, always: bool
) -> None:
    vocab = len(smol)
    stops = [smol.convert_tokens_to_ids("<|im_end|>")]
    controls = Controls()
    mask = GrammarMask(controls, vocab, stops, "cpu", rows=4)
    mask.always = always  # the accelerator path is plain tensor ops: checkable here
    if always:
        mask.on_device = torch.zeros_like(mask.host)
    controls.grammars["json"] = _Grammar(matcher(smol, stops))
    generator = torch.Generator().manual_seed(0)
    generated: list[int] = []
    for _ in range(40):
        batch = [request("free", [1, 2]), request("json", generated)]
        args = mask.prepare_tensor_args(batch)
        assert args.tolist() == [UNCONSTRAINED, 1]
        logits = torch.randn((2, vocab), generator=generator)
        out = mask(logits.clone(), args)
        assert torch.equal(out[0], logits[0])  # the unconstrained row is untouched
        token = int(out[1].argmax())
        if token in stops:
            break
        generated.append(token)
    answer = json.loads(smol.decode(generated))
    assert set(answer) == {"ok", "n"} and isinstance(answer["ok"], bool)


def test_tokens_an_offload_folded_into_the_prompt_still_count() -> None:
    state = SimpleNamespace(
        initial_tokens=[9, 9, 9, 5, 6], generated_tokens=[7], _true_initial_tokens=3
    )
    assert generated_tokens(state) == [5, 6, 7]
    fresh = SimpleNamespace(initial_tokens=[9], generated_tokens=[1], _true_initial_tokens=0)
    assert generated_tokens(fresh) == [1]


@pytest.mark.parametrize("always", [False, True])
def test_a_seeded_row_keeps_one_token_drawn_from_its_own_generator(always: bool) -> None:
    controls = Controls()
    draw = SeededDraw(controls, "cpu")
    draw.always = always
    logits = torch.log(torch.tensor([[0.1, 0.2, 0.7], [0.5, 0.25, 0.25]]))

    def picks(seed: int) -> list[int]:
        controls.seeds["s"] = torch.Generator().manual_seed(seed)
        chosen = []
        for _ in range(200):
            args = draw.prepare_tensor_args([request("s", []), request("u", [])])
            out = draw(logits.clone(), args)
            assert torch.equal(out[1], logits[1])  # unseeded: the shared sampler decides
            assert torch.isfinite(out[0]).sum() == 1
            chosen.append(int(out[0].argmax()))
        return chosen

    first = picks(5)
    assert picks(5) == first and picks(6) != first
    share = first.count(2) / len(first)
    assert 0.55 < share < 0.85  # drawn with the row's probabilities (0.7), not argmax
