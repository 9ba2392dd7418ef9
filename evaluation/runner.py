"""`twice eval` as a function: items × plans through an endpoint, judged, recorded, summarised, plotted."""

from __future__ import annotations

import asyncio
import json
import logging
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Final

from openai import AsyncOpenAI
from tqdm import tqdm

from evaluation.client import Completion, RequestSettings, complete, describe, retrying
from evaluation.datasets import Item, in_split, sample
from evaluation.judges import MatchMode, RefusalJudge, gsm8k_match
from evaluation.llm_judge import LlmJudge
from evaluation.plans import Plan, PlanError
from evaluation.plots import write_plots
from evaluation.records import RECORDS_FILE, Record, RecordWriter, done_keys, latest, load_records
from evaluation.registry import DatasetSpec, load
from evaluation.splits import Split
from evaluation.summary import write_summary

PLANS_FILE: Final = "plans.json"
logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class JudgeEndpoint:
    base_url: str
    model: str
    api_key: str = "unused"


@dataclass(frozen=True)
class EvalConfig:
    base_url: str
    model: str
    plans: tuple[Plan, ...]
    datasets: tuple[DatasetSpec, ...]
    data_dir: Path
    out_dir: Path
    api_key: str = "unused"
    limit: int | None = None
    split: Split | None = None
    """Only the items of this part (evaluation/splits.py); None: every item."""
    seed: int = 0
    max_tokens: int = 256
    temperature: float = 0.0
    concurrency: int = 4
    retries: int = 3
    timeout_s: float = 300.0
    refusal_mode: MatchMode = "start"
    judge: JudgeEndpoint | None = None
    progress: bool = True
    keep_texts: bool = True
    """False: records keep ids, labels, verdicts, rounds and usage, but neither prompt nor answer text (for
    records committed beside a summary: harmful completions are not published)."""


@dataclass
class RunReport:
    scheduled: int = 0
    skipped: int = 0
    errors: int = 0
    summary: dict[str, Any] = field(default_factory=dict)
    plots: list[Path] = field(default_factory=list)


def select_items(config: EvalConfig) -> list[Item]:
    items: list[Item] = []
    for spec in config.datasets:
        limit = spec.limit if spec.limit is not None else config.limit
        items += sample(in_split(load(spec, config.data_dir), config.split), limit, config.seed)
    return items


def merge_plans(out_dir: Path, plans: tuple[Plan, ...]) -> list[Plan]:
    """Plans of earlier runs in this folder plus these, in the order they first ran there (a rerun with a
    new plan keeps the summary's rows in place); one name with other headers would mix results."""
    path = out_dir / PLANS_FILE
    stored: dict[str, dict[str, str]] = json.loads(path.read_text("utf-8")) if path.exists() else {}
    for plan in plans:
        if plan.name in stored and stored[plan.name] != plan.header_dict():
            raise PlanError(
                f"plan {plan.name!r} ran in {out_dir} with headers {stored[plan.name]}; "
                "use another name or another --out"
            )
        stored[plan.name] = plan.header_dict()
    out_dir.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(stored, indent=2) + "\n", "utf-8")
    given = {plan.name: plan for plan in plans}
    return [given.get(name) or Plan(name, tuple(headers.items())) for name, headers in stored.items()]


class Evaluator:
    """Sends, judges and records one (item, plan) at a time, `concurrency` at once."""

    def __init__(self, config: EvalConfig, client: AsyncOpenAI, judge_client: AsyncOpenAI | None) -> None:
        self._config = config
        self._client = client
        self._refusal = RefusalJudge(mode=config.refusal_mode)
        self._llm = LlmJudge(judge_client, config.judge.model) if judge_client and config.judge else None
        self._settings = RequestSettings(
            model=config.model,
            max_tokens=config.max_tokens,
            temperature=config.temperature,
            seed=config.seed,
            retries=config.retries,
            timeout_s=config.timeout_s,
        )

    async def _llm_verdict(self, item: Item, text: str) -> dict[str, Any] | None:
        if self._llm is None:
            return None
        try:
            async for attempt in retrying(self._config.retries):
                with attempt:
                    judgement = await self._llm.judge(item.prompt_text, text)
        except Exception as error:  # a judge failure must not lose the record it judges
            return {"verdict": None, "raw": None, "error": describe(error)}
        return {"verdict": judgement.verdict, "raw": judgement.raw}

    async def evaluate(self, item: Item, plan: Plan) -> Record:
        done: Completion = await complete(self._client, item, plan, self._settings)
        record = Record(
            plan=plan.name,
            dataset=item.dataset,
            item_id=item.item_id,
            label=item.label,
            prompt=item.prompt_text,
            attempts=done.attempts,
            error=done.error,
            model=self._config.model,
            seed=self._config.seed,
        )
        if done.error is not None or done.text is None:
            return record
        verdict = self._refusal.judge(done.text, done.finish_reason)
        match = gsm8k_match(done.text, item.reference) if item.reference is not None else None
        if not self._config.keep_texts:
            record = replace(record, prompt="")
        return replace(
            record,
            response=done.text if self._config.keep_texts else None,
            finish_reason=done.finish_reason,
            refusal={"refused": verdict.refused, "phrase": verdict.phrase, "mode": self._refusal.mode},
            llm_judge=await self._llm_verdict(item, done.text),
            gsm8k=asdict(match) if match else None,
            usage=done.usage,
            twice=done.twice,
            checks=done.checks,
            response_headers=done.headers or {},
            latency_s=done.latency_s,
        )


async def _drain(
    evaluator: Evaluator, work: list[tuple[Item, Plan]], writer: RecordWriter, config: EvalConfig
) -> int:
    queue: asyncio.Queue[tuple[Item, Plan]] = asyncio.Queue()
    for pair in work:
        queue.put_nowait(pair)
    errors = 0
    with tqdm(total=len(work), desc="twice eval", unit="req", disable=not config.progress) as bar:

        async def worker() -> None:
            nonlocal errors
            while not queue.empty():
                item, plan = queue.get_nowait()
                record = await evaluator.evaluate(item, plan)
                writer.write(record)
                errors += not record.ok
                bar.update()

        await asyncio.gather(*(worker() for _ in range(max(1, config.concurrency))))
    return errors


async def run_eval(config: EvalConfig) -> RunReport:
    plans = merge_plans(config.out_dir, config.plans)
    items = select_items(config)
    records_path = config.out_dir / RECORDS_FILE
    done = done_keys(load_records(records_path))
    # Item-major order: an interrupted run leaves every plan with about the same items done.
    pending = [(item, plan) for item in items for plan in config.plans]
    work = [(item, plan) for item, plan in pending if (plan.name, item.dataset, item.item_id) not in done]
    report = RunReport(scheduled=len(work), skipped=len(pending) - len(work))
    writer = RecordWriter(records_path)
    judge = config.judge
    try:
        async with AsyncOpenAI(base_url=config.base_url, api_key=config.api_key, max_retries=0) as client:
            judge_client = (
                AsyncOpenAI(base_url=judge.base_url, api_key=judge.api_key, max_retries=0) if judge else None
            )
            try:
                evaluator = Evaluator(config, client, judge_client)
                report.errors = await _drain(evaluator, work, writer, config)
            finally:
                if judge_client is not None:
                    await judge_client.close()
    finally:
        writer.close()
    records = latest(load_records(records_path))
    report.summary = write_summary(config.out_dir, records, plans)
    report.plots = write_plots(report.summary, config.out_dir)
    return report
