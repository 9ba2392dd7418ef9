"""The memory of written token ids (app/backends/continuation.py), without a model."""

from __future__ import annotations

from app.backends.continuation import ContinuationMemory, conversation_key


def characters(text: str) -> list[int]:
    """A stand-in tokeniser: one id per character, offset so that ids and code points differ."""
    return [1000 + ord(c) for c in text]


A = conversation_key([1, 2, 3])
B = conversation_key([1, 2, 4])


def test_a_prefix_that_is_a_written_text_gets_the_written_ids() -> None:
    memory = ContinuationMemory()
    memory.remember(A, "Hello wor", [7, 8])
    assert memory.ids_for(A, "Hello wor", characters) == [7, 8]


def test_the_rest_after_the_longest_written_text_is_tokenised() -> None:
    memory = ContinuationMemory()
    memory.remember(A, "Hello", [7])
    memory.remember(A, "Hello wor", [7, 8])
    assert memory.ids_for(A, "Hello world", characters) == [7, 8, *characters("ld")]


def test_another_conversation_or_an_unknown_prefix_is_tokenised_whole() -> None:
    memory = ContinuationMemory()
    memory.remember(A, "Hello", [7])
    assert memory.ids_for(B, "Hello", characters) == characters("Hello")
    assert memory.ids_for(A, "Help", characters) == characters("Help")
    assert memory.ids_for(A, "", characters) == []


def test_the_least_recently_used_text_is_forgotten_first() -> None:
    memory = ContinuationMemory(capacity=2)
    memory.remember(A, "one", [1])
    memory.remember(A, "two", [2])
    assert memory.ids_for(A, "one", characters) == [1]  # "one" is now the most recently used
    memory.remember(A, "three", [3])
    assert len(memory) == 2
    assert memory.ids_for(A, "two", characters) == characters("two")
    assert memory.ids_for(A, "one", characters) == [1]
