#!/usr/bin/env bash
# The table of issue #18 §5: every plan on the held-out part of each set, on the embedded
# Qwen2.5-Coder-1.5B-Instruct, through a real gateway on 2 threads. One stage per call, each a few hours at
# most on 2 cores; `twice eval` resumes from records.jsonl, so a stage cut short is run again to finish.
#
#   docs/eval/table/run.sh core         # none, psr4
#   docs/eval/table/run.sh rounds       # psr1, psr2, psr8
#   docs/eval/table/run.sh others       # auto, self_refine, psr_self_question
#   docs/eval/table/run.sh answer_only  # psr4 with the answer-only review (a gateway setting)
#   docs/eval/table/run.sh others auto  # a stage's plans named after it, alone
set -euo pipefail
cd "$(dirname "$0")/../../.."

stage=${1:?"usage: $0 core|rounds|others|answer_only [PLAN...]"}
shift
here=docs/eval/table
port=${TWICE_TABLE_PORT:-8100}
twice=.venv/bin/twice
gateway_env=(
  TWICE_EMBEDDED__N_THREADS=2 TWICE_REDIS__ENABLED=false
  TWICE_PLAN__CLIENT_MAY_LOWER_ROUNDS=true TWICE_PLAN__AUTO_EXPLORE_SHARE=0
  TWICE_PLAN__PREDICTOR_PATH=predictor/artifacts/qwen
)
plans=()
case $stage in
  core) plans=(none=X-Twice-Strategy:none psr4=X-Twice-Strategy:psr,X-Twice-Rounds:4) ;;
  rounds) for n in 1 2 8; do plans+=("psr$n=X-Twice-Strategy:psr,X-Twice-Rounds:$n"); done ;;
  others)
    plans=(auto=X-Twice-Strategy:psr,X-Twice-Rounds:auto self_refine=X-Twice-Strategy:self_refine
      psr_self_question=X-Twice-Strategy:psr,self_question,X-Twice-Rounds:4) ;;
  answer_only)
    gateway_env+=(TWICE_PSR__REVIEW=answer_only)
    plans=(psr4_answer_only=X-Twice-Strategy:psr,X-Twice-Rounds:4) ;;
  *) echo "unknown stage $stage" >&2; exit 2 ;;
esac
if (($#)); then
  chosen=()
  for name in "$@"; do
    match=$(printf '%s\n' "${plans[@]}" | grep "^$name=" || true)
    [[ -n $match ]] || { echo "stage $stage has no plan $name" >&2; exit 2; }
    chosen+=("$match")
  done
  plans=("${chosen[@]}")
fi

if curl -sf "http://127.0.0.1:$port/health" >/dev/null; then
  echo "something already answers on port $port (TWICE_TABLE_PORT picks another)" >&2
  exit 1
fi
log=${TMPDIR:-/tmp}/twice-table-$stage.log
env "${gateway_env[@]}" "$twice" serve --port "$port" >"$log" 2>&1 &
gateway=$!
trap 'kill $gateway 2>/dev/null; wait $gateway 2>/dev/null || true' EXIT
until curl -sf "http://127.0.0.1:$port/health" >/dev/null; do
  kill -0 $gateway 2>/dev/null || { cat "$log" >&2; exit 1; }
  sleep 2
done

plan_args=()
for plan in "${plans[@]}"; do plan_args+=(--plan "$plan"); done
common=(--base-url "http://127.0.0.1:$port/v1" --max-tokens 96 --concurrency 1 --no-texts --no-progress)

# The held-out items of every set. XSTest's other 199 safe prompts (the dev part, on which tau and the review
# prompt were chosen) go in a folder of their own, so over-refusal is measured on all 250 too:
# `twice eval-table heldout xstest-safe-dev`. One call per set, the held-out sets first, in order of what the
# table's bars need most, GSM8K the slowest of them (its answers get 512 tokens whatever --max-tokens says);
# XSTest's dev prompts last, as they only widen the over-refusal row to all 250. Each set draws its items on
# its own, so the order does not change which items run.
runs=(
  "heldout jailbreak_wei=50 heldout" "heldout jailbreak_dan=50 heldout" "heldout xstest_safe heldout"
  "heldout advbench=100 heldout" "heldout gsm8k=50 heldout" "dev xstest_safe xstest-safe-dev"
)
for run in "${runs[@]}"; do
  read -r split dataset out <<<"$run"
  "$twice" eval "${common[@]}" "${plan_args[@]}" --split "$split" --dataset "$dataset" --out "$here/$out"
done
