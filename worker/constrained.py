"""Per-request controls inside transformers' continuous batching: grammar masks and seeds.

Two continuous-batching logits processors join the manager's list (transformers 5.23,
pinned) before its loop starts:

- :class:`GrammarMask`, first: for each request with a response format, the tokens its
  llguidance matcher allows next (everything else -inf). Before computing the mask it
  advances the matcher by the tokens the request sampled since the last step, so the
  grammar always follows what was actually generated (also across the library's
  offload/re-prefill, which moves generated tokens into the prompt).
- :class:`SeededDraw`, last (after temperature and top-p): a request with a seed draws its
  next token from its own ``torch.Generator`` and leaves only that token standing, so the
  batch's shared sampler must pick it. The same seed, prompt and settings then give the
  same tokens whenever the logits are the same (alone; see docs/api.md on batching).

Masks are computed on the host while the batch is prepared (llguidance's matcher is
CPU code) and applied to the logits on the model's device. The work is done only for
requests that ask for it; other rows pass through untouched.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any

import torch
from transformers.generation.continuous_batching.cb_logits_processors import (
    ContinuousBatchingLogitsProcessor,
)

from shared.contract import ResponseFormat
from shared.structured import grammar

UNCONSTRAINED = -1


@dataclass
class _Grammar:
    matcher: Any  # llguidance.LLMatcher
    consumed: int = 0


@dataclass
class Controls:
    """What the engine's requests asked for, by request id (read by the loop thread)."""

    grammars: dict[str, _Grammar] = field(default_factory=dict)
    seeds: dict[str, torch.Generator] = field(default_factory=dict)
    shaping: dict[str, dict[str, Any]] = field(default_factory=dict)

    def forget(self, request_id: str) -> None:
        self.grammars.pop(request_id, None)
        self.seeds.pop(request_id, None)
        self.shaping.pop(request_id, None)


def generated_tokens(state: Any) -> list[int]:
    """Every token a request generated, also after an offload folded some into its prompt."""
    true_prompt = getattr(state, "_true_initial_tokens", 0)
    earlier = list(state.initial_tokens[true_prompt:]) if true_prompt else []
    return earlier + list(state.generated_tokens)


class GrammarMask(ContinuousBatchingLogitsProcessor):
    def __init__(
        self, controls: Controls, vocab: int, stop_ids: list[int], device: Any, rows: int
    ) -> None:
        self.supported_kwargs = {}  # requests register in Controls, not through add_request
        self.ignored_kwargs = ()
        self.controls = controls
        self.vocab = vocab
        self.words = (vocab + 31) // 32
        self.stop_ids = stop_ids
        self.host = torch.zeros((rows, self.words), dtype=torch.int32)
        self.device = torch.device(device)
        # Under CUDA graphs the applied ops are recorded once: keep them unconditional.
        self.always = self.device.type != "cpu"
        self.on_device = (
            torch.zeros((rows, self.words), dtype=torch.int32, device=self.device)
            if self.always
            else self.host
        )
        self.shifts = torch.arange(32, dtype=torch.int32, device=self.device)
        self.rows: list[int] = []  # positions of this step's constrained rows

    def fill_defaults(self, int32_tensor: torch.Tensor) -> None:
        int32_tensor.fill_(UNCONSTRAINED)

    def _grow(self, rows: int) -> None:
        if rows > self.host.size(0) and not self.always:
            self.host = torch.zeros((rows, self.words), dtype=torch.int32)
            self.on_device = self.host

    def _fill(self, row: int, state: _Grammar, tokens: list[int]) -> None:
        import llguidance.torch

        matcher = state.matcher
        for token in tokens[state.consumed :]:
            matcher.consume_token(token)
        state.consumed = len(tokens)
        if matcher.is_error():
            self.host[row].zero_()  # cannot go on: only ending is allowed
        else:
            llguidance.torch.fill_next_token_bitmask(matcher, self.host, row)
        if matcher.is_error() or matcher.is_accepting() or matcher.is_stopped():
            for stop in self.stop_ids:  # any of the model's end tokens, not just one
                self.host[row, stop // 32] |= _bit(stop % 32)

    def prepare_tensor_args(self, requests_with_new_token: list[Any]) -> torch.Tensor:
        self._grow(len(requests_with_new_token))
        positions = []
        self.rows = []
        for i, request in enumerate(requests_with_new_token):
            state = self.controls.grammars.get(request.state.request_id)
            if state is None:
                positions.append(UNCONSTRAINED)
                continue
            self._fill(i, state, generated_tokens(request.state))
            positions.append(i)
            self.rows.append(i)
        if self.rows and self.on_device is not self.host:
            self.on_device[: len(positions)].copy_(self.host[: len(positions)])
        return torch.tensor(positions, dtype=torch.int32)

    def __call__(self, scores: torch.Tensor, tensor_arg: torch.Tensor) -> torch.Tensor:
        if not self.always:
            if not self.rows:
                return scores
            index = torch.tensor(self.rows, dtype=torch.long)
            allowed = self._unpack(self.on_device[index], scores.size(-1))
            scores[index] = scores[index].masked_fill(~allowed, float("-inf"))
            return scores
        positions = tensor_arg[: scores.size(0)]
        allowed = self._unpack(self.on_device[positions.clamp(min=0).long()], scores.size(-1))
        allowed |= (positions < 0).unsqueeze(-1)
        return scores.masked_fill(~allowed, float("-inf"))

    def _unpack(self, words: torch.Tensor, width: int) -> torch.Tensor:
        bits = (words.unsqueeze(-1) >> self.shifts) & 1  # [rows, words, 32], little-endian
        allowed = bits.reshape(words.size(0), -1)[:, :width].bool()
        if allowed.size(-1) < width:  # logits wider than the tokenizer: never the extra ids
            allowed = torch.nn.functional.pad(allowed, (0, width - allowed.size(-1)))
        return allowed


def _bit(index: int) -> torch.Tensor:
    # Bit 31 does not fit a positive int32: build the word by wrapping.
    value = 1 << index
    return torch.tensor(value - (1 << 32) if value >= 1 << 31 else value, dtype=torch.int32)


class Shaping(ContinuousBatchingLogitsProcessor):
    """Per-request top-k, min-p and repetition / presence / frequency penalties.

    Applied row by row to the requests that ask for them (others pass untouched), before
    temperature: repetition penalty over the prompt and answer (HF and Ollama semantics),
    presence and frequency penalties over the answer (OpenAI's), both over the last
    ``penalty_window`` tokens when one is set; then top-k; min-p on the distribution at
    temperature 1. Host-side row work: not captured by accelerator graphs.
    """

    def __init__(self, controls: Controls) -> None:
        self.supported_kwargs = {}
        self.ignored_kwargs = ()
        self.controls = controls
        self.rows: list[tuple[int, dict[str, Any], list[int], list[int]]] = []

    def fill_defaults(self, int32_tensor: torch.Tensor) -> None:
        int32_tensor.zero_()

    def prepare_tensor_args(self, requests_with_new_token: list[Any]) -> torch.Tensor:
        self.rows = []
        for i, request in enumerate(requests_with_new_token):
            options = self.controls.shaping.get(request.state.request_id)
            if options is None:
                continue
            answer = generated_tokens(request.state)
            true_prompt = getattr(request.state, "_true_initial_tokens", 0)
            prompt = request.state.initial_tokens[: true_prompt or None]
            self.rows.append((i, options, list(prompt) + answer, answer))
        return torch.zeros(len(requests_with_new_token), dtype=torch.int32)

    def __call__(self, scores: torch.Tensor, tensor_arg: torch.Tensor) -> torch.Tensor:
        for position, options, sequence, answer in self.rows:
            scores[position] = shape_row(scores[position], options, sequence, answer)
        return scores


def shape_row(
    row: torch.Tensor, options: dict[str, Any], sequence: list[int], answer: list[int]
) -> torch.Tensor:
    window = options.get("penalty_window") or 0
    if window:
        sequence, answer = sequence[-window:], answer[-window:]
    row = row.clone()
    penalty = options.get("repetition_penalty")
    if penalty and sequence:
        seen = torch.tensor(sorted(set(sequence)), dtype=torch.long, device=row.device)
        values = row[seen]
        row[seen] = torch.where(values > 0, values / penalty, values * penalty)
    presence, frequency = (
        options.get("presence_penalty", 0.0),
        options.get("frequency_penalty", 0.0),
    )
    if (presence or frequency) and answer:
        ids, counts = torch.tensor(answer, dtype=torch.long).unique(return_counts=True)
        ids, counts = ids.to(row.device), counts.to(row.device, row.dtype)
        row[ids] -= frequency * counts + presence
    top_k = options.get("top_k")
    if top_k and top_k < row.size(-1):
        kth = torch.topk(row, top_k).values[-1]
        row = row.masked_fill(row < kth, float("-inf"))
    min_p = options.get("min_p")
    if min_p:
        probs = torch.softmax(row, dim=-1)
        row = row.masked_fill(probs < min_p * probs.max(), float("-inf"))
    return row


class SeededDraw(ContinuousBatchingLogitsProcessor):
    def __init__(self, controls: Controls, device: Any) -> None:
        self.supported_kwargs = {}
        self.ignored_kwargs = ()
        self.controls = controls
        self.always = torch.device(device).type != "cpu"
        self.rows: list[int] = []

    def fill_defaults(self, int32_tensor: torch.Tensor) -> None:
        unseeded = torch.full_like(int32_tensor, -1.0, dtype=torch.float32)
        int32_tensor.copy_(unseeded.view(torch.int32))

    def prepare_tensor_args(self, requests_with_new_token: list[Any]) -> torch.Tensor:
        draws = []
        self.rows = []
        for i, request in enumerate(requests_with_new_token):
            generator = self.controls.seeds.get(request.state.request_id)
            if generator is None:
                draws.append(-1.0)
                continue
            draws.append(float(torch.rand(1, generator=generator)))
            self.rows.append(i)
        return torch.tensor(draws, dtype=torch.float32).view(torch.int32)

    def __call__(self, scores: torch.Tensor, tensor_arg: torch.Tensor) -> torch.Tensor:
        draws = tensor_arg[: scores.size(0)].view(torch.float32)
        if not self.always:
            if not self.rows:
                return scores
            index = torch.tensor(self.rows, dtype=torch.long)
            scores[index] = _only_drawn(scores[index], draws[index])
            return scores
        seeded = (draws >= 0).unsqueeze(-1)
        return torch.where(seeded, _only_drawn(scores, draws.clamp(min=0)), scores)


def _only_drawn(scores: torch.Tensor, draws: torch.Tensor) -> torch.Tensor:
    """Each row keeps only the token its uniform draw lands on (inverse CDF)."""
    cdf = torch.softmax(scores, dim=-1).cumsum(-1)
    token = torch.searchsorted(cdf, (draws * cdf[:, -1]).unsqueeze(-1), right=True)
    token = token.clamp_(max=scores.size(-1) - 1)
    only = torch.full_like(scores, float("-inf"))
    return only.scatter_(-1, token, 0.0)


class RequestControls:
    """Installs the processors in a manager and registers each request's controls."""

    def __init__(self, manager: Any, tokenizer: Any, vocab: int, stop_ids: list[int]) -> None:
        self.controls = Controls()
        self._tokenizer = tokenizer
        self._vocab = vocab
        self._stop_ids = stop_ids
        self._ll_tokenizer: Any = None
        self._lock = threading.Lock()
        processors = manager.logit_processor
        cb_config = manager.continuous_batching_config
        rows = cb_config.max_requests_per_batch or 1024
        # Accelerator graphs record a step's ops once: the mask and the seeded draw are
        # plain tensor ops there, but the shaping's per-row host work would not re-run.
        self.per_request_shaping = not any(getattr(cb_config, "cuda_graph_booleans", ()))
        device = manager.model.device
        self.mask = mask = GrammarMask(self.controls, vocab, stop_ids, device, rows)
        self.shaping = shaping = Shaping(self.controls)
        self.draw = draw = SeededDraw(self.controls, device)
        # The mask goes first, so temperature and top-p only ever see allowed tokens (a
        # nucleus of disallowed ones would leave nothing to sample); the per-request
        # penalties and top-k next, like the library's order; the seeded draw last.
        processors.logits_processor.insert(0, mask)
        processors.logits_processor.insert(1, shaping)
        processors.logits_processor.append(draw)
        processors.tensors_required += 3
        processors.do_processing = True

    def _tokenizer_for_grammars(self) -> Any:
        with self._lock:  # built once, on the first structured request (about a second)
            if self._ll_tokenizer is None:
                import llguidance.hf

                self._ll_tokenizer = llguidance.hf.from_tokenizer(
                    self._tokenizer, n_vocab=self._vocab, eos_token=self._stop_ids
                )
            return self._ll_tokenizer

    def register(
        self,
        request_id: str,
        response_format: ResponseFormat | None,
        seed: int | None,
        shaping: dict[str, Any] | None = None,
    ) -> None:
        """Before the request is added; raises SchemaError for a format it cannot enforce."""
        if shaping:
            self.controls.shaping[request_id] = shaping
        if response_format is not None:
            from llguidance import LLMatcher

            matcher = LLMatcher(self._tokenizer_for_grammars(), grammar(response_format))
            if matcher.is_error():
                from shared.structured import SchemaError

                raise SchemaError(f"this JSON schema cannot be enforced: {matcher.get_error()}")
            self.controls.grammars[request_id] = _Grammar(matcher)
        if seed is not None:
            self.controls.seeds[request_id] = torch.Generator().manual_seed(seed)

    def forget(self, request_id: str) -> None:
        self.controls.forget(request_id)
