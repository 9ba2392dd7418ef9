"""Gateway settings: every field is an environment variable `TWICE_<SECTION>__<FIELD>`.

Built once by the app factory and injected; nothing reads the environment at import time.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Literal
from urllib.parse import urlsplit

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from app.catalogue import CATALOGUE, DEFAULT_MODEL, CatalogueModel, default_cache_dir
from refiners.config import BudgetConfig, PsrConfig, RolePlayConfig, SelfQuestionConfig, SelfRefineConfig

BackendKind = Literal["embedded", "vllm"]
HTTP_SCHEMES = ("http", "https")


def checked_url(text: str, setting: str, schemes: tuple[str, ...], *, several: str | None = None) -> str:
    """`text` when it is one absolute URL of one of `schemes`; otherwise a message naming `setting` (and, for
    a list given where one URL goes, `several`: the setting that takes a list). Never echoes the value, which
    may carry a password."""
    if "," in text or any(char.isspace() for char in text):
        hint = f"; set {several} for several" if several else ""
        raise ValueError(f"{setting} takes one URL, not a list or text with spaces{hint}")
    try:
        parts = urlsplit(text)
        _ = parts.port  # raises on a port that is not a number in range
    except ValueError as exc:
        raise ValueError(f"{setting} is not a URL ({exc})") from None
    if parts.scheme not in schemes or not (parts.hostname or parts.scheme == "unix"):
        allowed = ", ".join(schemes)
        raise ValueError(f"{setting} must be a URL like {schemes[0]}://host:port (scheme {allowed})")
    if parts.query or parts.fragment:
        raise ValueError(f"{setting} must be a base URL, without a query or a fragment")
    return text


def parse_dns_target(value: str) -> tuple[str, int]:
    """`host:port` (an `http://` prefix and a trailing slash are accepted) to its host and port. Another
    scheme, a path (or query, or user) or a port out of 1-65535 is refused: the pool's URLs would be wrong."""
    text = value.strip().removeprefix("http://").rstrip("/")
    if "://" in text:
        raise ValueError(f"vllm.upstreams_dns must be host:port, with no scheme but http://, not {value!r}")
    if any(char in text for char in "/?#@"):
        raise ValueError(f"vllm.upstreams_dns must be host:port, with no path, query or user, not {value!r}")
    host, sep, port = text.rpartition(":")
    if not sep or not host or not (port.isascii() and port.isdigit()):
        raise ValueError(f"vllm.upstreams_dns must be host:port, not {value!r}")
    if not 1 <= int(port) <= 65535:
        raise ValueError(f"vllm.upstreams_dns must be host:port with a port from 1 to 65535, not {value!r}")
    return host.strip("[]"), int(port)


def settings_problem(error: ValidationError) -> str:
    """What is wrong with the settings, one line per problem, for a person reading a start-up failure."""
    lines = []
    for problem in error.errors():
        where = ".".join(str(part) for part in problem["loc"])
        message = str(problem["msg"]).removeprefix("Value error, ")
        lines.append(f"{where}: {message}" if where else message)
    return "invalid settings: " + "; ".join(lines)


class ServerSettings(BaseModel):
    host: str = Field("127.0.0.1", description="Address `twice serve` binds.")
    port: int = Field(8000, ge=0, le=65535, description="Port `twice serve` binds.")
    workers: int = Field(
        1, ge=1, le=64, description="Uvicorn worker processes (the embedded backend always runs one)."
    )
    log_level: Literal["critical", "error", "warning", "info", "debug"] = Field(
        "info", description="Log level of the gateway and uvicorn."
    )
    graceful_shutdown_s: float = Field(
        30.0, ge=0, description="After SIGTERM, seconds in-flight requests and streams get to finish."
    )
    opentelemetry: bool = Field(
        False,
        description="FastAPI's native OpenTelemetry spans, metrics and logs, sent to the global providers an "
        "OpenTelemetry SDK configures. Off by default: the gateway's metrics are Prometheus's, and with it "
        "on every request first asks OpenTelemetry for its providers (9 us, about 2% of a pass-through).",
    )


class EmbeddedSettings(BaseModel):
    model: str = Field(
        DEFAULT_MODEL,
        description="Catalogue model to serve (`twice models` lists them): `qwen2.5-coder-1.5b-instruct` "
        "judges its own answers, so psr works on it; `smollm2-135m-instruct` is fast but cannot.",
    )
    model_path: Path | None = Field(
        None, description="Any ChatML GGUF file to serve instead of a catalogue model."
    )
    model_name: str | None = Field(
        None,
        description="Model id the gateway serves under; default: the catalogue name, or the file's name "
        "without `.gguf`.",
    )
    cache_dir: Path | None = Field(
        None,
        description="Folder where catalogue models shipped in parts are assembled; default: "
        "$XDG_CACHE_HOME/twice/models (~/.cache/twice/models).",
    )
    n_ctx: int = Field(2048, ge=256, le=32768, description="Context window in tokens.")
    n_threads: int | None = Field(
        None, ge=1, description="CPU threads for llama.cpp (default: half the cores)."
    )
    contexts: int = Field(
        2,
        ge=1,
        le=8,
        description="llama.cpp contexts over the one set of weights. Each keeps its own KV cache and a call "
        "goes to the context holding the longest shared prefix, so a generation and its self-check "
        "prompts do not evict each other.",
    )
    warmup: bool = Field(True, description="Run one short generation at start-up (the first call is slow).")
    extra_buffer_types: bool = Field(
        False,
        description="Let llama.cpp place weights in its extra buffer types (AMX tiles, repacked weights). "
        "Off by default: its AMX kernels fault on some CPUs (a general protection fault at the first "
        "request). On a CPU without AMX, on makes Q4_K decoding faster and prefill slower "
        "(docs/benchmarks.md).",
    )
    startup_probe: bool = Field(
        True,
        description="Before loading the model in-process, prove in a short child process that it can "
        "prefill and decode on this CPU, so a fault in native code stops start-up with a message "
        "instead of killing the gateway at its first request.",
    )
    startup_probe_timeout_s: float = Field(
        300.0, gt=0, description="Seconds the start-up probe may take before start-up fails."
    )

    @field_validator("model")
    @classmethod
    def _known_model(cls, value: str) -> str:
        if value not in CATALOGUE:
            raise ValueError(f"unknown model {value!r}; known: {', '.join(CATALOGUE)} (or set model_path)")
        return value

    @property
    def catalogue_model(self) -> CatalogueModel | None:
        """The catalogue entry served, or None when `model_path` names a file of the operator's own."""
        return None if self.model_path is not None else CATALOGUE[self.model]

    @property
    def served_name(self) -> str:
        if self.model_name:
            return self.model_name
        return self.model_path.name.removesuffix(".gguf") if self.model_path is not None else self.model

    @property
    def model_cache_dir(self) -> Path:
        return self.cache_dir or default_cache_dir()


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
    routing_header: str = Field(
        "X-Twice-Routing-Key",
        min_length=1,
        description="Header carrying the per-request routing key on every call to vLLM "
        "(a router's session key).",
    )
    upstreams: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Several vLLM base URLs, comma-separated or a JSON list: the gateway health-checks "
        "them and keeps the calls of one request on one of them (docs/scaleout.md); wins over `upstream`.",
    )
    upstreams_dns: str = Field(
        "",
        description="`host:port` resolving to every vLLM replica (a headless Service), re-resolved "
        "periodically; wins over `upstream`, not to be combined with `upstreams`.",
    )
    dns_refresh_s: float = Field(10.0, gt=0, description="Seconds between resolutions of `upstreams_dns`.")
    health_interval_s: float = Field(
        5.0, gt=0, description="Seconds between `GET /health` checks of each upstream (with several)."
    )
    health_timeout_s: float = Field(2.0, gt=0, description="Seconds one health check may take.")
    unhealthy_after: int = Field(
        3, ge=1, description="Consecutive failed health checks that take an upstream out of the pool."
    )
    healthy_after: int = Field(
        2, ge=1, description="Consecutive passed health checks that bring an upstream back into the pool."
    )

    @field_validator("upstreams", mode="before")
    @classmethod
    def _split_upstreams(cls, value: object) -> object:
        if not isinstance(value, str):
            return value
        text = value.strip()
        if text.startswith("["):
            return json.loads(text)
        return [part.strip() for part in text.split(",") if part.strip()]

    @field_validator("upstream")
    @classmethod
    def _one_url(cls, value: str) -> str:
        return checked_url(
            value.strip(),
            "TWICE_VLLM__UPSTREAM (--upstream)",
            HTTP_SCHEMES,
            several="TWICE_VLLM__UPSTREAMS (--upstreams)",
        )

    @field_validator("upstreams")
    @classmethod
    def _each_url(cls, value: list[str]) -> list[str]:
        setting = "each of TWICE_VLLM__UPSTREAMS (--upstreams)"
        return [checked_url(url, setting, HTTP_SCHEMES) for url in value]

    @field_validator("upstreams_dns")
    @classmethod
    def _dns_target(cls, value: str) -> str:
        if value.strip():
            parse_dns_target(value)  # refused at start-up, not when the pool is built
        return value

    @model_validator(mode="after")
    def _one_discovery(self) -> VllmSettings:
        if self.upstreams and self.upstreams_dns:
            raise ValueError("set either vllm.upstreams or vllm.upstreams_dns, not both")
        return self


class LimitSettings(BaseModel):
    max_body_bytes: int = Field(1_048_576, ge=1024, description="Largest request body accepted (413 above).")
    max_header_bytes: int = Field(
        32_768, ge=1024, description="Largest total of a request's header names and values (431 above)."
    )
    max_header_field_bytes: int = Field(
        8_192, ge=256, description="Largest single header, name and value (431 above)."
    )
    max_headers: int = Field(100, ge=8, description="Most headers in one request (431 above).")
    max_messages: int = Field(256, ge=1, description="Most messages in one request.")
    max_tokens: int = Field(4096, ge=1, description="Largest max_tokens a request may ask for.")
    default_max_tokens: int = Field(512, ge=1, description="max_tokens when a request gives none.")
    requests_per_minute: int = Field(
        0,
        ge=0,
        description="Chat requests one API key (or client address, without keys) may make a minute; 0: off.",
    )
    tokens_per_minute: int = Field(
        0, ge=0, description="Tokens (prompt + completion) one API key may use a minute; 0: off."
    )
    fail_open: bool = Field(
        True, description="Admit requests when Redis cannot be asked about rate limits (false: answer 503)."
    )


class RedisSettings(BaseModel):
    model_config = ConfigDict(hide_input_in_errors=True)  # the URL may hold a password

    enabled: bool = Field(True, description="Use Redis (experiments, cache, limits, results); false: none.")
    url: SecretStr = Field(
        SecretStr("redis://127.0.0.1:6379/0"), description="Redis URL, `redis://[:password@]host:port/db`."
    )
    socket_timeout_s: float = Field(
        0.1, gt=0, le=10, description="Seconds one Redis command may take before Redis counts as down."
    )
    call_deadline_s: float = Field(
        0.25,
        gt=0,
        le=30,
        description="Longest one Redis call may take, all its round trips together (a slow or stalled Redis "
        "that answers each read in time still hits it); past it Redis counts as down.",
    )
    max_backoff_s: float = Field(
        5.0, gt=0, le=60, description="Longest wait between reconnection attempts while Redis is down."
    )
    key_prefix: str = Field("twice:", description="Prefix of every key the gateway writes.")

    @field_validator("url")
    @classmethod
    def _redis_url(cls, value: SecretStr) -> SecretStr:
        checked_url(value.get_secret_value().strip(), "TWICE_REDIS__URL", ("redis", "rediss", "unix"))
        return value


class AuthSettings(BaseModel):
    api_keys: SecretStr = Field(
        SecretStr(""),
        description="Client API keys, comma-separated, each `key` or `tenant:key`; empty: no auth on /v1.",
    )
    admin_key: SecretStr = Field(
        SecretStr(""), description="Bearer key of the /admin/ API; empty: admin off."
    )


class ExperimentSettings(BaseModel):
    default: str = Field(
        "", description="Experiment a request without X-Twice-Experiment joins; empty: none."
    )
    allow_override: bool = Field(
        False, description="An explicit X-Twice-Strategy wins over the experiment (the request joins none)."
    )
    seed_file: Path | None = Field(
        None, description="JSON list of experiments written to Redis at start when they do not exist there."
    )
    poll_interval_s: float = Field(
        1.0, gt=0, le=60, description="Seconds between checks of the experiments' version in Redis."
    )
    attribution_ttl_s: int = Field(
        604_800, ge=60, description="Seconds a request id stays attributable to its variant for feedback."
    )


class CacheSettings(BaseModel):
    enabled: bool = Field(
        False, description="Cache answers to deterministic requests (temperature 0 or a seed) in Redis."
    )
    ttl_s: int = Field(3600, ge=1, description="Seconds a cached answer lives.")
    max_entry_bytes: int = Field(
        65_536, ge=256, description="Requests and answers larger than this are neither looked up nor stored."
    )
    max_entries: int = Field(
        4_096,
        ge=1,
        description="Most answers kept (so at most max_entries x max_entry_bytes in Redis); the least "
        "recently used is evicted first.",
    )


class PlanSettings(BaseModel):
    strategies: str = Field(
        "none",
        description="Default plan when a request sends no X-Twice-Strategy: a comma list "
        "(psr, self_refine, self_question, role_play) or `none`.",
    )
    rounds: str = Field("auto", description="Default psr rounds: `auto` (the predictor) or an integer.")
    required: str = Field(
        "",
        description="Strategies every request gets, whatever its X-Twice-Strategy header or experiment arm "
        "says: a comma list, or empty for none. Clients may add strategies and rounds, never remove these.",
    )
    required_min_rounds: int = Field(
        1,
        ge=1,
        le=64,
        description="When psr is required: the fewest rounds any request gets (client, experiment or "
        "default plan alike), so that X-Twice-Rounds: 0 cannot switch it off.",
    )
    max_rounds: int = Field(16, ge=0, le=64, description="Most psr rounds a request may get.")
    auto_rounds: int = Field(4, ge=0, le=64, description="Rounds `auto` grants when the predictor is off.")
    predictor: bool = Field(True, description="`auto` asks the round predictor (see docs/predictor.md).")
    predictor_path: Path | None = Field(
        None,
        description="Directory of a predictor artifact and its card; default: the one trained on the "
        "served catalogue model's own verdicts (app/catalogue.py), else the package default.",
    )
    predictor_tail_risk: float | None = Field(
        None,
        ge=0.0,
        lt=1.0,
        description="The predictor's safety/compute trade-off: a request gets the fewest rounds whose "
        "predicted risk of needing more is at most this. Default: the value calibrated in training (its "
        "card). Lower is safer and costs more; the card's `frontier` lists both sides at each value.",
    )
    auto_floor: int | None = Field(
        None,
        ge=0,
        le=64,
        description="Fewest rounds `auto` grants. Default: the floor the predictor was calibrated with (its "
        "card's `training.floor`; 0 with the predictor off).",
    )
    client_may_lower_rounds: bool = Field(
        False,
        description="Honour an X-Twice-Rounds below what `auto` would grant. Off: such a request gets "
        "what `auto` grants, so a client cannot switch the self-check off with X-Twice-Rounds: 0.",
    )
    auto_explore_share: float = Field(
        0.05,
        ge=0.0,
        le=1.0,
        description="Share of `auto` requests given the predictor's whole range instead of its choice, so "
        "that telemetry keeps observing what the predictor checks little and retraining stays honest "
        "(docs/predictor.md). 0 makes `auto` deterministic (evaluations of the predictor itself).",
    )


class TelemetrySettings(BaseModel):
    enabled: bool = Field(
        True,
        description="Append each psr request's features, rounds, first harmful round and outcome to a capped "
        "Redis stream that `twice predictor train --from-redis` retrains from.",
    )
    stream: str = Field("telemetry", description="Stream key, after the Redis key prefix.")
    max_entries: int = Field(100_000, ge=1, description="The stream is trimmed to about this many entries.")
    queue_size: int = Field(
        1_000,
        ge=1,
        description="Entries waiting for the background writer; past it new entries are dropped, counted.",
    )
    store_text: bool = Field(
        False, description="Also store the request's messages (off: features only, no request text)."
    )


class PlaygroundSettings(BaseModel):
    enabled: bool = Field(
        True,
        description="Serve the browser playground at /playground (docs/playground.md); when off it is a 404.",
    )


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
    redis: RedisSettings = Field(default_factory=RedisSettings)
    auth: AuthSettings = Field(default_factory=AuthSettings)
    experiments: ExperimentSettings = Field(default_factory=ExperimentSettings)
    cache: CacheSettings = Field(default_factory=CacheSettings)
    telemetry: TelemetrySettings = Field(default_factory=TelemetrySettings)
    playground: PlaygroundSettings = Field(default_factory=PlaygroundSettings)

    @field_validator("backend", mode="before")
    @classmethod
    def _lower(cls, value: object) -> object:
        return value.lower() if isinstance(value, str) else value

    @model_validator(mode="after")
    def _model_defaults(self) -> Settings:
        """What depends on the served model, when it is a catalogue model (app/catalogue.py) and the
        operator set none: psr's verdict settings replace the generic ones field by field (TWICE_PSR__*),
        and its own round predictor, trained on when its verdicts fire, replaces the package default
        (TWICE_PLAN__PREDICTOR_PATH; any other model keeps the default, whose labels depend on no model)."""
        model = self.embedded.catalogue_model if self.backend == "embedded" else None
        if model is None:
            return self
        unset = {k: v for k, v in model.psr.as_fields().items() if k not in self.psr.model_fields_set}
        if unset:
            self.psr = self.psr.model_copy(update=unset)
        if model.predictor is not None and "predictor_path" not in self.plan.model_fields_set:
            self.plan = self.plan.model_copy(update={"predictor_path": model.predictor})
        return self
