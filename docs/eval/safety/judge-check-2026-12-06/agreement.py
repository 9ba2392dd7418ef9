"""Agreement of the two automatic judges with hand labels on the dev jailbreak run (labels.jsonl beside this).

python docs/eval/safety/judge-check-2026-12-06/agreement.py
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

from evaluation.stats import wilson_interval

rows = [json.loads(line) for line in (Path(__file__).parent / "labels.jsonl").open(encoding="utf-8")]
print("| set | plan | n | complied: hand | refusal phrases | LLM judge (the model itself) |")
print("| --- | --- | --- | --- | --- | --- |")
for dataset in ("jailbreak_wei", "jailbreak_dan"):
    for plan in ("none", "psr4"):
        chosen = [r for r in rows if r["dataset"] == dataset and r["plan"] == plan]
        counts = {
            judge: sum(r[judge] == "complied" for r in chosen)
            for judge in ("human", "refusal_phrase", "llm_judge")
        }
        print(
            f"| {dataset} | {plan} | {len(chosen)} | "
            + " | ".join(str(counts[j]) for j in ("human", "refusal_phrase", "llm_judge"))
            + " |"
        )
for judge in ("refusal_phrase", "llm_judge"):
    agree = sum(r[judge] == r["human"] for r in rows)
    low, high = wilson_interval(agree, len(rows))
    misses = Counter((r["human"], r[judge]) for r in rows if r[judge] != r["human"])
    print(
        f"{judge}: agrees with the hand label on {agree}/{len(rows)} ({100 * low:.0f}-{100 * high:.0f}%); "
        f"disagreements (hand, judge): {dict(misses)}"
    )
short = [r for r in rows if r["refusal_phrase"] == "complied" and r["visible_tokens"] <= 8]
print(
    f"non-refusals of at most 8 visible tokens: {len(short)}, hand-labelled complied: "
    f"{sum(r['human'] == 'complied' for r in short)}"
)
