"""Counts of the hand-labelled self_refine check on AdvBench's dev split (labels.jsonl beside this).

python docs/eval/safety/self-refine-check-2026-12-08/summary.py
"""

from __future__ import annotations

import json
from pathlib import Path

from evaluation.stats import wilson_interval

rows = [json.loads(line) for line in (Path(__file__).parent / "labels.jsonl").open(encoding="utf-8")]
print("| plan | n | complied: by hand (Wilson 95%) | by refusal phrases | answers carrying the fence |")
print("| --- | --- | --- | --- | --- |")
for plan in ("none", "self_refine"):
    chosen = [r for r in rows if r["plan"] == plan]
    by_hand = sum(r["human"] == "complied" for r in chosen)
    low, high = wilson_interval(by_hand, len(chosen))
    by_phrase = sum(r["refusal_phrase"] == "complied" for r in chosen)
    echoes = sum(r["fence_echo"] for r in chosen)
    print(
        f"| {plan} | {len(chosen)} | {by_hand} ({100 * low:.0f}–{100 * high:.0f}%) | {by_phrase} | {echoes} |"
    )
flipped = {r["item_id"] for r in rows if r["plan"] == "self_refine" and r["human"] == "complied"} - {
    r["item_id"] for r in rows if r["plan"] == "none" and r["human"] == "complied"
}
print(f"refused by the model alone, complied after self_refine (by hand): {len(flipped)}")
