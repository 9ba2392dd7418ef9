"""The Backend contract that strategies consume; the gateway implements it (embedded llama.cpp, vLLM).

Four operations cover every strategy:
- `complete`: one assistant answer, whole.
- `stream`: the same answer as chunks; the last chunk carries the finish reason and usage.
- continuing a partial assistant answer: either of the above with `GenerationRequest.prefix` set. The
  backend renders the conversation with the partial answer as the open last assistant turn, so a
  continuation shares its whole prefix with the call before it (KV and prefix caches hit).
- `next_token`: the distribution of the first token the assistant would write, as the top-k
  probabilities: one-token self-check verdicts are scored from it.

Errors: a backend raises `BackendUnavailable` (cannot reach or load the model), `BackendTimeout`
(no answer within its deadline), `BackendRejected` (the request itself is at fault) or `BackendError`
(anything else it could not do).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, runtime_checkable

Role = Literal["system", "user", "assistant"]
FinishReason = Literal["stop", "length"]


@dataclass(frozen=True, slots=True)
class ChatMessage:
    role: Role
    content: str


@dataclass(frozen=True, slots=True)
class Sampling:
    max_tokens: int
    temperature: float = 1.0
    top_p: float = 1.0
    stop: tuple[str, ...] = ()
    seed: int | None = None


@dataclass(frozen=True, slots=True)
class GenerationRequest:
    messages: tuple[ChatMessage, ...]
    sampling: Sampling
    prefix: str = ""
    """A partial assistant answer to continue; the result holds only the new text."""
    routing_key: str | None = None
    """Same for every call of one client request, so a multi-replica upstream keeps them together."""
    model: str = ""
    """The model to ask for; empty: the backend's own."""
    extra: Mapping[str, Any] = field(default_factory=dict)
    """Backend-specific request fields carried unchanged (vLLM sampling and template fields)."""


@dataclass(frozen=True, slots=True)
class Usage:
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0

    def __add__(self, other: Usage) -> Usage:
        return Usage(
            self.prompt_tokens + other.prompt_tokens,
            self.completion_tokens + other.completion_tokens,
            self.cached_tokens + other.cached_tokens,
        )


@dataclass(frozen=True, slots=True)
class Completion:
    text: str
    finish_reason: FinishReason
    usage: Usage


@dataclass(frozen=True, slots=True)
class CompletionChunk:
    text: str
    finish_reason: FinishReason | None = None
    usage: Usage | None = None


@dataclass(frozen=True, slots=True)
class TokenDistribution:
    top: Mapping[str, float] = field(default_factory=dict)
    """Token text → probability, for the k most likely first tokens."""
    usage: Usage = field(default_factory=Usage)


class BackendError(Exception):
    """The backend could not do what was asked."""


class BackendUnavailable(BackendError):
    """The backend cannot be reached (or the model not loaded)."""


class BackendTimeout(BackendError):
    """The backend did not answer within its deadline."""


class BackendRejected(BackendError):
    """The backend refused the request itself (too long for the context, a bad value): the caller's fault.

    Its message describes the request, never the backend's internals, so it may be shown to the client.
    """

    def __init__(self, message: str, *, status: int = 400) -> None:
        super().__init__(message)
        self.message = message
        self.status = status


@runtime_checkable
class Backend(Protocol):
    @property
    def model(self) -> str:
        """The model id this backend serves."""
        ...

    async def complete(self, request: GenerationRequest) -> Completion: ...

    def stream(self, request: GenerationRequest) -> AsyncIterator[CompletionChunk]: ...

    async def next_token(self, request: GenerationRequest, top_logprobs: int = 20) -> TokenDistribution: ...
