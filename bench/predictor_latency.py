"""Round-predictor latency: feature extraction plus prediction, per prompt, on real prompts.

Loads the shipped artifact, warms it, then times `predict_rounds` once per prompt over a few hundred prompts
from the shared evaluation data (AdvBench, XSTest, MT-bench, vicuna-bench, self-instruct; a mix of short
questions and long instructions with inputs), for several passes, and prints p50/p99/max in microseconds.
Target: p99 under 0.5 ms (issue #19) on the 2-core development machine.

    .venv/bin/python bench/predictor_latency.py [--data-dir ../shared/data] [--per-source 60] [--passes 5] \
        [--artifact DIR]

`--artifact` times another artifact folder (say one trained with `--family naive_bayes`): every family is
served by the same linear arithmetic, so only the features' cost should differ between artifacts.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path

from predictor.datasets import DEFAULT_DATA_DIR, load_prompts
from predictor.model import RoundPredictor

TARGET_P99_US = 500.0


def _percentile(sorted_values: list[float], share: float) -> float:
    return sorted_values[min(len(sorted_values) - 1, round(share * (len(sorted_values) - 1)))]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--data-dir", type=Path, default=DEFAULT_DATA_DIR)
    parser.add_argument("--per-source", type=int, default=60, help="prompts per source and label")
    parser.add_argument("--passes", type=int, default=5)
    parser.add_argument("--artifact", type=Path, help="artifact folder (default: the shipped one)")
    args = parser.parse_args()

    predictor = RoundPredictor.default() if args.artifact is None else RoundPredictor.load(args.artifact)
    print(f"artifact: {args.artifact or 'shipped'} ({predictor.card.training.get('model', '?')})")
    prompts = [list(prompt.messages) for prompt in load_prompts(args.data_dir, args.per_source)]
    for messages in prompts[:50]:
        predictor.predict_rounds(messages)
    # Wall time includes waits for a core on a busy machine; thread CPU time is the work itself.
    timings_us: list[float] = []
    cpu_us: list[float] = []
    for _ in range(args.passes):
        for messages in prompts:
            start, start_cpu = time.perf_counter(), time.thread_time()
            predictor.predict_rounds(messages)
            cpu_us.append((time.thread_time() - start_cpu) * 1e6)
            timings_us.append((time.perf_counter() - start) * 1e6)
    timings_us.sort()
    cpu_us.sort()
    lengths = sorted(sum(len(str(m["content"])) for m in messages) for messages in prompts)
    p99 = _percentile(timings_us, 0.99)
    print(f"prompts: {len(prompts)} (chars: median {statistics.median(lengths):.0f}, max {lengths[-1]})")
    print(f"calls: {len(timings_us)} ({args.passes} passes)")
    print(
        f"predict_rounds latency: p50 {_percentile(timings_us, 0.50):.0f} us, p99 {p99:.0f} us, "
        f"max {timings_us[-1]:.0f} us"
    )
    print(
        f"thread CPU time:        p50 {_percentile(cpu_us, 0.50):.0f} us, "
        f"p99 {_percentile(cpu_us, 0.99):.0f} us, max {cpu_us[-1]:.0f} us"
    )
    print(f"load average (1 min) while measuring: {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores")
    print(f"target p99 < {TARGET_P99_US:.0f} us (wall): {'met' if p99 < TARGET_P99_US else 'MISSED'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
