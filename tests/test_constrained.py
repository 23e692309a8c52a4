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


@pytest.mark.parametrize(
    ("answer", "allowed"),
    [
        ('{"lat":12.2333333333,"n":5,"p":-3.25,"m":1.5}', True),
        ('{"lat":12.23333333333,"n":5,"p":3.25,"m":1.5}', False),  # 11 decimal places
        ('{"lat":1,"n":9007199254740991,"p":3,"m":1}', True),
        ('{"lat":1,"n":9007199254740992,"p":3,"m":1}', False),  # past 2**53 - 1
        ('{"lat":1,"n":1,"p":999999999999999,"m":2}', True),
        ('{"lat":1,"n":1,"p":1000000000000001,"m":2}', False),  # past 1e15
        ('{"lat":1,"n":1,"p":1,"m":1.25}', False),  # the schema's own multipleOf stays
        ('{"lat":91,"n":1,"p":1,"m":1}', False),  # and its own bounds
    ],
)
def test_numbers_are_bounded_where_the_schema_leaves_them_open(
    smol: Any, answer: str, allowed: bool
) -> None:
    """So a small model cannot spend every token on one number; all still validate."""
    import llguidance.hf
    from llguidance import LLMatcher

    from shared.structured import grammar

    schema = {
        "type": "object",
        "properties": {
            "lat": {"type": "number", "minimum": -90, "maximum": 90},
            "n": {"type": "integer"},
            "p": {"type": "number"},
            "m": {"type": "number", "multipleOf": 0.5},
        },
        "required": ["lat", "n", "p", "m"],
    }
    ll = llguidance.hf.from_tokenizer(smol)
    fmt = ResponseFormat(type="json_schema", json_schema=schema)
    matcher = LLMatcher(ll, grammar(fmt), log_level=0)
    consumed = matcher.consume_tokens(smol.encode(answer, add_special_tokens=False))
    assert (consumed and matcher.is_accepting() and not matcher.is_error()) == allowed


def test_shaping_applies_penalties_top_k_and_min_p_to_its_row() -> None:
    from worker.constrained import shape_row

    row = torch.tensor([2.0, -1.0, 1.0, 0.5, 0.0])
    same = shape_row(row, {}, [0, 1], [1])
    assert torch.equal(same, row)
    penalised = shape_row(row, {"repetition_penalty": 2.0}, [0, 1, 1], [])
    assert penalised.tolist() == [1.0, -2.0, 1.0, 0.5, 0.0]  # seen: >0 halved, <0 doubled
    counted = shape_row(row, {"presence_penalty": 0.5, "frequency_penalty": 0.25}, [9], [2, 2])
    assert counted.tolist() == [2.0, -1.0, 0.0, 0.5, 0.0]  # 1 - (0.25 * 2 + 0.5)
    windowed = shape_row(
        row, {"repetition_penalty": 2.0, "penalty_window": 1}, [0, 1], []
    )  # only the last token counts
    assert windowed.tolist() == [2.0, -2.0, 1.0, 0.5, 0.0]
    top2 = shape_row(row, {"top_k": 2}, [], [])
    assert torch.isfinite(top2).tolist() == [True, False, True, False, False]
    kept = shape_row(row, {"min_p": 0.3}, [], [])  # p(x) >= 0.3 * p(max)
    probs = torch.softmax(row, -1)
    assert torch.isfinite(kept).tolist() == (probs >= 0.3 * probs.max()).tolist()


def test_shaping_touches_only_the_rows_that_ask() -> None:
    from worker.constrained import Shaping

    controls = Controls()
    controls.shaping["k1"] = {"top_k": 1}
    shaping = Shaping(controls)
    args = shaping.prepare_tensor_args([request("free", [3]), request("k1", [3])])
    logits = torch.tensor([[0.1, 0.3, 0.2], [0.1, 0.3, 0.2]])
    out = shaping(logits.clone(), args)
    assert torch.equal(out[0], logits[0])
    assert torch.isfinite(out[1]).tolist() == [False, True, False]


@pytest.mark.parametrize(
    ("schema", "answer", "allowed"),
    [
        ({"properties": {"a": {"type": "integer"}}}, '{"a":1}', True),
        ({"properties": {"a": {"type": "integer"}}}, '{"a":1,"b":2}', False),
        (
            {"properties": {"a": {"type": "integer"}}, "additionalProperties": True},
            '{"a":1,"b":2}',
            True,
        ),
        (
            {"allOf": [{"properties": {"a": {"type": "integer"}}},
                       {"properties": {"b": {"type": "integer"}}}]},
            '{"a":1,"b":2}',
            True,
        ),
        ({"type": "object"}, '{"anything":[1]}', True),  # JSON mode stays open
    ],
)  # fmt: skip
def test_declared_objects_get_no_undeclared_properties(
    smol: Any, schema: dict[str, Any], answer: str, allowed: bool
) -> None:
    import llguidance.hf
    from llguidance import LLMatcher

    from shared.structured import grammar

    ll = llguidance.hf.from_tokenizer(smol)
    fmt = ResponseFormat(type="json_schema", json_schema={"type": "object", **schema})
    matcher = LLMatcher(ll, grammar(fmt), log_level=0)
    consumed = matcher.consume_tokens(smol.encode(answer, add_special_tokens=False))
    assert (consumed and matcher.is_accepting() and not matcher.is_error()) == allowed
