"""In-process llama.cpp backend: a catalogue model (app/catalogue.py) or any ChatML GGUF file.

- The model file is verified against its sha256 (assembled from its data packages first, once, if it
  ships in parts). Proven at start-up in a child process (app/backends/startup_probe.py), then loaded once
  and warmed; nothing is downloaded. llama.cpp's extra buffer types (AMX, repacked weights) are off unless
  configured.
- Every call runs on one worker thread, so calls are serialised and the event loop never blocks.
- A few llama.cpp contexts share the weights (mmap). A call goes to the context whose KV cache shares the
  longest prefix with its prompt, so a generation, its continuations and its self-check prompts each keep
  their cache warm instead of evicting one another.
- A continuation resumes from the token ids the model wrote, not from a re-tokenisation of their text
  (app/backends/continuation.py): at temperature 0 a checked answer is token for token the plain one.
- `llama_cpp` is imported only here, inside functions.
"""

from __future__ import annotations

import asyncio
import bisect
import codecs
import logging
import secrets
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, TypeVar

import numpy as np

from app.backends.chatml import render_chatml_head
from app.backends.continuation import ContinuationMemory, conversation_key
from app.backends.llama_model import ModelOptions, open_model, system_info
from app.backends.startup_probe import prove_generation
from app.settings import EmbeddedSettings
from refiners.backend import (
    BackendError,
    BackendRejected,
    BackendUnavailable,
    Completion,
    CompletionChunk,
    FinishReason,
    GenerationRequest,
    TokenDistribution,
    Usage,
)

log = logging.getLogger("twice.backends.embedded")

_T = TypeVar("_T")

MIN_REUSE_TOKENS = 32


class ContextLengthExceeded(BackendRejected):
    """The prompt does not fit the model's context window."""


@dataclass
class _Slot:
    llm: Any
    last_used: float = 0.0
    resume_points: list[int] = field(default_factory=lambda: [0])
    """Positions at which an evaluation batch began for the tokens now in the KV cache, and the end of them
    (where the next batch would begin)."""

    def resume_point(self, shared: int, prompt_length: int) -> int:
        """Where a generation resumes: the last batch start within the shared prefix, leaving at least one
        prompt token to evaluate. llama.cpp's logits for a token depend on the batch it is evaluated in (a
        token alone and the same token inside a prompt's batch differ in the last bits), so resuming
        mid-batch would make a greedy answer depend on what this context computed before: the same request
        twice, or a psr chunk and plain generation, could part ways. Resumed at a batch start, the rest is
        evaluated in the batches it had."""
        at = bisect.bisect_right(self.resume_points, min(shared, prompt_length - 1))
        return self.resume_points[at - 1] if at else 0

    def evaluated(self, start: int, prompt_length: int) -> None:
        """Record a prompt evaluated from `start` in batches of n_batch, then single-token decodes."""
        del self.resume_points[bisect.bisect_left(self.resume_points, start) :]
        self.resume_points += range(start, prompt_length, self.llm.n_batch)
        self.resume_points += range(prompt_length, max(prompt_length, self.llm.n_tokens) + 1)


@dataclass(frozen=True)
class _Prompt:
    ids: list[int]
    conversation: bytes
    """The key of the prompt before the answer (`conversation_key`)."""
    answer_start: int
    """Where the answer's own ids (the request's prefix) begin in `ids`."""


@dataclass
class _Cancel:
    event: threading.Event = field(default_factory=threading.Event)

    def __call__(self) -> bool:
        return self.event.is_set()


def _common_prefix(cached: Any, tokens: list[int]) -> int:
    n = min(len(cached), len(tokens))
    if n == 0:
        return 0
    mismatch = np.flatnonzero(np.asarray(cached[:n]) != np.asarray(tokens[:n]))
    return int(mismatch[0]) if mismatch.size else n


class _StopMatcher:
    """Releases text as it is generated, holding back only what could still become a stop sequence."""

    def __init__(self, stops: tuple[str, ...]) -> None:
        self._stops = stops
        self._held = ""
        self.stopped = False

    def feed(self, text: str) -> str:
        if not self._stops:
            return text
        self._held += text
        for stop in self._stops:
            at = self._held.find(stop)
            if at >= 0:
                self.stopped = True
                out, self._held = self._held[:at], ""
                return out
        keep = 0
        for stop in self._stops:
            for size in range(min(len(stop) - 1, len(self._held)), 0, -1):
                if self._held.endswith(stop[:size]):
                    keep = max(keep, size)
                    break
        out = self._held[: len(self._held) - keep]
        self._held = self._held[len(self._held) - keep :]
        return out

    def flush(self) -> str:
        out, self._held = self._held, ""
        return out


class EmbeddedBackend:
    def __init__(self, settings: EmbeddedSettings) -> None:
        self._settings = settings
        self._slots: list[_Slot] = []
        self._written = ContinuationMemory()  # used on the worker thread only
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="twice-llama")
        self._ready = False

    @property
    def model(self) -> str:
        return self._settings.served_name

    # --- lifecycle ---------------------------------------------------------------------------------------

    async def start(self) -> None:
        options = await asyncio.to_thread(ModelOptions.from_settings, self._settings)
        if not options.path.is_file():
            raise BackendUnavailable(f"model file not found: {options.path}")
        if self._settings.startup_probe:
            report = await asyncio.to_thread(
                prove_generation, options, self._settings.startup_probe_timeout_s
            )
            log.info(
                "embedded model proven in a child process in %.1fs: %d-token prefill, %d decoded, "
                "buffer types %s",
                report.seconds,
                report.prompt_tokens,
                report.decoded_tokens,
                ", ".join(report.buffer_types),
            )
        await asyncio.get_running_loop().run_in_executor(self._executor, self._load, options)
        self._ready = True

    def _load(self, options: ModelOptions) -> None:
        started = time.perf_counter()
        for _ in range(self._settings.contexts):
            self._slots.append(_Slot(open_model(options)))
        if self._settings.warmup:
            for slot in self._slots:
                slot.llm.eval(self._tokenize(slot.llm, "Hello", special=False))
                slot.llm.reset()
        log.info(
            "embedded model %s loaded in %.1fs (%d threads, extra buffer types %s; llama.cpp: %s)",
            options.path.name,
            time.perf_counter() - started,
            options.threads,
            "on" if options.extra_buffer_types else "off",
            system_info(),
        )

    @property
    def extra_buffer_types(self) -> bool:
        """Whether the loaded model lets llama.cpp use its extra buffer types (read from llama.cpp's own
        model parameters, not from the settings)."""
        return any(bool(slot.llm.model_params.use_extra_bufts) for slot in self._slots)

    async def close(self) -> None:
        self._executor.shutdown(wait=True, cancel_futures=True)
        for slot in self._slots:
            slot.llm.close()
        self._slots.clear()
        self._ready = False

    async def check_ready(self) -> bool:
        return self._ready

    async def list_models(self) -> list[str]:
        return [self.model]

    async def serves(self, model: str) -> bool:
        return model == self.model

    # --- prompt handling (worker thread) -----------------------------------------------------------------

    @staticmethod
    def _tokenize(llm: Any, text: str, *, special: bool) -> list[int]:
        ids: list[int] = llm.tokenize(text.encode("utf-8"), add_bos=False, special=special)
        return ids

    def _prompt(self, llm: Any, request: GenerationRequest) -> _Prompt:
        if request.extra:
            raise BackendRejected(f"the embedded backend does not take {sorted(request.extra)}")
        head = render_chatml_head(
            request.messages, lambda text, special: self._tokenize(llm, text, special=special)
        )
        conversation = conversation_key(head)
        answer = self._written.ids_for(
            conversation, request.prefix, lambda text: self._tokenize(llm, text, special=False)
        )
        ids = head + answer
        if len(ids) >= self._settings.n_ctx:
            raise ContextLengthExceeded(
                f"the prompt is {len(ids)} tokens; the model's context is {self._settings.n_ctx}"
            )
        return _Prompt(ids, conversation, answer_start=len(head))

    def _pick_slot(self, request: GenerationRequest) -> tuple[_Slot, _Prompt, int]:
        """The context holding the longest useful prefix of the prompt; else the least recently used one.

        A prefix shorter than MIN_REUSE_TOKENS (the chat template's opening, a shared system line) is not
        worth evicting another conversation's cache for."""
        if not self._slots:
            raise BackendUnavailable("the embedded model is not loaded")
        prompt = self._prompt(self._slots[0].llm, request)
        shared = [_common_prefix(slot.llm._input_ids, prompt.ids) for slot in self._slots]
        best = max(range(len(self._slots)), key=shared.__getitem__)
        if shared[best] < min(MIN_REUSE_TOKENS, len(prompt.ids) - 1):
            best = min(range(len(self._slots)), key=lambda i: self._slots[i].last_used)
        slot = self._slots[best]
        slot.last_used = time.monotonic()
        return slot, prompt, shared[best]

    # --- generation (worker thread) ----------------------------------------------------------------------

    def _generate(self, request: GenerationRequest, cancelled: _Cancel) -> Iterator[CompletionChunk]:
        from llama_cpp import llama_cpp as lib

        slot, prompt, shared = self._pick_slot(request)
        llm = slot.llm
        resume = slot.resume_point(shared, len(prompt.ids))
        llm._ctx.kv_cache_seq_rm(-1, resume, -1)
        llm.n_tokens = resume
        sampling = request.sampling
        budget = min(sampling.max_tokens, self._settings.n_ctx - len(prompt.ids))
        llm.set_seed(sampling.seed if sampling.seed is not None else secrets.randbits(31))
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        stops = _StopMatcher(sampling.stop)
        written: list[int] = []
        pieces: list[str] = []
        finish: FinishReason = "length"
        tokens = llm.generate(
            prompt.ids[resume:],
            reset=False,
            top_k=0,
            top_p=sampling.top_p,
            min_p=0.0,
            typical_p=1.0,
            temp=sampling.temperature,
            repeat_penalty=1.0,
        )
        try:
            for token in tokens:
                if cancelled():
                    break
                if lib.llama_vocab_is_eog(llm._model.vocab, token):
                    finish = "stop"
                    break
                written.append(token)
                text = stops.feed(decoder.decode(llm.detokenize([token])))
                if text:
                    pieces.append(text)
                    yield CompletionChunk(text=text)
                if stops.stopped:
                    finish = "stop"
                    break
                if len(written) >= budget:
                    break
        finally:
            tokens.close()
            slot.evaluated(resume, len(prompt.ids))
        tail = "" if stops.stopped else stops.feed(decoder.decode(b"", final=True)) + stops.flush()
        if finish == "length" and not cancelled():
            self._remember(llm, request, prompt, written, "".join(pieces) + tail)
        usage = Usage(prompt_tokens=len(prompt.ids), completion_tokens=len(written), cached_tokens=resume)
        yield CompletionChunk(text=tail, finish_reason=finish, usage=usage)

    def _remember(
        self, llm: Any, request: GenerationRequest, prompt: _Prompt, written: list[int], text: str
    ) -> None:
        """Keep the ids of an answer cut by its token budget (the one kind that is continued), if they
        are exactly the text the caller received: a cut inside a character, say, is not kept."""
        try:
            exact = llm.detokenize(written).decode("utf-8") == text
        except UnicodeDecodeError:
            exact = False
        if exact:
            ids = [*prompt.ids[prompt.answer_start :], *written]
            self._written.remember(prompt.conversation, request.prefix + text, ids)

    def _complete(self, request: GenerationRequest, cancelled: _Cancel) -> Completion:
        parts: list[str] = []
        last = CompletionChunk(text="")
        for chunk in self._generate(request, cancelled):
            parts.append(chunk.text)
            last = chunk
        return Completion(
            text="".join(parts), finish_reason=last.finish_reason or "stop", usage=last.usage or Usage()
        )

    def _next_token(self, request: GenerationRequest, top_logprobs: int) -> TokenDistribution:
        slot, prompt, shared = self._pick_slot(request)
        llm = slot.llm
        # A verdict reuses the whole shared prefix (its score may differ in the last bits with what this
        # context held; generations resume at a batch start instead). At least the last prompt token is
        # evaluated: its logits are the distribution we want.
        reuse = min(shared, len(prompt.ids) - 1)
        llm._ctx.kv_cache_seq_rm(-1, reuse, -1)
        llm.n_tokens = reuse
        llm.eval(prompt.ids[reuse:])
        slot.evaluated(reuse, len(prompt.ids))
        logits = np.ctypeslib.as_array(llm._ctx.get_logits(), shape=(llm.n_vocab(),)).astype(np.float64)
        logits -= logits.max()
        probs = np.exp(logits)
        probs /= probs.sum()
        k = min(top_logprobs, probs.size)
        best = np.argpartition(-probs, k - 1)[:k]
        top: dict[str, float] = {}
        for token_id in best[np.argsort(-probs[best])]:
            text = llm.detokenize([int(token_id)]).decode("utf-8", errors="replace")
            top[text] = top.get(text, 0.0) + float(probs[token_id])
        # One token is produced (its distribution read), as vLLM counts a max_tokens=1 verdict call.
        usage = Usage(prompt_tokens=len(prompt.ids), completion_tokens=1, cached_tokens=reuse)
        return TokenDistribution(top=top, usage=usage)

    # --- the Backend contract ----------------------------------------------------------------------------

    async def complete(self, request: GenerationRequest) -> Completion:
        cancelled = _Cancel()
        try:
            return await self._run(self._complete, request, cancelled)
        except asyncio.CancelledError:
            # A deadline or a departed client: the worker stops at its next token instead of finishing.
            cancelled.event.set()
            raise

    async def next_token(self, request: GenerationRequest, top_logprobs: int = 20) -> TokenDistribution:
        return await self._run(self._next_token, request, top_logprobs)

    async def stream(self, request: GenerationRequest) -> AsyncIterator[CompletionChunk]:
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[CompletionChunk | BaseException | None] = asyncio.Queue()
        cancelled = _Cancel()

        def produce() -> None:
            try:
                for chunk in self._generate(request, cancelled):
                    loop.call_soon_threadsafe(queue.put_nowait, chunk)
                    if cancelled():
                        break
            except BaseException as exc:  # handed to the consumer, which raises it
                loop.call_soon_threadsafe(queue.put_nowait, exc)
            finally:
                loop.call_soon_threadsafe(queue.put_nowait, None)

        future = loop.run_in_executor(self._executor, produce)
        try:
            while (item := await queue.get()) is not None:
                if isinstance(item, BaseException):
                    raise self._translate(item) from item
                yield item
        finally:
            # The client went away or the stream ended: stop the worker at its next token.
            cancelled.event.set()
            if not future.done():
                future.cancel()

    async def _run(self, fn: Callable[..., _T], *args: Any) -> _T:
        try:
            return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)
        except BackendError:
            raise
        except RuntimeError as exc:
            raise self._translate(exc) from exc

    @staticmethod
    def _translate(exc: BaseException) -> BaseException:
        if isinstance(exc, BackendError):
            return exc
        if isinstance(exc, RuntimeError) and "shutdown" in str(exc):
            return BackendUnavailable("the embedded model is shutting down")
        return BackendError(f"the embedded model failed: {type(exc).__name__}")
