"""Per-step token-mask cost of the grammar libraries, on the tokenizers corral serves.

For each library that imports (llguidance, xgrammar, outlines-core) and each tokenizer
(the embedded SmolLM2's 49,152 ids; Meta's Llama 3 128,256 ids when ``../shared`` has it),
every step of a request computes the allowed-token bitmask and then advances the grammar
by the token a model would have chosen (here: the tokens of a valid answer, so every
step is a real JSON-schema state). ``--batch 16`` runs 16 requests' steps one after the
other per decode step, as the worker does under continuous batching, and reports the
time per batched step. Also the per-request grammar compile time (paid once, when a
request joins). CPU only: the mask is computed on the host in every library.

    python bench/grammar_masks.py [--batch 1,16] [--libs llguidance,xgrammar,outlines]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "name": {"type": "string"},
        "age": {"type": "integer", "minimum": 0},
        "email": {"type": "string"},
        "tags": {"type": "array", "items": {"type": "string"}, "minItems": 1, "maxItems": 4},
        "address": {
            "type": "object",
            "properties": {"city": {"type": "string"}, "zip": {"type": "string"}},
            "required": ["city", "zip"],
        },
        "active": {"type": "boolean"},
        "role": {"enum": ["admin", "user", "guest"]},
    },
    "required": ["name", "age", "tags", "address", "active", "role"],
}
ANSWER = {
    "name": "Ada Lovelace",
    "age": 36,
    "email": "ada@example.org",
    "tags": ["math", "engines", "poetry"],
    "address": {"city": "London", "zip": "W1"},
    "active": True,
    "role": "admin",
}


def tokenizers() -> dict[str, Any]:
    from transformers import AutoTokenizer

    from shared.settings import load_settings
    from worker.model_source import materialize_embedded

    smol = AutoTokenizer.from_pretrained(materialize_embedded(load_settings().cache_dir))
    found = {"SmolLM2 (49,152)": smol}
    llama = ROOT.parent / "shared" / "refs" / "llama3" / "tokenizer.model"
    if llama.exists():
        from worker.llama3_tokenizer import from_tiktoken

        found["Llama 3 (128,256)"] = from_tiktoken(llama)
    return found


class Lib:
    """compile(schema) -> a fresh matcher; step(matchers, token_ids) fills masks, advances."""

    name = ""

    def __init__(self, tokenizer: Any) -> None:
        raise NotImplementedError

    def start(self, batch: int) -> list[Any]:
        raise NotImplementedError

    def step(self, matchers: list[Any], tokens: list[int]) -> None:
        raise NotImplementedError


class Llguidance(Lib):
    name = "llguidance"

    def __init__(self, tokenizer: Any) -> None:
        import llguidance
        import llguidance.hf
        import llguidance.torch

        self.ll = llguidance
        self.tok = llguidance.hf.from_tokenizer(tokenizer)
        self.grammar = llguidance.LLMatcher.grammar_from_json_schema(
            json.dumps(SCHEMA), defaults={"whitespace_flexible": False}
        )
        self.mask = llguidance.torch.allocate_token_bitmask(16, self.tok.vocab_size)

    def start(self, batch: int) -> list[Any]:
        return [self.ll.LLMatcher(self.tok, self.grammar) for _ in range(batch)]

    def step(self, matchers: list[Any], tokens: list[int]) -> None:
        for i, m in enumerate(matchers):
            self.ll.torch.fill_next_token_bitmask(m, self.mask, i)
            m.consume_token(tokens[i])


class LlguidancePar(Llguidance):
    """The batch's masks filled on llguidance's own thread pool (one call per step)."""

    name = "llguidance (par)"

    def step(self, matchers: list[Any], tokens: list[int]) -> None:
        pairs = [(m, i) for i, m in enumerate(matchers)]
        self.ll.torch.fill_next_token_bitmask_par(self.executor, pairs, self.mask[: len(pairs)])
        for i, m in enumerate(matchers):
            m.consume_token(tokens[i])

    def __init__(self, tokenizer: Any) -> None:
        super().__init__(tokenizer)
        self.executor = self.ll.LLExecutor()


class Xgrammar(Lib):
    name = "xgrammar"

    def __init__(self, tokenizer: Any) -> None:
        import xgrammar as xgr

        self.xgr = xgr
        info = xgr.TokenizerInfo.from_huggingface(tokenizer, vocab_size=len(tokenizer))
        self.compiler = xgr.GrammarCompiler(info, cache_enabled=False)
        self.mask = xgr.allocate_token_bitmask(16, info.vocab_size)

    def start(self, batch: int) -> list[Any]:
        compiled = self.compiler.compile_json_schema(json.dumps(SCHEMA), any_whitespace=False)
        return [self.xgr.GrammarMatcher(compiled) for _ in range(batch)]

    def step(self, matchers: list[Any], tokens: list[int]) -> None:
        for i, m in enumerate(matchers):
            m.fill_next_token_bitmask(self.mask, i)
            m.accept_token(tokens[i])


class Outlines(Lib):
    name = "outlines-core"

    def __init__(self, tokenizer: Any) -> None:
        from outlines_core import Vocabulary
        from transformers.convert_slow_tokenizer import bytes_to_unicode

        decode = {c: b for b, c in bytes_to_unicode().items()}
        special = set(tokenizer.all_special_ids)
        eos = tokenizer.eos_token_id
        ids: dict[bytes, list[int]] = {}
        for text, i in tokenizer.get_vocab().items():
            if i in special:
                continue
            raw = bytes(decode[c] for c in text) if all(c in decode for c in text) else None
            if raw is not None:
                ids.setdefault(raw, []).append(i)
        self.vocab = Vocabulary(eos, ids)
        self.size = len(tokenizer)

    def start(self, batch: int) -> list[Any]:
        from outlines_core import Guide, Index
        from outlines_core.json_schema import build_regex_from_schema

        index = Index(build_regex_from_schema(json.dumps(SCHEMA)), self.vocab)
        return [Guide(index) for _ in range(batch)]

    def step(self, matchers: list[Any], tokens: list[int]) -> None:
        import torch

        mask = torch.zeros((len(matchers), (self.size + 31) // 32), dtype=torch.int32)
        for i, g in enumerate(matchers):
            g.write_mask_into(mask[i].data_ptr(), mask[i].numel(), mask.element_size())
            g.advance(tokens[i])


LIBS: dict[str, type[Lib]] = {
    "llguidance": Llguidance,
    "llguidance-par": LlguidancePar,
    "xgrammar": Xgrammar,
    "outlines": Outlines,
}


def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    start = time.perf_counter()
    out = fn()
    return time.perf_counter() - start, out


def measure(lib: Lib, tokens: list[int], batch: int, repeat: int) -> dict[str, float]:
    compiles, steps = [], []
    for _ in range(repeat):
        compiles.append(timed(lambda: lib.start(1))[0])  # one new request, its own schema
        matchers = lib.start(batch)
        for t in tokens:
            spent, _ = timed(lambda t=t, m=matchers: lib.step(m, [t] * batch))
            steps.append(spent)
    return {
        "compile_ms": statistics.median(compiles) * 1e3,
        "step_ms_p50": statistics.median(steps) * 1e3,
        "step_ms_p95": sorted(steps)[int(len(steps) * 0.95)] * 1e3,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", default="1,16")
    parser.add_argument("--libs", default="llguidance,llguidance-par,xgrammar,outlines")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    batches = [int(b) for b in args.batch.split(",")]
    print("| tokenizer | library | compile ms/request | batch | mask+advance ms/step p50 | p95 |")
    print("|---|---|---|---|---|---|")
    for tok_name, tokenizer in tokenizers().items():
        answer = json.dumps(ANSWER, separators=(",", ":"))
        tokens = tokenizer.encode(answer, add_special_tokens=False)
        for name in args.libs.split(","):
            try:
                lib = LIBS[name](tokenizer)
            except ImportError as exc:
                print(f"| {tok_name} | {name} | not installed ({exc}) | | | |")
                continue
            for batch in batches:
                r = measure(lib, tokens, batch, args.repeat)
                print(
                    f"| {tok_name} | {lib.name} | {r['compile_ms']:.2f} | {batch} "
                    f"| {r['step_ms_p50']:.3f} | {r['step_ms_p95']:.3f} |",
                    flush=True,
                )


if __name__ == "__main__":
    main()
