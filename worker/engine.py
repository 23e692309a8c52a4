"""The resident model, shared by every turn the worker runs at once.

All in-flight turns go through transformers' continuous-batching manager: new
requests join between decode steps and finished ones leave, so the tenth
person asking does not wait for nine whole answers. Each turn's thread calls
:meth:`TransformersEngine.generate` and gets its own text stream back; one router thread
fans the manager's outputs out to them.
"""

from __future__ import annotations

import logging
import os
import queue
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from shared.contract import Message, ResponseFormat
from shared.settings import Settings

from .engines import prompt_token_ids
from .model_source import Loaded
from .prompt import build_prompt, stop_token_ids

log = logging.getLogger(__name__)

# OpenMP threads that busy-wait between parallel regions collapse when anything else
# wants the CPU (redis, the bots, a second worker): on a 2-core machine under load,
# single-stream decode fell from 14 to 2.4 tok/s. Sleeping waiters cost almost nothing
# when alone. libgomp reads this once, when torch is first imported, so set it here,
# before the worker imports torch (an explicit OMP_WAIT_POLICY wins).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

MIN_TEMPERATURE = 1e-3  # "temperature 0" samples this cold: greedy in all but name


def sampling_for(
    settings: Settings, temperature: float | None, top_p: float | None
) -> dict[str, float]:
    """A turn's temperature and top_p: its own, else the settings', never exactly 0."""
    chosen = settings.temperature if temperature is None else temperature
    return {
        "temperature": max(chosen, MIN_TEMPERATURE),
        "top_p": settings.top_p if top_p is None else top_p,
    }


@dataclass(frozen=True)
class Completion:
    text: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str  # stop | length | timeout | cancelled | error
    first_token_s: float  # submit -> first token
    total_s: float  # submit -> last token
    # Every generated id, the final stop token included: the tool loop continues from
    # exactly what the model produced (e.g. <|python_tag|> ... <|eom_id|>).
    token_ids: tuple[int, ...] = ()


class EngineError(RuntimeError):
    pass


PAGE_SIZE = 256  # tokens per KV-cache block (transformers' default page size)
CPU_CACHE_TOKENS = 16384
CPU_BATCH_TOKENS = 2048


def cache_budget(settings: Settings, device: str) -> dict[str, Any]:
    """Bound the paged KV cache.

    transformers sizes it from free memory, which on CPU means most of the
    machine's RAM (and a per-step attention mask that grows with it).
    """
    tokens = settings.kv_cache_tokens or (CPU_CACHE_TOKENS if device == "cpu" else 0)
    if not tokens:
        return {}
    budget: dict[str, Any] = {"num_blocks": max(tokens // PAGE_SIZE, 1), "page_size": PAGE_SIZE}
    if device == "cpu":
        budget["max_batch_tokens"] = CPU_BATCH_TOKENS
    return budget


def cpu_dtype(settings: Settings) -> Any:
    """The dtype the model runs in on CPU (see ``CORRAL_CPU_DTYPE``)."""
    import torch

    if settings.cpu_dtype == "auto":
        native = (
            torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported()
        )
        return torch.bfloat16 if native else torch.float32
    return getattr(torch, settings.cpu_dtype)


class Detokenizer:
    """Incremental decoding that never emits half a multi-byte character."""

    def __init__(self, tokenizer: Any, stop_ids: set[int]) -> None:
        self.tokenizer = tokenizer
        self.stop_ids = stop_ids
        self.text = ""

    def update(self, tokens: list[int]) -> str:
        kept = [t for t in tokens if t not in self.stop_ids]
        text = self.tokenizer.decode(kept, skip_special_tokens=False)
        if text.endswith("\ufffd"):
            return ""  # wait for the rest of the character
        delta = text[len(self.text) :] if text.startswith(self.text) else ""
        self.text = text
        return delta


class TransformersEngine:
    """The :class:`~worker.engines.Engine` that runs a text model in this process."""

    vision = False  # images: see worker/vision.py
    max_images = 0
    structured_outputs = True  # response_format and seed (worker/constrained.py)

    def __init__(self, loaded: Loaded, settings: Settings) -> None:
        from transformers import GenerationConfig
        from transformers.generation.configuration_utils import ContinuousBatchingConfig

        self.model = loaded.model
        if loaded.device == "cpu" and loaded.quantization == "none":
            # Batched decode on CPU is matmul-bound: native bf16 doubles its arithmetic rate.
            self.model.to(cpu_dtype(settings))
        self.tokenizer = loaded.tokenizer
        self.name = loaded.name
        self.device = loaded.device
        self.quantization = loaded.quantization
        self.settings = settings
        if settings.fast_sampling:
            from .fast_sampling import install

            install()  # before the manager builds its logits processors
        self.stop_ids = stop_token_ids(
            self.tokenizer, getattr(self.model, "generation_config", None)
        )
        pad = self.tokenizer.pad_token_id
        config = GenerationConfig(
            do_sample=True,
            temperature=max(settings.temperature, MIN_TEMPERATURE),
            top_p=settings.top_p,
            max_new_tokens=settings.max_new_tokens,
            eos_token_id=self.stop_ids,
            pad_token_id=pad if pad is not None else self.stop_ids[0],
        )
        cb_config = ContinuousBatchingConfig(
            per_request_processors=True,
            # Grammar masks need each request's previous token before the next step is
            # prepared, which double-buffered (async) batching does not have yet.
            use_async_batching=False,
            max_requests_per_batch=settings.max_batch or None,
            **cache_budget(settings, loaded.device),
        )
        self.manager = self.model.init_continuous_batching(
            generation_config=config, continuous_batching_config=cb_config
        )
        from .constrained import RequestControls

        vocab = self.model.config.get_text_config().vocab_size
        self.controls = RequestControls(self.manager, self.tokenizer, vocab, self.stop_ids)
        self.per_request_shaping = self.controls.per_request_shaping
        self.manager.start()
        self._queues: dict[str, queue.Queue[Any]] = {}
        self._lock = threading.Lock()
        self._running = True
        self._router = threading.Thread(target=self._route, name="engine-router", daemon=True)
        self._router.start()

    def _route(self) -> None:
        while self._running:
            result = self.manager.get_result(timeout=0.1)
            if result is None:
                continue
            with self._lock:
                box = self._queues.get(result.request_id)
            if box is not None:
                box.put(result)

    def count_tokens(self, messages: Sequence[Message]) -> int:
        return len(build_prompt(self.tokenizer, messages).input_ids)

    def generate(
        self,
        prompt: Sequence[int] | Sequence[Message],
        *,
        images: Sequence[bytes] = (),
        max_new_tokens: int | None = None,
        temperature: float | None = None,
        top_p: float | None = None,
        on_text: Callable[[str], None] | None = None,
        deadline: float | None = None,
        cancelled: Callable[[], bool] | None = None,
        response_format: ResponseFormat | None = None,
        seed: int | None = None,
        shaping: dict[str, Any] | None = None,
    ) -> Completion:
        """Generate one reply, calling ``on_text`` with each new piece of text.

        ``deadline`` (monotonic seconds) ends the reply early with what exists so
        far; ``cancelled`` is polled between steps for the same purpose.
        ``response_format`` constrains the tokens to it; ``seed`` draws them from this
        request's own generator; ``shaping``: top-k, min-p, penalties (worker/constrained.py).
        """
        input_ids = prompt_token_ids(prompt)
        if images:
            raise EngineError(f"the model {self.name} cannot see images")
        limit = max_new_tokens or self.settings.max_new_tokens
        request_id = uuid.uuid4().hex
        # SchemaError: before anything else
        self.controls.register(request_id, response_format, seed, shaping)
        box: queue.Queue[Any] = queue.Queue()
        with self._lock:
            self._queues[request_id] = box
        detok = Detokenizer(self.tokenizer, set(self.stop_ids))
        start = time.monotonic()
        first = 0.0
        tokens: list[int] = []
        finish = "length"
        try:
            accepted = self.manager.add_request(
                input_ids,
                request_id=request_id,
                max_new_tokens=limit,
                streaming=True,
                eos_token_id=-1 if self.settings.ignore_eos else self.stop_ids,
                **sampling_for(self.settings, temperature, top_p),
            )
            if accepted is None:
                raise EngineError("the model is not accepting requests (shutting down)")
            while True:
                if deadline is not None and time.monotonic() > deadline:
                    finish = "timeout"
                    break
                if cancelled is not None and cancelled():
                    finish = "cancelled"
                    break
                if not self.manager.is_running():
                    raise EngineError("the generation loop stopped")
                try:
                    result = box.get(timeout=0.1)
                except queue.Empty:
                    continue
                if result.error:
                    raise EngineError(str(result.error)[:200])
                tokens = list(result.generated_tokens)
                if tokens and not first:
                    first = time.monotonic() - start
                delta = detok.update(tokens)
                if delta and on_text is not None:
                    on_text(delta)
                if result.is_finished():
                    stopped = bool(tokens) and tokens[-1] in self.stop_ids
                    stopped = stopped and not self.settings.ignore_eos
                    finish = "stop" if stopped or len(tokens) < limit else "length"
                    break
        finally:
            if finish in ("timeout", "cancelled"):
                self.manager.cancel_request(request_id)
            with self._lock:
                self._queues.pop(request_id, None)
            self.controls.forget(request_id)
        generated = tuple(tokens)
        if tokens and tokens[-1] in self.stop_ids and finish == "stop":
            tokens = tokens[:-1]
        completion_tokens = len(tokens)
        return Completion(
            token_ids=generated,
            text=detok.text,
            prompt_tokens=len(input_ids),
            completion_tokens=completion_tokens,
            finish_reason=finish,
            first_token_s=first,
            total_s=time.monotonic() - start,
        )

    def close(self) -> None:
        self._running = False
        try:
            self.manager.stop(block=True, timeout=10)
        except Exception:
            log.debug("engine stop failed", exc_info=True)
