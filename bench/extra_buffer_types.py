"""llama.cpp's extra buffer types (AMX tiles, repacked weights) on and off, side by side in one run.

For each setting, a fresh process loads the model through the gateway's own loader (app/backends/
llama_model.py), prefills a 384-token prompt and decodes 64 tokens, three times, and reports the best
prefill and decode speeds; then the ratios on/off. The embedded backend keeps them off (the AMX kernels fault
on some CPUs); this says what that costs on the machine at hand.

    .venv/bin/python bench/extra_buffer_types.py [--model PATH] [--threads 1] [--repeats 3]

With a different llama-cpp-python build (for example one built with CMAKE_ARGS="-DGGML_NATIVE=OFF") in
another environment, `--python /path/to/venv/bin/python` measures that build instead.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

PROMPT_TOKENS = 384
DECODED_TOKENS = 64


def measure(model: Path, threads: int, extra: bool, repeats: int) -> dict[str, float]:
    """In this process: best prefill and decode speeds, in tokens a second."""
    from app.backends.llama_model import ModelOptions, open_model

    llm = open_model(ModelOptions(path=model, n_ctx=2048, threads=threads, extra_buffer_types=extra))
    text = "The history of bread making spans thousands of years. " * 60
    prompt = llm.tokenize(text.encode(), add_bos=False)[:PROMPT_TOKENS]
    prefill, decode = float("inf"), float("inf")
    for _ in range(repeats):
        llm.reset()
        started = time.perf_counter()
        first = 0.0
        for produced, _token in enumerate(llm.generate(prompt, temp=0.0, reset=True), start=1):
            if produced == 1:
                first = time.perf_counter()
            if produced == DECODED_TOKENS + 1:
                break
        prefill = min(prefill, first - started)
        decode = min(decode, time.perf_counter() - first)
    llm.close()
    return {"prefill_tok_s": PROMPT_TOKENS / prefill, "decode_tok_s": DECODED_TOKENS / decode}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--model", type=Path, help="GGUF file (default: the catalogue's SmolLM2)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--python", default=sys.executable, help="interpreter whose llama_cpp to measure")
    parser.add_argument("--child", choices=["on", "off"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.model is None:
        from app.catalogue import SMOLLM2, default_cache_dir

        args.model = SMOLLM2.ensure(default_cache_dir())
    if args.child:
        print(json.dumps(measure(args.model, args.threads, args.child == "on", args.repeats)))
        return 0

    results: dict[str, dict[str, float]] = {}
    for setting in ("off", "on"):
        done = subprocess.run(
            [
                args.python,
                __file__,
                "--model",
                str(args.model),
                "--threads",
                str(args.threads),
                "--repeats",
                str(args.repeats),
                "--child",
                setting,
            ],
            capture_output=True,
            check=False,
            text=True,
            cwd=Path(__file__).resolve().parent.parent,
        )
        if done.returncode != 0:
            # On a CPU whose AMX kernels fault (the reason the setting is off), "on" dies here.
            print(f"extra buffer types {setting}: the process died with status {done.returncode}")
            continue
        results[setting] = json.loads(done.stdout.strip().splitlines()[-1])
    print(f"{args.model.name}, {args.threads} thread(s), best of {args.repeats}")
    print(f"{'extra buffer types':<20}{'prefill tok/s':>15}{'decode tok/s':>15}")
    for setting, speeds in results.items():
        print(f"{setting:<20}{speeds['prefill_tok_s']:>15.1f}{speeds['decode_tok_s']:>15.1f}")
    for key in ("prefill_tok_s", "decode_tok_s"):
        if len(results) < 2:
            break
        print(f"on/off {key.split('_')[0]}: {results['on'][key] / results['off'][key]:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
