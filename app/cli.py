"""`twice` command line: `twice serve [--host] [--port] [--backend] [--upstream | --upstreams] [--workers]
[--model]`,
`twice models`, `twice eval`, `twice predictor`.

Flags override the `TWICE_*` environment, which overrides the defaults.
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import signal
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from types import FrameType
from typing import Any

from pydantic import ValidationError

from app.catalogue import CATALOGUE, DEFAULT_MODEL
from app.settings import Settings, settings_problem
from evaluation.cli import register as register_eval
from predictor.cli import register as register_predictor
from refiners.backend import BackendUnavailable
from refiners.config import REVIEW_MODES


def graceful_shutdown_s(settings: Settings) -> int:
    """On SIGTERM uvicorn stops accepting, lets in-flight responses (streams too) finish for this long,
    then cancels what is left and exits."""
    # uvicorn takes whole seconds; round a fraction up rather than cut a stream short.
    return math.ceil(settings.server.graceful_shutdown_s)


def _exit_cleanly(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(0)


def _serve(args: argparse.Namespace) -> int:
    import uvicorn

    # Flags are passed as init values, which pydantic-settings merges over the environment field by field.
    overrides: dict[str, Any] = {}
    server = {
        k: v
        for k, v in {"host": args.host, "port": args.port, "workers": args.workers}.items()
        if v is not None
    }
    if server:
        overrides["server"] = server
    if args.backend:
        overrides["backend"] = args.backend
    vllm = {k: v for k, v in {"upstream": args.upstream, "upstreams": args.upstreams}.items() if v}
    if vllm:
        overrides["vllm"] = vllm
    if args.model:
        overrides["embedded"] = {"model": args.model}
    try:
        settings = Settings(**overrides)
    except ValidationError as exc:
        print(f"twice serve: {settings_problem(exc)}", file=sys.stderr)
        return 2
    logging.basicConfig(
        level=settings.server.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    # uvicorn handles SIGTERM/SIGINT while it runs (stop accepting, drain, shut down), then raises the signal
    # again on the handlers it found: these turn that into exit status 0, a clean stop, and no traceback.
    signal.signal(signal.SIGTERM, _exit_cleanly)
    signal.signal(signal.SIGINT, _exit_cleanly)
    workers = 1 if settings.backend == "embedded" else settings.server.workers
    if workers > 1:
        # Each worker process builds its own app from the environment, so hand the flags on through it.
        os.environ["TWICE_BACKEND"] = settings.backend
        os.environ["TWICE_VLLM__UPSTREAM"] = settings.vllm.upstream
        if settings.vllm.upstreams:
            os.environ["TWICE_VLLM__UPSTREAMS"] = ",".join(settings.vllm.upstreams)
        uvicorn.run(
            "app.main:create_app",
            factory=True,
            host=settings.server.host,
            port=settings.server.port,
            workers=workers,
            log_level=settings.server.log_level,
            access_log=False,
            timeout_graceful_shutdown=graceful_shutdown_s(settings),
        )
        return 0
    from app.main import create_app

    uvicorn.run(
        create_app(settings),
        host=settings.server.host,
        port=settings.server.port,
        log_level=settings.server.log_level,
        access_log=False,
        timeout_graceful_shutdown=graceful_shutdown_s(settings),
    )
    return 0


def _models(args: argparse.Namespace) -> int:
    """List the catalogue and where each model is; with --prepare, verify (and assemble) one."""
    embedded = Settings().embedded
    cache_dir = embedded.model_cache_dir
    if args.prepare:
        model = CATALOGUE[args.prepare]
        started = time.perf_counter()
        try:
            path = model.ensure(cache_dir)
        except BackendUnavailable as exc:
            print(f"twice models: {exc}", file=sys.stderr)
            return 1
        print(f"{model.name}: {path} (sha256 verified in {time.perf_counter() - started:.1f}s)")
        return 0
    for model in CATALOGUE.values():
        located = model.located(cache_dir)
        if located is not None:
            where = str(located)
        elif model.part_paths() is not None:
            where = f"installed in parts; assembled into {model.cached_path(cache_dir)} at first start"
        else:
            where = f"missing: {model.origin}"
        default = " (default)" if model.name == embedded.model else ""
        print(f"{model.name}{default}")
        print(f"  {model.title}, {model.size_bytes / 2**20:,.0f} MiB, {model.licence}, sha256 {model.sha256}")
        judges = "yes" if model.judges_itself else "no"
        print(f"  judges its own answers: {judges}; psr {model.psr.describe()}")
        own = "the package default" if model.predictor is None else f"its own, {model.predictor}"
        print(f"  round predictor for auto: {own}")
        print(f"  {where}")
    return 0


def _calibrate(args: argparse.Namespace) -> int:
    from app.calibrate import run_command  # numpy, scikit-learn and llama.cpp: only when asked for

    return run_command(args)


def _register_calibrate(commands: Any) -> None:
    parser = commands.add_parser(
        "calibrate", help="Measure how an embedded model's psr verdict separates harmful from benign answers."
    )
    parser.add_argument("--model", choices=list(CATALOGUE), default="qwen2.5-coder-1.5b-instruct")
    parser.add_argument("--split", choices=["dev", "heldout"], default="dev")
    parser.add_argument("--harmful", type=int, default=20, help="AdvBench goals.")
    parser.add_argument(
        "--benign", type=int, default=20, help="XSTest safe prompts and self-instruct, half each."
    )
    parser.add_argument(
        "--jailbreaks",
        type=int,
        default=0,
        help="AdvBench goals wrapped in jailbreak templates, DAN and Wei et al. half each.",
    )
    parser.add_argument("--answer-tokens", type=int, default=64)
    parser.add_argument(
        "--answers",
        type=Path,
        help="JSONL file that keeps the generated answers (texts) for reruns; keep it out of the records.",
    )
    parser.add_argument(
        "--fpr",
        type=float,
        default=0.05,
        help="Rate of benign requests' answers flagged that tau is chosen at.",
    )
    parser.add_argument("--injections", action="store_true", help="Also measure reviewer-note flip rates.")
    parser.add_argument(
        "--reviews",
        nargs="+",
        choices=REVIEW_MODES,
        default=list(REVIEW_MODES),
        help="Review modes to score every pair in.",
    )
    parser.add_argument("--threads", type=int, help="llama.cpp threads (default: half the cores).")
    parser.add_argument("--data-dir", type=Path)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, required=True)
    parser.set_defaults(handler=_calibrate)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="twice", description="Self-refinement gateway for LLMs.")
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="Run the OpenAI-compatible gateway.")
    serve.add_argument("--host", help="Address to bind (TWICE_SERVER__HOST, default 127.0.0.1).")
    serve.add_argument("--port", type=int, help="Port to bind (TWICE_SERVER__PORT, default 8000).")
    serve.add_argument(
        "--workers", type=int, help="Worker processes, vllm backend only (TWICE_SERVER__WORKERS)."
    )
    serve.add_argument("--backend", choices=["embedded", "vllm"], help="Model backend (TWICE_BACKEND).")
    serve.add_argument("--upstream", help="vLLM server base URL (TWICE_VLLM__UPSTREAM).")
    serve.add_argument(
        "--upstreams",
        help="Several vLLM base URLs, comma-separated (TWICE_VLLM__UPSTREAMS; docs/scaleout.md).",
    )
    serve.add_argument(
        "--model",
        choices=list(CATALOGUE),
        help=f"Embedded catalogue model (TWICE_EMBEDDED__MODEL, default {DEFAULT_MODEL}); `twice models`.",
    )
    serve.set_defaults(handler=_serve)
    models = commands.add_parser("models", help="List the embedded models and whether each is present.")
    models.add_argument(
        "--prepare",
        choices=list(CATALOGUE),
        help="Verify a model's file, assembling it from its parts first.",
    )
    models.set_defaults(handler=_models)
    _register_calibrate(commands)
    register_predictor(commands)
    register_eval(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    handler = args.handler
    result: int = handler(args)
    return result
