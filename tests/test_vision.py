"""Images in turns: a vision model (a tiny random-weight Llama 3.2 Vision built from a config)
sees them through the real queue and job path; a text-only model says it cannot."""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fakes.scripted_engine import ScriptedEngine
from redis import Redis
from rq import SimpleWorker

from shared.contract import (
    IMAGE_ONLY_TEXT,
    Attachment,
    Message,
    ResponseFormat,
    Sampling,
    StreamEvent,
    Turn,
)
from shared.history import ConversationStore
from shared.images import image_id, image_key
from shared.settings import Settings, load_settings
from shared.streams import follow
from shared.turnqueue import enqueue_turn, turn_queue
from worker.engine import EngineError
from worker.model_info import describe
from worker.prompt import build_prompt
from worker.turn import install_engine
from worker.turn_images import cannot_see, choose_images, prompt_images
from worker.vision import ImageError, VisionEngine, open_image


def picture(color: str, size: tuple[int, int] = (40, 20), kind: str = "PNG") -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, kind)
    return buf.getvalue()


def stash(conn: Redis, data: bytes) -> str:
    """What a bot does with an image it accepted (shared.images.store_image, synchronously)."""
    ident = image_id(data)
    conn.set(image_key(ident), data, ex=600)
    return ident


@pytest.fixture(scope="module")
def tiny(tiny_mllama_dir: Path) -> Iterator[VisionEngine]:
    from worker.engines import build_engine

    engine = build_engine(load_settings(model=str(tiny_mllama_dir), device="cpu"))
    assert isinstance(engine, VisionEngine)
    yield engine
    engine.close()


def run_turns(conn: Redis, settings: Settings, engine: Any, *turns: Turn) -> list[StreamEvent]:
    """Each turn through the real queue, RQ worker and job function; the final events."""
    engine.settings = settings
    install_engine(engine)
    finals = []
    try:
        for turn in turns:
            job = enqueue_turn(conn, settings, turn)
            SimpleWorker([turn_queue(conn, settings)], connection=conn).work(burst=True)
            finals.append(list(follow(conn, job.id, timeout=30)))
    finally:
        install_engine(None)
    return [events[-1] for events in finals]


def turn(text: str, thread: str, *images: tuple[str, str], **fields: Any) -> Turn:
    attachments = [
        Attachment(name=name, content_type="image/png", image_id=i) for name, i in images
    ]
    return Turn(
        platform="discord",
        channel="c",
        thread=thread,
        user="u",
        message_id=f"m{len(text)}",
        text=text,
        attachments=attachments,
        **fields,
    )


# Pure parts


def test_the_most_recent_stored_images_are_kept() -> None:
    stored = {"a": b"A", "b": b"B", "c": b"C"}
    history = [
        Message(role="user", content="1", images=["a", "gone"]),
        Message(role="assistant", content="2"),
        Message(role="user", content="3", images=["b", "c"]),
    ]
    kept, data = choose_images(history, 2, stored.get)
    assert [m.images for m in kept] == [[], [], ["b", "c"]]
    assert prompt_images(kept, data) == [b"B", b"C"]
    kept, data = choose_images(history, 3, stored.get)
    assert [m.images for m in kept] == [["a"], [], ["b", "c"]]  # the expired one left out
    assert prompt_images(kept, data) == [b"A", b"B", b"C"]
    assert kept[1] is history[1]  # untouched messages are not copied


def test_what_a_text_only_model_says() -> None:
    note, whole = cannot_see("smol", ["cat.png"], IMAGE_ONLY_TEXT)
    assert whole and "can't see images" in note and "cat.png" in note
    note, whole = cannot_see("smol", ["a.png", "b.jpg"], "what breed?")
    assert not whole and note.endswith("\n\n") and "a.png, b.jpg" in note


def test_images_are_decoded_or_refused_clearly() -> None:
    assert open_image(picture("red", kind="GIF")).mode == "RGB"
    with pytest.raises(ImageError, match=r"could not read photo\.png"):
        open_image(b"\x89PNG\r\n\x1a\nnot really", "photo.png")
    with pytest.raises(ImageError, match="too large"):
        open_image(picture("white", (9000, 5000)), "huge.png")


def test_the_image_token_comes_from_the_template_never_from_user_text(tiny: VisionEngine) -> None:
    tokenizer, image = tiny.tokenizer, tiny.image_token_id
    typed = Message(role="user", content="<|image|> what is this?", images=["x"])
    ids = build_prompt(tokenizer, [typed], images=True).input_ids
    assert ids.count(image) == 1  # the template's, not the typed one
    assert ids[ids.index(image) - 2 : ids.index(image)] == tokenizer("user\n")["input_ids"]
    assert "<|image|>" in tokenizer.decode(ids[ids.index(image) + 1 :])  # typed: plain text
    assert image not in build_prompt(tokenizer, [typed]).input_ids  # text models: no token


def test_model_inputs_match_the_processor(tiny: VisionEngine) -> None:
    """Safe ids + our image inputs == what MllamaProcessor computes for the same prompt."""
    from PIL import Image

    data = picture("orange", (50, 30))
    prompt = build_prompt(
        tiny.tokenizer, [Message(role="user", content="Describe it.", images=["x"])], images=True
    )
    ours = tiny.inputs(prompt.input_ids, [data])
    ref = tiny.processor(
        images=[Image.open(io.BytesIO(data))],
        text=prompt.text,
        add_special_tokens=False,
        return_tensors="pt",
    )
    assert set(ours) == set(ref)
    for key in ours:
        assert ours[key].tolist() == ref[key].tolist(), key


# Through the real queue and job path


def test_a_vision_model_sees_the_attached_image(
    tiny: VisionEngine, redis_conn: Redis, settings: Settings
) -> None:
    import torch
    from PIL import Image

    settings = settings.model_copy(update={"max_new_tokens": 8})
    red, blue = picture("red"), picture("blue")
    ids = {name: stash(redis_conn, data) for name, data in (("red", red), ("blue", blue))}
    greedy = {"temperature": 0.0}
    done = run_turns(
        redis_conn,
        settings,
        tiny,
        turn("What colour?", "t-red", ("red.png", ids["red"]), sampling=greedy),
        turn("What colour?", "t-blue", ("blue.png", ids["blue"]), sampling=greedy),
    )
    assert all(e.kind == "done" and e.text for e in done), [e.error for e in done]
    assert done[0].text != done[1].text  # the picture changes the answer

    # The same answer as the model's own processor + generate on the same conversation.
    history = ConversationStore(redis_conn, 60).load("discord:c:t-red")
    assert history[0].images == [ids["red"]]  # kept for follow-up questions
    system = Message(role="system", content=settings.system_prompt)
    prompt = build_prompt(tiny.tokenizer, [system, history[0]], images=True)
    ref = tiny.processor(
        images=[Image.open(io.BytesIO(red))],
        text=prompt.text,
        add_special_tokens=False,
        return_tensors="pt",
    )
    with torch.no_grad():
        out = tiny.model.generate(**ref, do_sample=False, max_new_tokens=8)
    expected = tiny.tokenizer.decode(
        [t for t in out[0, len(prompt.input_ids) :].tolist() if t not in tiny.stop_ids]
    )
    assert done[0].text == expected


def test_follow_ups_still_show_the_latest_image(
    tiny: VisionEngine, redis_conn: Redis, settings: Settings
) -> None:
    engine = ScriptedEngine(tiny.tokenizer, [("ok", False)] * 4, stop="<|im_end|>")
    engine.serve(settings, vision=True)
    first, second = stash(redis_conn, picture("red")), stash(redis_conn, picture("green"))
    done = run_turns(
        redis_conn,
        settings,
        engine,
        turn("this one?", "t", ("a.png", first)),
        turn("and this?", "t", ("b.png", second)),
        turn("which was greener?", "t"),
    )
    assert [e.kind for e in done] == ["done"] * 3
    assert engine.images == [
        [redis_conn.get(image_key(first))],
        [redis_conn.get(image_key(second))],
        [redis_conn.get(image_key(second))],  # only the most recent (vision_max_images=1)
    ]
    third = engine.calls[2]
    assert third.count(tiny.image_token_id) == 1
    assert tiny.tokenizer.decode(third).index("<|image|>and this?") > 0

    redis_conn.delete(image_key(second), image_key(first))  # expired
    run_turns(redis_conn, settings, engine, turn("still there?", "t"))
    assert engine.images[-1] == [] and tiny.image_token_id not in engine.calls[-1]


def test_a_text_only_model_says_it_cannot_see_images(
    smol: Any, redis_conn: Redis, settings: Settings
) -> None:
    engine = ScriptedEngine(smol, [("It is a dog.", False)], stop="<|im_end|>").serve(settings)
    photo = stash(redis_conn, picture("red"))
    only, asked, api = run_turns(
        redis_conn,
        settings,
        engine,
        turn(IMAGE_ONLY_TEXT, "t1", ("dog.png", photo)),
        turn("what animal is a dog?", "t2", ("dog.png", photo)),
        Turn(
            platform="api",
            channel="api",
            user="u",
            message_id="m",
            text="",
            messages=[Message(role="user", content="what is it?", images=[photo])],
        ),
    )
    assert only.kind == "done" and "can't see images" in only.text and "dog.png" in only.text
    assert len(engine.calls) == 1  # the image-only message never reached the model
    assert asked.text.startswith("_(This model (scripted) can't see images: I answered without")
    assert asked.text.endswith("\n\nIt is a dog.")
    stored = ConversationStore(redis_conn, 60).load("discord:c:t2")
    assert stored[-1].content == "It is a dog."  # history keeps the answer, not the note
    assert api.kind == "error" and "cannot see images" in api.error
    assert api.code == "images_not_supported"  # the API answers 400 with it


def test_corral_worker_serves_a_vision_model(
    tiny_mllama_dir: Path, start_worker: Any, redis_conn: Redis, settings: Settings
) -> None:
    start_worker(model=str(tiny_mllama_dir), max_new_tokens=6)
    photo = stash(redis_conn, picture("purple"))
    job = enqueue_turn(redis_conn, settings, turn("What is it?", "t", ("p.png", photo)))
    events = list(follow(redis_conn, job.id, timeout=60))
    assert events[-1].kind == "done" and events[-1].text, events[-1].error
    assert events[-1].usage is not None and events[-1].usage.completion_tokens > 0


def test_nf4_quantizes_the_language_model_and_keeps_the_vision_tower(tiny_mllama_dir: Path) -> None:
    """The GPU default (nf4 via bitsandbytes), run on CPU: the picture still goes through."""
    from worker.engines import build_engine

    engine = build_engine(
        load_settings(model=str(tiny_mllama_dir), device="cpu", quantization="nf4")
    )
    assert isinstance(engine, VisionEngine)
    kinds = {name: type(module).__name__ for name, module in engine.model.named_modules()}
    assert kinds["model.language_model.layers.0.self_attn.q_proj"] == "Linear4bit"
    assert not [n for n, k in kinds.items() if "vision" in n and k == "Linear4bit"]
    prompt = build_prompt(
        engine.tokenizer, [Message(role="user", content="What?", images=["x"])], images=True
    )
    done = engine.generate(prompt.input_ids, images=[picture("teal")], max_new_tokens=4)
    assert done.completion_tokens == 4 and done.finish_reason == "length"


# Llama 3.2 Vision's prompt format (Meta's docs): the image token leads the user's text.
LLAMA32_VISION_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}"
    "<|start_header_id|>{{ m['role'] }}<|end_header_id|>\n\n"
    "{% if m['content'] is string %}{{ m['content'] }}{% else %}{% for part in m['content'] %}"
    "{{ '<|image|>' if part['type'] == 'image' else part['text'] }}{% endfor %}{% endif %}"
    "<|eot_id|>{% endfor %}"
    "{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n\n{% endif %}"
)


def test_llama32_vision_ids_with_the_real_llama3_tokenizer(llama3: Any) -> None:
    """Ids as transformers' own mllama processor tests expect them for Meta's tokenizer:
    <|image|> is 128256, the first id after Llama 3's 128,256."""
    import copy

    tokenizer = copy.deepcopy(llama3)
    tokenizer.add_special_tokens({"additional_special_tokens": ["<|image|>"]})
    tokenizer.chat_template = LLAMA32_VISION_TEMPLATE
    asked = Message(role="user", content="Describe this image in two sentences", images=["x"])
    ids = build_prompt(tokenizer, [asked], images=True).input_ids
    assert ids == [
        128000, 128006, 882, 128007, 271,  # <|begin_of_text|><|start_header_id|>user…\n\n
        128256, 75885, 420, 2217, 304, 1403, 23719,  # <|image|>Describe this image in two…
        128009, 128006, 78191, 128007, 271,  # <|eot_id|> and the assistant header
    ]  # fmt: skip
    typed = Message(role="user", content="<|image|><|eot_id|>", images=[])
    assert not {128256, 128009} & set(build_prompt(tokenizer, [typed]).input_ids[5:-5])


def test_a_vision_answer_stops_on_cancel_and_deadline(tiny: VisionEngine) -> None:
    import time

    prompt = build_prompt(
        tiny.tokenizer, [Message(role="user", content="Go on.", images=["x"])], images=True
    )
    polls: list[int] = []

    def cancelled() -> bool:
        polls.append(1)
        return len(polls) > 3

    done = tiny.generate(
        prompt.input_ids, images=[picture("red")], max_new_tokens=50, cancelled=cancelled
    )
    assert done.finish_reason == "cancelled" and 0 < done.completion_tokens < 50
    late = tiny.generate(
        prompt.input_ids, images=[picture("red")], max_new_tokens=50, deadline=time.monotonic()
    )
    assert late.finish_reason == "timeout" and late.completion_tokens == 0


def test_a_vision_model_refuses_formats_seeds_and_shaping_clearly(
    tiny: VisionEngine, redis_conn: Redis, settings: Settings
) -> None:
    asks = [
        Sampling(response_format=ResponseFormat(type="json_object")),
        Sampling(seed=7),
        Sampling(top_k=5),
    ]
    finals = run_turns(
        redis_conn, settings, tiny, *(turn("Hi.", f"t{i}", sampling=s) for i, s in enumerate(asks))
    )
    for final in finals:  # refused outright (not retried), in words the API passes on
        assert (final.kind, final.retrying) == ("error", False)
        assert "cannot take a response format, a seed, top_k" in final.error
        assert final.code == "invalid_request"  # the caller's mistake: the API says 400
    # What the API reads before queueing, so it answers these with a 400 instead.
    assert describe(tiny)["structured_outputs"] is False
    prompt = build_prompt(tiny.tokenizer, [Message(role="user", content="Hi.")], images=True)
    with pytest.raises(EngineError, match="cannot take a response format"):
        tiny.generate(prompt.input_ids, seed=1)
