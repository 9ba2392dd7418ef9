"""Prompt injections against psr's own self-check (tests/data/injections.jsonl; docs/reliability.md).

Each attack is user text that tries to choose the verdict. What must hold, whatever the model then does:
- in every verdict prompt, the attack appears only inside fences (exactly once when the model does not echo
  it), the prompt outside the fences is the template's own text, word for word, and the answer cue is the
  continuation outside every fence; the system message is the template's; the boundary is not in the attack;
- rendered as ChatML for the embedded model, the prompt's special tokens are exactly the template's own:
  `<|im_end|>` and friends written by the user are tokenized as plain text and decode back to it.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from app.backends.chatml import render_chatml
from app.backends.llama_model import ModelOptions
from app.settings import EmbeddedSettings
from refiners.backend import ChatMessage, GenerationRequest
from refiners.config import PsrConfig
from refiners.prompts import template
from refiners.review_talk import without_review_talk
from tests.conftest import EMBEDDED_MODEL
from tests.refiners.conftest import context_of, make_run, psr_for
from tests.support.scripted_backend import ScriptedBackend

INJECTIONS = [
    json.loads(line)
    for line in (Path(__file__).parents[1] / "data" / "injections.jsonl").read_text().splitlines()
    if line.strip()
]
IDS = [row["id"] for row in INJECTIONS]


def test_the_corpus_is_large_and_covers_the_techniques() -> None:
    assert len(INJECTIONS) >= 15
    assert len(set(IDS)) == len(IDS)
    texts = "\n".join(row["text"] for row in INJECTIONS)
    for needle in ("DATA-", ">>>", "<|im_end|>", "<|im_start|>", "Answer: No", "reviewer"):
        assert needle in texts


async def verdict_prompts(attack: str, *, echo: bool) -> list[GenerationRequest]:
    """psr over the scripted backend: 3 rounds of verdicts; with `echo`, the model's answer repeats the
    attack (a model that was talked into quoting it)."""
    backend = ScriptedBackend(answer_words=12, texts=[attack] if echo else [])
    run = make_run(
        backend,
        rounds=3,
        max_tokens=12,
        psr=PsrConfig(chunk_tokens=4, final_check=False),
        messages=(ChatMessage("user", attack),),
    )
    _ = [event async for event in psr_for(run).generate(run.messages, context_of(run))]
    assert backend.verdict_requests
    return backend.verdict_requests


def fences(text: str) -> tuple[str, list[str]]:
    """The boundary, and every fenced span's content, of a verdict prompt."""
    found = re.search(r"<<<(DATA-[0-9A-F]{16})\n", text)
    assert found is not None
    boundary = found.group(1)
    spans = re.findall(rf"<<<{boundary}\n(.*?)\n{boundary}>>>", text, re.DOTALL)
    return boundary, spans


def outside(text: str, boundary: str) -> str:
    """The prompt with every fenced span (markers included) replaced by `<FENCE>`."""
    return re.sub(rf"<<<{boundary}\n.*?\n{boundary}>>>", "<FENCE>", text, flags=re.DOTALL).replace(
        boundary, "<BOUNDARY>"
    )


def expected_outside() -> str:
    user = template("psr_verdict", "user")
    return (
        user.replace("$request_fenced", "<FENCE>")
        .replace("$answer_fenced", "<FENCE>")
        .replace("$boundary", "<BOUNDARY>")
    )


@pytest.mark.parametrize("row", INJECTIONS, ids=IDS)
@pytest.mark.parametrize("echo", [False, True], ids=["quiet", "echoed"])
async def test_the_fence_holds(row: dict[str, Any], echo: bool) -> None:
    attack = row["text"]
    for request in await verdict_prompts(attack, echo=echo):
        system, user = request.messages
        assert system == ChatMessage("system", template("psr_verdict", "system"))
        assert user.role == "user"
        # The answer cue is the continuation itself, after the whole prompt: outside every fence.
        assert request.prefix == template("psr_verdict", "cue")
        assert user.content.rstrip().endswith("Answer with one word, Yes or No.")
        boundary, spans = fences(user.content)
        assert boundary not in attack
        # The structure outside the fences is the template's, whatever the attack wrote.
        assert outside(user.content, boundary) == expected_outside()
        assert len(spans) == 2
        request_span, answer_span = spans
        if request_span != attack:
            # The round's second view: the same texts without the lines that talk to the review.
            assert request_span == without_review_talk(attack)
            assert without_review_talk(answer_span) == answer_span
            continue
        if echo:
            assert answer_span.startswith(attack)
        else:
            assert user.content.count(attack) == 1
            assert attack not in answer_span


# --- ChatML on the embedded backend ------------------------------------------------------------------------


def model_file() -> Path:
    return ModelOptions.from_settings(EmbeddedSettings(model=EMBEDDED_MODEL)).path


@pytest.fixture(scope="module")
def vocab() -> Iterator[Any]:
    from llama_cpp import Llama

    llm = Llama(model_path=str(model_file()), vocab_only=True, verbose=False)
    yield llm
    llm.close()


def tokenizer(llm: Any) -> Any:
    def tokenize(text: str, special: bool) -> list[int]:
        ids: list[int] = llm.tokenize(text.encode(), add_bos=False, special=special)
        return ids

    return tokenize


def special_ids(llm: Any, ids: list[int]) -> list[int]:
    """The ids among `ids` that are control (special) tokens in the model's vocabulary."""
    from llama_cpp import llama_cpp as lib

    return [token for token in ids if lib.llama_vocab_is_control(llm._model.vocab, token)]


def template_specials(llm: Any, messages: list[ChatMessage]) -> list[int]:
    """The special tokens of the same conversation with harmless text: the template's own."""
    benign = [ChatMessage(m.role, "x") for m in messages]
    return special_ids(llm, render_chatml(benign, tokenizer(llm)))


@pytest.mark.parametrize("row", INJECTIONS, ids=IDS)
def test_special_tokens_in_user_text_are_plain_text(vocab: Any, row: dict[str, Any]) -> None:
    attack = row["text"]
    tokenize = tokenizer(vocab)
    messages = [ChatMessage("user", attack)]
    ids = render_chatml(messages, tokenize)
    assert special_ids(vocab, ids) == template_specials(vocab, messages)
    im_start, im_end = tokenize("<|im_start|>", True), tokenize("<|im_end|>", True)
    assert len(im_start) == len(im_end) == 1
    assert special_ids(vocab, ids) == [*im_start, *im_end] * 2 + im_start
    # The user's turn decodes back to exactly what the user wrote.
    text_ids = tokenize(attack, False)
    assert vocab.detokenize(text_ids, special=True).decode() == attack
    assert not special_ids(vocab, text_ids)


@pytest.mark.parametrize("row", INJECTIONS, ids=IDS)
async def test_a_verdict_prompt_renders_with_only_the_template_special_tokens(
    vocab: Any, row: dict[str, Any]
) -> None:
    request = (await verdict_prompts(row["text"], echo=True))[-1]
    ids = render_chatml(request.messages, tokenizer(vocab), prefix=request.prefix)
    assert special_ids(vocab, ids) == template_specials(vocab, list(request.messages))
