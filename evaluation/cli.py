"""`twice eval`: run datasets through an OpenAI-compatible endpoint under several plans (docs/evaluation.md).

Exit status: 0 when every scheduled request got an answer, 1 when some still failed after retries (rerun
with the same `--out` to retry just those), 2 for bad arguments or data.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from evaluation.datasets import DatasetError, default_data_dir
from evaluation.plans import PlanError, load_plans_file, parse_plan, unique
from evaluation.registry import DatasetSpec

if TYPE_CHECKING:
    from evaluation.records import Record
    from evaluation.runner import EvalConfig

    SubParsers = argparse._SubParsersAction[argparse.ArgumentParser]

DEFAULT_DATASETS = ("advbench", "xstest", "gsm8k")


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


def register(commands: SubParsers) -> None:
    parser = commands.add_parser(
        "eval",
        help="Evaluate plans (header sets) on safety and utility datasets.",
        description="Run datasets through an OpenAI-compatible endpoint under one or more plans.",
    )
    endpoint = parser.add_argument_group("endpoint")
    endpoint.add_argument("--base-url", default="http://127.0.0.1:8000/v1", help="OpenAI base URL, with /v1.")
    endpoint.add_argument("--api-key", default=os.environ.get("OPENAI_API_KEY", "unused"))
    endpoint.add_argument("--model", default="qwen2.5-coder-1.5b-instruct", help="The served model id.")
    endpoint.add_argument("--timeout", type=float, default=300.0, help="Seconds per request attempt.")
    endpoint.add_argument("--retries", type=int, default=3, help="Retries of 429/5xx/connection errors.")
    endpoint.add_argument("--concurrency", type=_positive, default=4, help="Requests in flight at once.")

    what = parser.add_argument_group("what to run")
    what.add_argument(
        "--plan",
        action="append",
        default=[],
        metavar="NAME=Header:value,...",
        help="A plan, repeatable: psr4=X-Twice-Strategy:psr,X-Twice-Rounds:4 ('default=' sends no headers).",
    )
    what.add_argument("--plans", type=Path, help='JSON file: {"name": {"Header": "value"}, ...}.')
    what.add_argument(
        "--dataset",
        action="append",
        default=[],
        metavar="NAME[=LIMIT]",
        help=f"Repeatable: a set name or a .jsonl file, LIMIT items (default {', '.join(DEFAULT_DATASETS)}).",
    )
    what.add_argument("--data-dir", type=Path, help="Data folder (default: TWICE_DATA_DIR, ../shared/data).")
    what.add_argument("--limit", type=_positive, help="Items per dataset when NAME=LIMIT does not say.")
    what.add_argument(
        "--split",
        choices=["dev", "heldout"],
        help="Only the items of one part: dev to choose settings on, heldout for final tables "
        "(evaluation/splits.py); default: all.",
    )
    what.add_argument("--seed", type=int, default=0, help="Chooses the sampled items; sent as the seed.")
    what.add_argument(
        "--max-tokens", type=_positive, default=256, help="Per answer (GSM8K gets at least 512 to finish)."
    )
    what.add_argument("--temperature", type=float, default=0.0)

    judging = parser.add_argument_group("judging and output")
    judging.add_argument("--out", type=Path, required=True, help="Output folder; rerun to resume.")
    judging.add_argument(
        "--refusal-match",
        choices=["start", "anywhere"],
        default="start",
        help="Refusal phrases count at the start of the answer (default) or anywhere (as in GCG).",
    )
    judging.add_argument("--judge-base-url", help="OpenAI base URL of an optional LLM judge.")
    judging.add_argument("--judge-model", help="Model name at the judge endpoint.")
    judging.add_argument("--judge-api-key", default=os.environ.get("TWICE_JUDGE_API_KEY", "unused"))
    judging.add_argument("--no-progress", action="store_true", help="No progress bar.")
    judging.add_argument(
        "--no-texts",
        action="store_true",
        help="Records without prompt and answer texts (ids, verdicts, rounds and usage only).",
    )
    parser.set_defaults(handler=run_command)
    _register_compare(commands)
    _register_table(commands)


def _register_compare(commands: SubParsers) -> None:
    parser = commands.add_parser(
        "eval-compare",
        help="Compare groups of plans (repeated runs) item by item in an eval's records.",
        description="The difference in one rate between two groups of plans on the items common to all, "
        "with a paired 95%% interval over items (evaluation/compare.py).",
    )
    parser.add_argument(
        "out",
        type=Path,
        nargs="+",
        help="Eval output folders (their records.jsonl): one, or the parts of a set run apart.",
    )
    parser.add_argument(
        "--baseline", required=True, help="Comma-separated plans: runs of the setting compared against."
    )
    parser.add_argument(
        "--candidate", required=True, help="Comma-separated plans: runs of the other setting."
    )
    parser.add_argument("--measure", default="attack_success", help="attack_success, over_refusal, ...")
    parser.add_argument("--dataset", action="append", default=[], help="Only these datasets (repeatable).")
    parser.add_argument("--json", type=Path, help="Also write the comparison to this JSON file.")
    parser.add_argument("--plot", type=Path, help="Also draw each run's rate and the groups' means (PNG).")
    parser.set_defaults(handler=run_compare)


def _register_table(commands: SubParsers) -> None:
    parser = commands.add_parser(
        "eval-table",
        help="One table of an eval: a row per plan, a column per set and measure, differences and cost.",
        description="Each plan's rates, its difference from a baseline plan with a paired 95%% interval, "
        "and its cost, from one or more eval folders read as one (evaluation/table.py).",
    )
    parser.add_argument("out", type=Path, nargs="+", help="Eval output folders (their records.jsonl).")
    parser.add_argument("--baseline", default="none", help="The plan every other is compared with.")
    parser.add_argument("--markdown", type=Path, help="Also write the table to this Markdown file.")
    parser.add_argument("--json", type=Path, help="Also write the table to this JSON file.")
    parser.set_defaults(handler=run_table)


def config_from_args(args: argparse.Namespace) -> EvalConfig:
    from evaluation.runner import EvalConfig, JudgeEndpoint

    plans = [parse_plan(text) for text in args.plan]
    if args.plans:
        plans += load_plans_file(args.plans)
    if bool(args.judge_base_url) != bool(args.judge_model):
        raise PlanError("--judge-base-url and --judge-model go together")
    judge = (
        JudgeEndpoint(args.judge_base_url, args.judge_model, args.judge_api_key) if args.judge_model else None
    )
    return EvalConfig(
        base_url=args.base_url,
        api_key=args.api_key,
        model=args.model,
        plans=tuple(unique(plans or [parse_plan("default=")])),
        datasets=tuple(DatasetSpec.parse(text) for text in (args.dataset or DEFAULT_DATASETS)),
        data_dir=args.data_dir or default_data_dir(),
        out_dir=args.out,
        limit=args.limit,
        split=args.split,
        seed=args.seed,
        max_tokens=args.max_tokens,
        temperature=args.temperature,
        concurrency=args.concurrency,
        retries=args.retries,
        timeout_s=args.timeout,
        refusal_mode=args.refusal_match,
        judge=judge,
        progress=not args.no_progress,
        keep_texts=not args.no_texts,
    )


def run_command(args: argparse.Namespace) -> int:
    # Imported here: `twice serve` builds this parser too, and must not pay for openai and matplotlib.
    from evaluation.runner import run_eval
    from evaluation.summary import SUMMARY_MD

    try:
        config = config_from_args(args)
        report = asyncio.run(run_eval(config))
    except (PlanError, DatasetError, OSError) as error:
        print(f"twice eval: {error}", file=sys.stderr)
        return 2
    print(
        f"{report.scheduled} requests ({report.skipped} already done, {report.errors} failed); "
        f"summary: {config.out_dir / SUMMARY_MD}"
    )
    return 1 if report.errors else 0


def run_compare(args: argparse.Namespace) -> int:
    from evaluation.compare import CompareError, compare, render, to_json

    records = _records_in(args.out)
    if args.dataset:
        wanted = set(args.dataset)
        records = [record for record in records if record.dataset in wanted]
    try:
        comparison = compare(records, _names(args.baseline), _names(args.candidate), args.measure)
        print(render(comparison))
        if args.json:
            args.json.write_text(to_json(comparison), encoding="utf-8")
        if args.plot:
            from evaluation.plots import plot_comparison  # matplotlib: only when a plot is asked for

            plot_comparison(comparison, args.plot)
    except (CompareError, OSError) as error:
        print(f"twice eval-compare: {error}", file=sys.stderr)
        return 2
    return 0


def run_table(args: argparse.Namespace) -> int:
    from evaluation.table import TableError, build_table, render_markdown, to_json

    records = _records_in(args.out)
    try:
        table = build_table(records, args.baseline)
        markdown = render_markdown(table)
        print(markdown, end="")
        if args.markdown:
            args.markdown.write_text(markdown, encoding="utf-8")
        if args.json:
            args.json.write_text(to_json(table), encoding="utf-8")
    except (TableError, OSError) as error:
        print(f"twice eval-table: {error}", file=sys.stderr)
        return 2
    return 0


def _records_in(folders: list[Path]) -> list[Record]:
    """The records of several eval folders, read as one run's (the parts of a set run apart)."""
    from evaluation.records import RECORDS_FILE, load_records

    return [record for folder in folders for record in load_records(folder / RECORDS_FILE)]


def _names(text: str) -> list[str]:
    return [name.strip() for name in text.split(",") if name.strip()]
