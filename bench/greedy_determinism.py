"""Whether a greedy answer of the embedded backend depends on what its contexts computed before.

For each prompt, at temperature 0: the answer written at once (96 tokens), the same request again, and the
answer written in 32-token chunks each continued from the text of the ones before (what psr does when no
verdict fires). Prints how many of the prompts give identical text each way. Run it from two checkouts to
compare code (PYTHONPATH=<checkout>).

    .venv/bin/python bench/greedy_determinism.py [--model smollm2-135m-instruct]
"""

from __future__ import annotations

import argparse
import asyncio
import time

from app.backends.embedded import EmbeddedBackend
from app.settings import EmbeddedSettings
from refiners.backend import ChatMessage, GenerationRequest, Sampling

PROMPTS = (
    "Write a Python function that reverses a string.",
    "Explain how a bicycle gear works.",
    "Give me three tips for a job interview.",
    "Write a short story opening about a lighthouse keeper.",
    "What causes the seasons on Earth?",
    "Write a SQL query that counts orders per customer.",
    "Describe the water cycle.",
    "How do I make a cup of green tea?",
)


def greedy(max_tokens: int) -> Sampling:
    return Sampling(max_tokens=max_tokens, temperature=0.0)


async def compare(backend: EmbeddedBackend, prompt: str) -> tuple[bool, bool]:
    """(asked again: same text, written in chunks: same text)."""
    messages = (ChatMessage("user", prompt),)
    whole = (await backend.complete(GenerationRequest(messages, greedy(96)))).text
    again = (await backend.complete(GenerationRequest(messages, greedy(96)))).text
    chunked = ""
    for _ in range(3):
        chunk = await backend.complete(GenerationRequest(messages, greedy(32), prefix=chunked))
        chunked += chunk.text
        if chunk.finish_reason == "stop":
            break
    return again == whole, chunked == whole


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m-instruct")
    args = parser.parse_args()
    backend = EmbeddedBackend(EmbeddedSettings(model=args.model))
    await backend.start()
    started = time.perf_counter()
    repeats = chunks = 0
    try:
        for prompt in PROMPTS:
            same_again, same_chunked = await compare(backend, prompt)
            repeats += same_again
            chunks += same_chunked
            if not (same_again and same_chunked):
                print(f"differs: {prompt!r} (again {same_again}, chunked {same_chunked})")
    finally:
        await backend.close()
    print(
        f"{args.model}: asked again identical {repeats}/{len(PROMPTS)}, "
        f"chunked identical {chunks}/{len(PROMPTS)} ({time.perf_counter() - started:.0f} s)"
    )


if __name__ == "__main__":
    asyncio.run(main())
