"""A Llama 3 tokenizer from Meta's original ``tokenizer.model`` (tiktoken ranks).

Meta's downloads ship ``original/tokenizer.model`` rather than a
``tokenizer.json``; this builds the equivalent fast tokenizer, with the 256
special tokens at the ids Meta's ``Tokenizer`` assigns and Meta's published
Llama 3 Instruct chat template, so ``corral render`` can show exactly what a
Llama 3 model would be fed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

# Meta's pre-tokenization pattern (llama3/tokenizer.py).
PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}|"
    r" ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
NUM_SPECIAL = 256
NAMED_SPECIAL = [
    "<|begin_of_text|>",
    "<|end_of_text|>",
    "<|reserved_special_token_0|>",
    "<|reserved_special_token_1|>",
    "<|finetune_right_pad_id|>",
    "<|reserved_special_token_2|>",
    "<|start_header_id|>",
    "<|end_header_id|>",
    "<|eom_id|>",
    "<|eot_id|>",
    "<|python_tag|>",
]

# The chat template published with Meta-Llama-3-8B-Instruct.
LLAMA3_CHAT_TEMPLATE = (
    "{% set loop_messages = messages %}{% for message in loop_messages %}"
    "{% set content = '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'"
    "+ message['content'] | trim + '<|eot_id|>' %}"
    "{% if loop.index0 == 0 %}{% set content = bos_token + content %}{% endif %}"
    "{{ content }}{% endfor %}"
    "{% if add_generation_prompt %}"
    "{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}"
)


def special_tokens() -> list[str]:
    reserved = [
        f"<|reserved_special_token_{3 + i}|>" for i in range(NUM_SPECIAL - len(NAMED_SPECIAL))
    ]
    return NAMED_SPECIAL + reserved


def from_tiktoken(path: Path) -> Any:
    from transformers import PreTrainedTokenizerFast
    from transformers.convert_slow_tokenizer import TikTokenConverter

    specials = special_tokens()
    backend = TikTokenConverter(
        vocab_file=str(path), pattern=PATTERN, extra_special_tokens=specials
    ).converted()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token="<|begin_of_text|>",
        eos_token="<|eot_id|>",
        pad_token="<|finetune_right_pad_id|>",
    )
    tokenizer.chat_template = LLAMA3_CHAT_TEMPLATE
    return tokenizer
