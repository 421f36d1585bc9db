#!/usr/bin/env bash
# The scoring benchmark's realistic mix, both sides on this machine one after the other, with the
# machine recorded (docs/benchmarks.md): sweetspot's reward bench (crates/sweetspot-model/benches/
# reward.rs: `RewardNet::score_all`, as the score stage scores) against transformers'
# `LlamaForSequenceClassification` batching 16 in file order (scripts/bench_reward_transformers.py,
# torch threads = cores), the same SmolLM2-135M-sized model on both sides.
# Prints the CPU model, its vector/matrix flags and cores, then one Markdown row per side: each
# round's tokens/s, CPU utilization ((user + sys) / wall / cores, the whole process: model load
# included) and the ratio of the best rounds.
#
#   scripts/bench_reward.sh [SAMPLES]
#
# SAMPLES is a samples file (lines with "prompt" and "response"); without it the throughput
# workload's samples are generated first (the quickstart's first 8 prompts x 16, up to 128 new
# tokens, T = 0.8, seed 3: 128 samples, 17,382 tokens through the chat template). SWEETSPOT
# (default target/release/sweetspot) is the binary that generates them, PYTHON the interpreter
# with torch and transformers (default python3), ROUNDS the rounds per side (default 3);
# DTYPE=bf16 runs both sides in bfloat16.
set -euo pipefail
cd "$(dirname "$0")/.."
bin=${SWEETSPOT:-target/release/sweetspot}
python=${PYTHON:-python3}
rounds=${ROUNDS:-3}
dtype=${DTYPE:-f32}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
. scripts/lib/machine.sh

samples=${1:-}
if [ -z "$samples" ]; then
    head -n 8 examples/quickstart/prompts.jsonl > "$work/prompts.jsonl"
    "$bin" -q generate -m models/SmolLM2-135M-Instruct.Q4_1.gguf -p "$work/prompts.jsonl" \
        -o "$work/samples.jsonl" -n 16 --temperature 0.8 --max-new-tokens 128 --seed 3 >/dev/null
    samples=$work/samples.jsonl
fi
samples=$(realpath "$samples")

# The bench binary, built first so that its build is not timed.
bench=$(cargo bench -q -p sweetspot-model --bench reward --no-run --message-format=json \
    | grep -o '"executable":"[^"]*"' | tail -1 | cut -d'"' -f4)
[ -x "$bench" ] || { echo "bench_reward.sh: no reward bench binary built" >&2; exit 1; }

machine_line
echo "workload: the mix of $(wc -l < "$samples") samples ($samples), $rounds rounds, $dtype; $(date -u +%F)"
echo

SWEETSPOT_BENCH_SAMPLES=$samples SWEETSPOT_BENCH_ROUNDS=$rounds SWEETSPOT_BENCH_DTYPE=$dtype \
    /usr/bin/time -f "%e %U %S" -o "$work/ss.time" "$bench" --bench > "$work/ss.out"
ROUNDS=$rounds DTYPE=$dtype /usr/bin/time -f "%e %U %S" -o "$work/tf.time" \
    "$python" scripts/bench_reward_transformers.py "$samples" > "$work/tf.out" 2>/dev/null

# Each table row is "| mix | round | seconds | samples/s | tokens/s |".
rates() { grep -E '^\| mix \|' "$1" | awk -F'|' '{ gsub(/ /, "", $6); print $6 }' | paste -sd' '; }
best() { rates "$1" | tr ' ' '\n' | sort -n | tail -1; }
tokens=$(grep -oE '[0-9]+ tokens' "$work/ss.out" | head -1)
tf_tokens=$(grep -oE '[0-9]+ tokens' "$work/tf.out" | head -1)
[ "$tokens" = "$tf_tokens" ] || echo "note: sweetspot counts $tokens, transformers $tf_tokens"
read -r ss_wall ss_user ss_sys < "$work/ss.time"
read -r tf_wall tf_user tf_sys < "$work/tf.time"
ss_best=$(best "$work/ss.out")
tf_best=$(best "$work/tf.out")

echo "| run ($tokens) | tokens/s per round | best | CPU busy (of $(nproc) cores) | ratio |"
echo "|---|---:|---:|---:|---:|"
echo "| transformers $dtype | $(rates "$work/tf.out") | $tf_best | $(busy "$tf_wall" "$tf_user" "$tf_sys") | |"
echo "| sweetspot $dtype | $(rates "$work/ss.out") | $ss_best | $(busy "$ss_wall" "$ss_user" "$ss_sys") |" \
    "$(awk -v a="$ss_best" -v b="$tf_best" 'BEGIN { printf "%.2fx", a / b }') |"
echo
grep -E '^torch ' "$work/tf.out" | sed 's/^/transformers: /'
