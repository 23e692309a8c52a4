"""Answering with a vision model (Llama 3.2 Vision, ``mllama``): images in the prompt.

Mllama reads images through cross-attention, which transformers' continuous
batching does not carry, so these turns run through ``model.generate`` one at
a time (text-only turns too: the same weights serve both). The prompt ids are
built by :func:`worker.prompt.build_prompt` like every other prompt — user
text can still never become control tokens — and the image side comes from
the model's own processor: the pixels from its image processor, the
cross-attention mask from the positions of the image tokens in those ids,
exactly as ``MllamaProcessor.__call__`` computes them.
"""

from __future__ import annotations

import io
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

from shared.contract import Message, ResponseFormat
from shared.settings import Settings

from .engine import Completion, Detokenizer, EngineError, sampling_for
from .engines import prompt_token_ids
from .model_source import Loaded
from .prompt import build_prompt, stop_token_ids

# A decoded image this large (~8k x 5k) is a decompression bomb or a mistake, not a photo.
MAX_PIXELS = 40_000_000


class ImageError(ValueError):
    """An attached image cannot be shown to the model; the message says why."""


def open_image(data: bytes, name: str = "the image") -> Any:
    """Decode one image to RGB (the first frame of an animation), refusing bombs."""
    from PIL import Image, UnidentifiedImageError

    try:
        image = Image.open(io.BytesIO(data))
        if image.width * image.height > MAX_PIXELS:
            raise ImageError(f"{name} is too large ({image.width}x{image.height} pixels)")
        image.load()
        return image.convert("RGB")
    except (UnidentifiedImageError, OSError, Image.DecompressionBombError, ValueError) as exc:
        if isinstance(exc, ImageError):
            raise
        raise ImageError(f"I could not read {name} as an image") from None


class _Collector:
    """A ``generate`` streamer: the new token ids, as they come (the prompt comes first)."""

    def __init__(self, on_tokens: Callable[[list[int]], None]) -> None:
        self.on_tokens = on_tokens
        self.tokens: list[int] = []
        self.prompt_seen = False

    def put(self, value: Any) -> None:
        if not self.prompt_seen:
            self.prompt_seen = True
            return
        self.tokens += [int(t) for t in value.reshape(-1).tolist()]
        self.on_tokens(self.tokens)

    def end(self) -> None:
        pass


class VisionEngine:
    """The :class:`~worker.engines.Engine` that runs a Llama 3.2 Vision model in this process."""

    vision = True
    # One model.generate per turn: no grammar masks, per-request seeds or shaping here.
    structured_outputs = False
    per_request_shaping = False

    def __init__(self, loaded: Loaded, settings: Settings) -> None:
        self.model = loaded.model
        self.processor = loaded.processor
        self.tokenizer = loaded.tokenizer
        self.name = loaded.name
        self.device = loaded.device
        self.quantization = loaded.quantization
        self.settings = settings
        self.max_images = settings.vision_max_images
        self.image_token_id = self.processor.image_token_id
        self.stop_ids = stop_token_ids(
            self.tokenizer, getattr(self.model, "generation_config", None)
        )
        self._lock = threading.Lock()  # one generate at a time on these weights
        pad = self.tokenizer.pad_token_id  # id 0 is a real pad id, not "none"
        self._pad_id = pad if pad is not None else self.stop_ids[0]
        # Pixels go in the vision tower's dtype (it stays unquantized under nf4).
        self._pixel_dtype = next(
            p.dtype for p in self.model.model.vision_model.parameters() if p.is_floating_point()
        )

    def inputs(self, input_ids: Sequence[int], images: Sequence[bytes]) -> dict[str, Any]:
        """The model's keyword inputs for one prompt and its images (in prompt order)."""
        import torch
        from transformers.models.mllama.processing_mllama import (
            convert_sparse_cross_attention_mask_to_dense,
            get_cross_attention_token_mask,
        )

        ids = list(input_ids)
        found = ids.count(self.image_token_id)
        if found != len(images):
            raise EngineError(f"the prompt has {found} image tokens for {len(images)} images")
        batch: dict[str, Any] = {
            "input_ids": torch.tensor([ids]),
            "attention_mask": torch.ones(1, len(ids), dtype=torch.long),
        }
        if images:
            decoded = [open_image(data, f"image {i + 1}") for i, data in enumerate(images)]
            pixels = dict(self.processor.image_processor(images=[decoded], return_tensors="pt"))
            num_tiles = pixels.pop("num_tiles")
            mask = convert_sparse_cross_attention_mask_to_dense(
                [get_cross_attention_token_mask(ids, self.image_token_id)],
                num_tiles=num_tiles,
                max_num_tiles=self.processor.image_processor.max_image_tiles,
                length=len(ids),
            )
            batch["cross_attention_mask"] = torch.tensor(mask)
            batch["pixel_values"] = pixels.pop("pixel_values").to(self._pixel_dtype)
            batch.update(pixels)  # aspect_ratio_ids, aspect_ratio_mask
        return {key: value.to(self.model.device) for key, value in batch.items()}

    def count_tokens(self, messages: Sequence[Message]) -> int:
        return len(build_prompt(self.tokenizer, messages, images=True).input_ids)

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
        import torch
        from transformers import StoppingCriteria, StoppingCriteriaList

        if response_format is not None or seed is not None or shaping:
            raise EngineError(
                f"the model {self.name} cannot take a response format, a seed, top_k, min_p "
                "or penalties"
            )
        input_ids = prompt_token_ids(prompt)
        limit = max_new_tokens or self.settings.max_new_tokens
        batch = self.inputs(input_ids, images)
        detok = Detokenizer(self.tokenizer, set(self.stop_ids))
        ended: list[str] = []

        class _Stop(StoppingCriteria):
            def __call__(self, *_: Any, **__: Any) -> Any:
                if deadline is not None and time.monotonic() > deadline:
                    ended.append("timeout")
                elif cancelled is not None and cancelled():
                    ended.append("cancelled")
                return torch.tensor([bool(ended)])

        start = time.monotonic()
        first: list[float] = []

        def on_tokens(tokens: list[int]) -> None:
            if not first:
                first.append(time.monotonic() - start)
            delta = detok.update(tokens)
            if delta and on_text is not None:
                on_text(delta)

        collector = _Collector(on_tokens)
        with self._lock:
            if deadline is not None and time.monotonic() > deadline:
                ended.append("timeout")  # waited out its time behind another turn
            else:
                self.model.generate(
                    **batch,
                    do_sample=True,
                    **sampling_for(self.settings, temperature, top_p),
                    max_new_tokens=limit,
                    eos_token_id=self.stop_ids,
                    pad_token_id=self._pad_id,
                    streamer=collector,
                    stopping_criteria=StoppingCriteriaList([_Stop()]),
                )
        tokens = collector.tokens
        stopped = bool(tokens) and tokens[-1] in self.stop_ids
        finish = ended[0] if ended else "length" if len(tokens) >= limit and not stopped else "stop"
        produced = len(tokens) - (1 if stopped else 0)
        return Completion(
            text=detok.text,
            prompt_tokens=len(input_ids),
            completion_tokens=produced,
            finish_reason=finish,
            first_token_s=first[0] if first else 0.0,
            total_s=time.monotonic() - start,
            token_ids=tuple(tokens),
        )

    def close(self) -> None:
        pass
