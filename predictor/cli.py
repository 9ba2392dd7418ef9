"""`twice predictor label` and `twice predictor train`, added to the `twice` command line by `register`."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import shlex
import sys
import time
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from predictor.card import ModelCard
from predictor.datasets import (
    DEFAULT_DATA_DIR,
    DEFAULT_LABEL_DATASETS,
    LabelledPrompt,
    evaluation_data_hashes,
    load_evaluation_prompts,
    parse_dataset_specs,
    row_part,
)
from predictor.errors import LabelsError, PredictorError
from predictor.gateway_labels import (
    LABEL_WHEN_NO_VERDICT,
    GatewayRun,
    LabelFailure,
    dataset_row,
    label_through_gateway,
)
from predictor.labels import (
    DATASET_DERIVED,
    EVAL_ONLY_SOURCES,
    PSR_OBSERVED,
    LabelledRow,
    append_label,
    read_labels,
    resume_labels,
    sha256_file,
    write_labels,
)
from predictor.telemetry import STREAM, read_telemetry

TELEMETRY_LABELS = "psr-observed (gateway telemetry)"
HELD_OUT_DIR = "held_out"
"""Where `train` writes the prompts it never fitted on, beside the artifact (not shipped: they are in
labels.jsonl)."""


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add `predictor label|train` to the `twice` command line."""
    predictor = commands.add_parser(
        "predictor", help="Label data for and train the reflection-round predictor."
    )
    actions = predictor.add_subparsers(dest="predictor_command", required=True)

    label = actions.add_parser(
        "label", help="Label prompts with the psr round of their first harmful verdict."
    )
    label.add_argument("--base-url", help="Gateway base URL, e.g. http://127.0.0.1:8000.")
    label.add_argument("--model", help="Model name to request.")
    label.add_argument(
        "--model-sha256",
        help="sha256 of the model file the gateway serves, recorded as provenance (`twice models` lists the "
        "catalogue's; the gateway verifies its file against it).",
    )
    label.add_argument("--max-rounds", type=int, default=8, help="psr rounds budget N (default 8).")
    label.add_argument(
        "--out",
        type=Path,
        required=True,
        help="Labels file (JSON lines), appended to: ids already in it are skipped, so rerunning resumes.",
    )
    label.add_argument(
        "--datasets",
        default=DEFAULT_LABEL_DATASETS,
        help=f"Evaluation datasets, NAME[=LIMIT] (or NAME:LIMIT) joined by commas "
        f"(default {DEFAULT_LABEL_DATASETS}).",
    )
    label.add_argument("--data-dir", type=Path, default=DEFAULT_DATA_DIR, help="Evaluation data folder.")
    label.add_argument("--limit", type=int, help="Items per dataset when NAME=LIMIT does not say.")
    label.add_argument("--max-tokens", type=int, default=256, help="max_tokens per request (default 256).")
    label.add_argument("--concurrency", type=int, default=4, help="Requests in flight (default 4).")
    label.add_argument("--api-key", help="Bearer key for the gateway, if it needs one.")
    label.add_argument(
        "--skip-benign",
        action="store_true",
        help="Label benign prompts 0 without sending them (their label does not depend on the run).",
    )
    label.add_argument("--no-progress", action="store_true", help="No progress bar.")
    label.add_argument(
        "--stop-after",
        type=float,
        metavar="SECONDS",
        help="Start no request after this long (those in flight finish); rerun to go on.",
    )
    label.add_argument(
        "--dataset-derived",
        action="store_true",
        help="Skip the gateway: harmful prompts get max rounds, benign 0 (provisional labels).",
    )
    label.set_defaults(handler=_label)

    fit = actions.add_parser("train", help="Fit the predictor and write its artifact and card.")
    source = fit.add_mutually_exclusive_group(required=True)
    source.add_argument("--labels", type=Path, help="Labels file (JSON lines) from `twice predictor label`.")
    source.add_argument("--from-redis", metavar="URL", help=f"Read labels from the Redis stream {STREAM}.")
    fit.add_argument("--stream", default=STREAM, help=f"Stream name with --from-redis (default {STREAM}).")
    fit.add_argument("--out", type=Path, required=True, help="Folder for the artifact and its card.")
    fit.add_argument("--max-rounds", type=int, default=8, help="Largest round count to predict (default 8).")
    fit.add_argument("--seed", type=int, default=0, help="Seed of the split and folds (default 0).")
    fit.add_argument("--test-size", type=float, default=0.25, help="Held-out share (default 0.25).")
    fit.add_argument(
        "--target-under-share",
        type=float,
        default=0.02,
        help="Largest share of harmful prompts allowed fewer rounds than their label (default 0.02).",
    )
    fit.add_argument(
        "--family",
        choices=("logistic", "naive_bayes", "best"),
        default="best",
        help="Model family; best fits both and keeps the one with more out-of-fold benign rounds saved on "
        "the training split (default best; docs/predictor.md, Model families).",
    )
    fit.add_argument(
        "--floor",
        type=int,
        default=0,
        help="Fewest rounds any request gets; calibration and metrics apply it, and the gateway's `auto` "
        "follows the card's unless TWICE_PLAN__AUTO_FLOOR says otherwise (default 0).",
    )
    fit.set_defaults(handler=_train)


LABEL_SETTINGS = (
    "labels",
    "model",
    "model_sha256",
    "max_rounds",
    "max_tokens",
    "benign_observed",
    "label_when_no_verdict",
)
"""What every row of one labels file must share: a rerun with other settings is refused, not mixed in."""


def _label(args: argparse.Namespace) -> int:
    started = datetime.now(UTC)
    try:
        specs = parse_dataset_specs(args.datasets)
        prompts = load_evaluation_prompts(specs, args.data_dir, args.limit)
        settings: dict[str, Any] = {
            "labels": DATASET_DERIVED if args.dataset_derived else PSR_OBSERVED,
            "model": None if args.dataset_derived else args.model,
            "model_sha256": None if args.dataset_derived else args.model_sha256,
            "max_rounds": args.max_rounds,
            "max_tokens": None if args.dataset_derived else args.max_tokens,
            "benign_observed": not (args.dataset_derived or args.skip_benign),
            "label_when_no_verdict": None if args.dataset_derived else LABEL_WHEN_NO_VERDICT,
        }
        hashes = evaluation_data_hashes(specs, args.data_dir)
        if args.dataset_derived:
            rows = [dataset_row(prompt, args.max_rounds) for prompt in prompts]
            write_labels(args.out, rows)
            meta = _label_meta({}, settings, args, hashes)
            _record_run(meta, args.out, started, len(rows), labelled=len(rows), failures=[])
            print(f"wrote {len(rows)} rows to {args.out}")
            return 0
        if not args.base_url or not args.model:
            print("twice predictor label: --base-url and --model are required", file=sys.stderr)
            return 2
        done = {row.id for row in resume_labels(args.out)}
        meta = _label_meta(_read_meta(args.out) if done else {}, settings, args, hashes)
        pending = [prompt for prompt in prompts if prompt.id not in done]
        print(f"{len(done)} ids already in {args.out}; labelling {len(pending)} of {len(prompts)}")
        failures = _label_pending(pending, args, meta, started)
    except PredictorError as error:
        print(f"twice predictor label: {error}", file=sys.stderr)
        return 1
    print(f"{args.out}: {len(failures)} failed (run the same command again to retry them)")
    return 1 if failures else 0


def _label_pending(
    pending: list[LabelledPrompt], args: argparse.Namespace, meta: dict[str, Any], started: datetime
) -> list[LabelFailure]:
    """Send the pending prompts, appending each row as its request completes; the meta file records the
    run when it starts and again when it ends (also when interrupted)."""
    run = GatewayRun(
        base_url=args.base_url,
        model=args.model,
        max_rounds=args.max_rounds,
        max_tokens=args.max_tokens,
        concurrency=args.concurrency,
        api_key=args.api_key,
        observe_benign=not args.skip_benign,
        progress=not args.no_progress,
        stop_at=None if args.stop_after is None else time.monotonic() + args.stop_after,
    )
    failures: list[LabelFailure] = []
    labelled: list[str] = []
    _record_run(meta, args.out, started, len(pending), labelled=None, failures=None)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with args.out.open("a", encoding="utf-8") as out:

        def save(result: LabelledRow | LabelFailure) -> None:
            if isinstance(result, LabelledRow):
                append_label(out, result)
                labelled.append(result.id)
            else:
                failures.append(result)

        try:
            asyncio.run(label_through_gateway(pending, run, on_result=save))
        finally:
            _record_run(meta, args.out, started, len(pending), len(labelled), failures)
    left = len(pending) - len(labelled) - len(failures)
    if left:
        print(f"stopped after {args.stop_after} s: {left} prompts left for the next run")
    return failures


def _label_meta(
    previous: dict[str, Any], settings: dict[str, Any], args: argparse.Namespace, hashes: dict[str, str]
) -> dict[str, Any]:
    """The meta of a labels file: its settings, data hashes and runs, carried over from `previous` (the
    meta of the rows already in it), refused when they were labelled otherwise."""
    if previous.get("labels") == PSR_OBSERVED and "label_when_no_verdict" not in previous:
        # Written before the rule changed: a harmful prompt without a verdict was labelled max_rounds.
        previous = {**previous, "label_when_no_verdict": previous.get("max_rounds")}
    changed = [key for key in LABEL_SETTINGS if key in previous and previous[key] != settings[key]]
    if "model_sha256" in changed and settings["model_sha256"] is None:
        # A rerun that does not repeat the hash keeps the one recorded: it names the same model.
        changed.remove("model_sha256")
        settings = {**settings, "model_sha256": previous["model_sha256"]}
    old_hashes: dict[str, str] = previous.get("data_sha256", {})
    changed += [name for name, digest in hashes.items() if old_hashes.get(name, digest) != digest]
    if changed:
        raise LabelsError(
            f"{args.out} holds labels made with other settings or data ({', '.join(changed)}); "
            "label into another --out"
        )
    return {
        **settings,
        "base_url": None if args.dataset_derived else args.base_url,
        "data_sha256": {**old_hashes, **hashes},
        "runs": list(previous.get("runs", [])),
    }


def _record_run(
    meta: dict[str, Any],
    out: Path,
    started: datetime,
    pending: int,
    labelled: int | None,
    failures: list[LabelFailure] | None,
) -> None:
    """Write the meta file with this run's entry (`ended_at` null while it runs) and the file's counts."""
    ended = None if failures is None else datetime.now(UTC)
    run = {
        "command": shlex.join(["twice", *sys.argv[1:]]),
        "started_at": started.isoformat(),  # to the microsecond: it identifies the run
        "ended_at": None if ended is None else ended.isoformat(timespec="seconds"),
        "elapsed_s": None if ended is None else round((ended - started).total_seconds(), 1),
        "pending": pending,
        "labelled": labelled,
        "failed": None if failures is None else len(failures),
    }
    runs = [entry for entry in meta["runs"] if entry.get("started_at") != run["started_at"]]
    meta["runs"] = [*runs, run]
    rows = read_labels(out) if out.is_file() and out.stat().st_size else []
    meta.update(_label_counts(rows, meta["max_rounds"]))
    # The ids that failed in the latest run; they are not in the file, so the next run retries them.
    meta["failures"] = [{"id": f.id, "error": f.error} for f in failures or []]
    meta["command"] = run["command"]
    meta["created_at"] = meta["runs"][0]["started_at"]
    meta["elapsed_s_total"] = round(sum(entry.get("elapsed_s") or 0 for entry in meta["runs"]), 1)
    _meta_path(out).write_text(json.dumps(meta, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def _label_counts(rows: list[LabelledRow], max_rounds: int) -> dict[str, Any]:
    return {
        "rows": len(rows),
        "sources": dict(
            sorted(Counter(f"{row.source}:{'harmful' if row.harmful else 'benign'}" for row in rows).items())
        ),
        "parts": dict(sorted(Counter(row.part or "unknown" for row in rows).items())),
        # Issue #19: labels strictly between 0 and the maximum are what makes a round budget learnable.
        "labels_neither_0_nor_max": sum(0 < row.label_rounds < max_rounds for row in rows),
    }


def _read_meta(out: Path) -> dict[str, Any]:
    path = _meta_path(out)
    if not path.is_file():
        return {}
    meta: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    return meta


def _train(args: argparse.Namespace) -> int:
    # scikit-learn and scipy only when training: `twice serve` registers this command and must not hold them.
    from predictor.train import TrainOptions, train

    if not 0 <= args.floor <= args.max_rounds:
        print(f"twice predictor train: --floor {args.floor} is not in [0, --max-rounds]", file=sys.stderr)
        return 2
    try:
        rows, labels_path, kind = _training_rows(args)
        options = TrainOptions(
            max_rounds=args.max_rounds,
            seed=args.seed,
            test_size=args.test_size,
            target_under_share=args.target_under_share,
            labels=kind,
            family=args.family,
            floor=args.floor,
        )
        predictor = train(rows, options)
        predictor.card = _with_provenance(predictor.card, labels_path, rows)
        card = predictor.save(args.out)
        never_fitted = {*card.training["held_out_ids"], *card.training.get("heldout_part_ids", ())}
        written = write_held_out(rows, never_fitted, args.out)
    except PredictorError as error:
        print(f"twice predictor train: {error}", file=sys.stderr)
        return 1
    _print_metrics(card.metrics, card.tail_risk, args.out)
    _print_families(card.metrics.get("families", {}), card.training)
    for path in written:
        print(f"wrote {path} (never trained on: `twice eval --dataset {path}`)")
    return 0


def write_held_out(rows: list[LabelledRow], held_out: set[str], out: Path) -> list[Path]:
    """The prompts no model was fitted on, with text, as `twice eval` datasets in `out/held_out/`: one file
    per source and label (`xstest_benign.jsonl`), so the eval's tables break down the same way. They are the
    test side of the dev split, every row of the evaluation's held-out part, and every row of an
    evaluation-only source; each keeps its part as `split`, the field `twice eval --split` reads, so the eval
    can tell the two parts apart."""
    groups: dict[str, list[LabelledRow]] = {}
    for row in rows:
        if row.messages is not None and (row.id in held_out or row.source in EVAL_ONLY_SOURCES):
            groups.setdefault(f"{row.source}_{'harmful' if row.harmful else 'benign'}", []).append(row)
    folder = out / HELD_OUT_DIR
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for name, chosen in sorted(groups.items()):
        lines = [
            json.dumps(
                {
                    "id": row.id,
                    "messages": list(row.messages or ()),
                    "label": "harmful" if row.harmful else "benign",
                    "source": row.source,
                    "label_rounds": row.label_rounds,
                    "split": row_part(row),
                },
                ensure_ascii=False,
            )
            for row in chosen
        ]
        path = folder / f"{name}.jsonl"
        path.write_text("\n".join(lines) + "\n", encoding="utf-8")
        written.append(path)
    return written


def _training_rows(args: argparse.Namespace) -> tuple[list[LabelledRow], Path, str]:
    if args.labels is not None:
        meta_path = _meta_path(args.labels)
        kind = PSR_OBSERVED
        if meta_path.is_file():
            kind = str(json.loads(meta_path.read_text(encoding="utf-8")).get("labels", kind))
        return read_labels(args.labels), args.labels, kind
    read = read_telemetry(args.from_redis, args.max_rounds, stream=args.stream)
    for reason, count in sorted(read.skipped.items()):
        print(f"skipped {count} telemetry entries: {reason}")
    # The rows read are kept beside the artifact, so the card's data hash names something that exists.
    labels_path = args.out / "labels.jsonl"
    write_labels(labels_path, read.rows)
    return read.rows, labels_path, TELEMETRY_LABELS


def _with_provenance(card: ModelCard, labels_path: Path, rows: list[LabelledRow]) -> ModelCard:
    sources = Counter(f"{row.source}:{'harmful' if row.harmful else 'benign'}" for row in rows)
    training_data: dict[str, Any] = {
        "file": labels_path.name,
        "sha256": sha256_file(labels_path),
        "rows": len(rows),
        "sources": dict(sorted(sources.items())),
    }
    meta_path = _meta_path(labels_path)
    if meta_path.is_file():
        training_data["provenance"] = json.loads(meta_path.read_text(encoding="utf-8"))
    training = {**card.training, "command": shlex.join(["twice", *sys.argv[1:]])}
    return dataclasses.replace(card, training_data=training_data, training=training)


def _meta_path(labels_path: Path) -> Path:
    return labels_path.with_name(labels_path.stem + ".meta.json")


def _print_metrics(metrics: Any, tail_risk: float, out: Path) -> None:
    print(f"tail_risk (calibrated on the training split): {tail_risk}")
    for split in ("held_out", "heldout_part", "eval_only_sources", "train"):
        if split not in metrics:
            continue
        values = metrics[split]
        print(
            f"{split:>18}: benign rounds saved {values.get('benign_rounds_saved_pct')}% | "
            f"harmful under-provisioned {values.get('harmful_under_share')} | MAE {values.get('mae')} | "
            f"rows {values['rows']} (benign {values['benign']}, harmful {values['harmful']})"
        )
        for name, source in values["by_source"].items():
            print(
                f"{'':>20}{name}: mean rounds "
                f"{source.get('benign_mean_rounds', source.get('harmful_mean_rounds'))} "
                f"saved {source.get('benign_rounds_saved_pct', '-')}% "
                f"under {source.get('harmful_under_share', '-')}"
            )
    if "frontier" in metrics:
        print("held-out trade-off (TWICE_PLAN__PREDICTOR_TAIL_RISK chooses another point):")
        for point in metrics["frontier"]:
            print(
                f"{'':>20}tail_risk {point['tail_risk']:<6}: benign rounds saved "
                f"{point['benign_rounds_saved_pct']}% | "
                f"harmful under-provisioned {point['harmful_under_share']}"
            )
    print(f"wrote the artifact and its card to {out}")


def _print_families(families: Any, training: Any) -> None:
    print(f"family: {training.get('family')} ({training.get('family_rule')})")
    for name, family in families.items():
        held_out = family["held_out"]
        print(
            f"{name:>18}: tail_risk {family['tail_risk']} | out-of-fold benign rounds saved "
            f"{family['oof_benign_rounds_saved_pct']}%, harmful under-provisioned "
            f"{family['oof_harmful_under_share']} | held out (not used to choose): saved "
            f"{held_out.get('benign_rounds_saved_pct')}%, under {held_out.get('harmful_under_share')}"
        )
