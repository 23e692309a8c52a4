"""The GPU benchmark: Llama-3-8B-shaped model with random weights, nf4 and bf16.

    python bench/gpu.py [--tokens 128] [--concurrency 1,8,32,64] [--quant nf4,bf16]

Needs a CUDA GPU (exits with a message otherwise; ``--tiny`` runs a tiny
config on whatever device exists, to check the script itself). Random
weights need no download or licence: speed does not depend on their values.
For each quantization it reports, measured in one run:

* single-stream decode tok/s through corral's Engine, and through the
  reference approach (``model.generate``, one request at a time, as the
  transformers pipeline does); the reference serves N concurrent requests one
  after another, so its aggregate tok/s is its single-stream rate at every N;
* aggregate tok/s with 1/8/32/64 concurrent requests through the Engine;
* peak GPU memory;
* the single-stream decode rate as a fraction of the memory-bandwidth limit
  (each decode step reads every weight once: limit = bandwidth / weight bytes),
  with the bandwidth measured on this GPU by a device-to-device copy.

Prompts are 128 random token ids; every request generates exactly ``--tokens``.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from common import machine, print_table

from shared.settings import Settings
from worker.engine import TransformersEngine
from worker.model_source import Loaded, quantization_config

PROMPT_TOKENS = 128
LLAMA3_8B = dict(
    vocab_size=128256,
    hidden_size=4096,
    intermediate_size=14336,
    num_hidden_layers=32,
    num_attention_heads=32,
    num_key_value_heads=8,
    max_position_embeddings=8192,
    rope_theta=500000.0,
    rms_norm_eps=1e-5,
    bos_token_id=128000,
    eos_token_id=128009,
)
TINY = dict(LLAMA3_8B, hidden_size=256, intermediate_size=512, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2)  # fmt: skip


class IdTokenizer:
    """No Llama 3 tokenizer is needed to time decoding: ids print as themselves."""

    eos_token_id = LLAMA3_8B["eos_token_id"]
    pad_token_id = None

    def decode(self, ids: list[int], skip_special_tokens: bool = False) -> str:
        return "".join(f"<{i}>" for i in ids)

    def get_vocab(self) -> dict[str, int]:
        return {"<|eot_id|>": 128009, "<|end_of_text|>": 128001}


def build_model(config_kw: dict[str, Any], quant: str, device: str, workdir: Path) -> Any:
    import torch
    from transformers import AutoModelForCausalLM, LlamaConfig

    config = LlamaConfig(**config_kw)
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    path = workdir / "random-llama"
    if not (path / "config.json").exists():
        torch.manual_seed(0)
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
        model.save_pretrained(path)  # nf4 quantizes on load, so go through a checkpoint
        del model
    model = AutoModelForCausalLM.from_pretrained(
        path,
        dtype=dtype,
        quantization_config=quantization_config(quant),
        device_map=device,
    )
    return model.eval()


def copy_bandwidth(device: str) -> float:
    """Achievable memory bandwidth, bytes/s: a 2 GiB copy reads and writes every byte."""
    import torch

    if device != "cuda":
        return float("nan")
    src = torch.empty(2**30, dtype=torch.uint8, device=device)
    dst = torch.empty_like(src)
    dst.copy_(src)
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(10):
        dst.copy_(src)
    torch.cuda.synchronize()
    return 2 * src.numel() * 10 / (time.perf_counter() - start)


def prompts(n: int, vocab: int) -> list[list[int]]:
    import random

    rng = random.Random(n)
    return [[rng.randrange(1000, vocab - 1000) for _ in range(PROMPT_TOKENS)] for _ in range(n)]


def concurrent(engine: TransformersEngine, n: int, tokens: int, vocab: int) -> float:
    done: list[int] = []

    def one(ids: list[int]) -> None:
        done.append(engine.generate(ids, max_new_tokens=tokens).completion_tokens)

    threads = [threading.Thread(target=one, args=(p,)) for p in prompts(n, vocab)]
    start = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return sum(done) / (time.perf_counter() - start)


def reference_decode(model: Any, tokens: int, vocab: int, device: str) -> float:
    """model.generate, one request: decode tok/s after the first token."""
    import torch

    ids = torch.tensor(prompts(1, vocab), device=device)
    kw = dict(do_sample=False, pad_token_id=0, eos_token_id=None)
    model.generate(ids, max_new_tokens=2, min_new_tokens=2, **kw)
    start = time.perf_counter()
    model.generate(ids, max_new_tokens=1, min_new_tokens=1, **kw)
    first = time.perf_counter() - start
    start = time.perf_counter()
    model.generate(ids, max_new_tokens=tokens, min_new_tokens=tokens, **kw)
    return (tokens - 1) / (time.perf_counter() - start - first)


def run(quant: str, args: argparse.Namespace, device: str, workdir: Path) -> dict[str, Any]:
    import torch

    config_kw = TINY if args.tiny else LLAMA3_8B
    vocab = config_kw["vocab_size"]
    if device == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    model = build_model(config_kw, "none" if quant == "bf16" else quant, device, workdir)
    weight_bytes = model.get_memory_footprint()
    reference = reference_decode(model, args.tokens, vocab, device)
    settings = Settings(
        max_new_tokens=args.tokens,
        ignore_eos=True,
        kv_cache_tokens=args.kv_cache_tokens or (16384 if device == "cpu" else 0),
    )
    engine = TransformersEngine(
        Loaded(model, IdTokenizer(), "llama3-8b-random", device, quant), settings
    )
    try:
        engine.generate(prompts(1, vocab)[0], max_new_tokens=4)  # warm-up
        single = engine.generate(prompts(1, vocab)[0], max_new_tokens=args.tokens)
        decode = (single.completion_tokens - 1) / max(single.total_s - single.first_token_s, 1e-9)
        aggregate = {n: concurrent(engine, n, args.tokens, vocab) for n in args.concurrency}
    finally:
        engine.close()
    peak = torch.cuda.max_memory_allocated() / 2**30 if device == "cuda" else float("nan")
    del engine, model
    return {
        "quant": quant,
        "weights_gib": weight_bytes / 2**30,
        "reference": reference,
        "decode": decode,
        "first_token_s": single.first_token_s,
        "aggregate": aggregate,
        "peak_gib": peak,
        "limit": args.bandwidth / weight_bytes,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=128, help="new tokens per request")
    parser.add_argument("--concurrency", default="1,8,32,64")
    parser.add_argument("--quant", default="nf4,bf16")
    parser.add_argument("--kv-cache-tokens", type=int, default=0)
    parser.add_argument("--tiny", action="store_true", help="a tiny config on any device")
    args = parser.parse_args()
    args.concurrency = [int(n) for n in args.concurrency.split(",")]

    import torch

    device = "cuda" if torch.cuda.is_available() else "cpu"
    if device != "cuda" and not args.tiny:
        print(
            "bench/gpu.py needs a CUDA GPU and torch sees none (torch "
            f"{torch.__version__}); nothing measured. `--tiny` checks the script on CPU.",
            file=sys.stderr,
        )
        return 2
    quants = args.quant.split(",")
    if device != "cuda":
        quants = ["bf16"]  # bitsandbytes nf4 needs CUDA; "bf16" runs as float32 on CPU
    gpu = torch.cuda.get_device_name() if device == "cuda" else machine()
    args.bandwidth = copy_bandwidth(device)
    print(
        f"device: {gpu}; {'tiny config' if args.tiny else 'Llama-3-8B config'}, random "
        f"weights; {PROMPT_TOKENS}-token prompts, {args.tokens} new tokens; "
        f"copy bandwidth {args.bandwidth / 1e9:.0f} GB/s",
        flush=True,
    )
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for quant in quants:
            results.append(run(quant, args, device, Path(tmp)))
            print(f"{quant} done", flush=True)

    print()
    print_table(
        ["quant", "weights GiB", "peak GiB", "TTFT s", "reference tok/s", "corral 1-stream tok/s",
         "fraction of bandwidth limit"],
        [[r["quant"], f"{r['weights_gib']:.1f}", f"{r['peak_gib']:.1f}",
          f"{r['first_token_s']:.3f}", f"{r['reference']:.1f}", f"{r['decode']:.1f}",
          f"{r['decode'] / r['limit']:.0%} (limit {r['limit']:.0f} tok/s)"] for r in results],
    )  # fmt: skip
    print()
    print_table(
        ["quant", *[f"N={n} tok/s" for n in args.concurrency], *[f"N={n} / reference" for n in
         args.concurrency]],
        [[r["quant"], *[f"{r['aggregate'][n]:.0f}" for n in args.concurrency],
          *[f"{r['aggregate'][n] / r['reference']:.1f}x" for n in args.concurrency]]
         for r in results],
    )  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
