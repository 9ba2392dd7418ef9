"""Each strategy's cost on the embedded model against plain generation, measured side by side in one run.

    .venv/bin/python bench/strategies.py [--prompts 6] [--max-tokens 256] [--repeats 3] [--data-dir DIR]

For every prompt (MT-bench first turns, writing and reasoning categories, from the shared data folder or the
copy shipped under evaluation/data) and every plan, the plan runs in process through `refiners.pipeline`
against one `EmbeddedBackend` (no HTTP, so only the strategy's own cost shows). Plans run interleaved per
prompt and repeat; the table gives medians over prompts of each plan's median wall time, backend calls and
tokens, and the wall-time ratio to plain generation on the same prompt.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path

from app.backends.embedded import EmbeddedBackend
from app.settings import EmbeddedSettings
from refiners.backend import ChatMessage, Sampling
from refiners.base import Run, Strategy, collect
from refiners.config import BudgetConfig, PsrConfig, RefinerConfig
from refiners.ledger import Ledger
from refiners.pipeline import run_plan
from refiners.registry import build_strategies

REPO = Path(__file__).resolve().parents[1]
PSR_PLANS: list[tuple[str, tuple[str, ...], int, str]] = [
    ("none", (), 0, "fenced"),
    *((f"psr N={n}", ("psr",), n, "fenced") for n in (1, 2, 4, 8)),
    *((f"psr N={n} in_context", ("psr",), n, "in_context") for n in (4, 8)),
]
OTHER_PLANS: list[tuple[str, tuple[str, ...], int, str]] = [
    ("self_refine", ("self_refine",), 0, "fenced"),
    ("self_question", ("self_question",), 0, "fenced"),
    ("role_play", ("role_play",), 0, "fenced"),
]


@dataclass
class Sample:
    seconds: list[float] = field(default_factory=list)
    calls: int = 0
    prompt_tokens: int = 0
    cached_tokens: int = 0
    completion_tokens: int = 0
    visible_tokens: int = 0


def load_prompts(data_dir: Path, count: int) -> list[str]:
    path = data_dir / "mt_bench" / "question.jsonl"
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    chosen = [
        r["turns"][0] for r in rows if r.get("category") in ("writing", "roleplay", "stem", "humanities")
    ]
    return chosen[:count]


async def run_once(
    backend: EmbeddedBackend,
    strategies: dict[str, Strategy],
    prompt: str,
    plan: tuple[str, ...],
    rounds: int,
    review: str,
    args: argparse.Namespace,
) -> tuple[float, Ledger, int]:
    psr = PsrConfig.model_validate({"chunk_tokens": args.chunk_tokens, "review": review})
    config = RefinerConfig(psr=psr, budget=BudgetConfig())
    ledger = Ledger(backend=backend, budget=config.budget)
    run = Run(
        messages=(ChatMessage("user", prompt),),
        sampling=Sampling(max_tokens=args.max_tokens, temperature=0.0),
        config=config,
        ledger=ledger,
        rounds=rounds,
    )
    started = time.perf_counter()
    answer = await collect(run_plan(plan, strategies, run))
    return time.perf_counter() - started, ledger, answer.visible_tokens


async def main(args: argparse.Namespace) -> None:
    backend = EmbeddedBackend(EmbeddedSettings())
    await backend.start()
    strategies = build_strategies(RefinerConfig())
    prompts = load_prompts(args.data_dir, args.prompts)
    plans = PSR_PLANS if args.psr_only else PSR_PLANS + OTHER_PLANS
    samples: dict[str, list[Sample]] = {name: [Sample() for _ in prompts] for name, *_ in plans}
    await run_once(backend, strategies, prompts[0], (), 0, "fenced", args)  # warm-up, not counted
    for _ in range(args.repeats):
        for index, prompt in enumerate(prompts):
            for name, plan, rounds, review in plans:
                seconds, ledger, visible = await run_once(
                    backend, strategies, prompt, plan, rounds, review, args
                )
                sample = samples[name][index]
                sample.seconds.append(seconds)
                sample.calls, sample.visible_tokens = ledger.calls, visible
                sample.prompt_tokens = ledger.usage.prompt_tokens
                sample.cached_tokens = ledger.usage.cached_tokens
                sample.completion_tokens = ledger.usage.completion_tokens
    await backend.close()

    plain = [statistics.median(s.seconds) for s in samples["none"]]
    print(
        f"embedded SmolLM2-135M, {len(prompts)} MT-bench prompts, max_tokens={args.max_tokens}, "
        f"K={args.chunk_tokens}, {args.repeats} repeats, cores={os.cpu_count()}"
    )
    print(
        "| plan | wall s (median) | x plain (median) | backend calls | prompt tokens | of them cached "
        "| completion tokens | visible tokens |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for name, *_ in plans:
        rows = samples[name]
        walls = [statistics.median(s.seconds) for s in rows]
        ratios = [w / p for w, p in zip(walls, plain, strict=True)]
        cells = [
            f"{statistics.median(walls):.2f}",
            f"{statistics.median(ratios):.2f}",
            *(
                f"{statistics.median(getattr(s, column) for s in rows):.0f}"
                for column in (
                    "calls",
                    "prompt_tokens",
                    "cached_tokens",
                    "completion_tokens",
                    "visible_tokens",
                )
            ),
        ]
        print(f"| {name} | " + " | ".join(cells) + " |")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--prompts", type=int, default=6)
    parser.add_argument("--max-tokens", type=int, default=256)
    parser.add_argument("--chunk-tokens", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--psr-only", action="store_true", help="Only plain generation and psr.")
    default_data = Path(os.environ.get("TWICE_DATA_DIR", REPO.parent / "shared" / "data"))
    parser.add_argument("--data-dir", type=Path, default=default_data)
    return parser.parse_args()


if __name__ == "__main__":
    asyncio.run(main(parse_args()))
