#!/usr/bin/env bash
# The n-sample generation benchmark, both sides on this machine one after the other, with the
# machine recorded (docs/benchmarks.md): sweetspot at its default settings (batch_size = "auto")
# against transformers at its best (scripts/bench_nsample_transformers.py: torch threads = cores).
# Prints the CPU model, its vector/matrix flags and cores, then one Markdown row per side: tokens,
# wall seconds, tokens/s, CPU utilization ((user + sys) / wall / cores) and the ratio.
#
#   scripts/bench_nsample.sh [N] [MAX_NEW] [PROMPTS]      (defaults 16, 128, the quickstart's)
#
# SWEETSPOT (default target/release/sweetspot) picks the binary, SWEETSPOT_ARGS adds flags
# (such as --batch-size 16), PYTHON the interpreter with torch and transformers (default python3);
# DTYPE=bf16 runs both sides in bfloat16 (sweetspot's --dtype bf16, transformers' torch.bfloat16).
set -euo pipefail
cd "$(dirname "$0")/.."
n=${1:-16}
max_new=${2:-128}
prompts_all=${3:-examples/quickstart/prompts.jsonl}
bin=${SWEETSPOT:-target/release/sweetspot}
python=${PYTHON:-python3}
model=models/SmolLM2-135M-Instruct.Q4_1.gguf
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
head -n 8 "$prompts_all" > "$work/prompts.jsonl"
cores=$(nproc)
. scripts/lib/machine.sh
machine_line
echo "workload: 8 prompts x n = $n, up to $max_new new tokens, T = 0.8, real stops, ${DTYPE:-f32}; $(date -u +%F)"
echo
echo "| run | tokens | wall s | tokens/s | CPU busy (of $cores cores) | ratio |"
echo "|---|---:|---:|---:|---:|---:|"

# sweetspot: the whole command (model load included).
/usr/bin/time -f "%e %U %S" -o "$work/ss.time" "$bin" -q generate -m "$model" -p "$work/prompts.jsonl" \
    -o "$work/ss.jsonl" -n "$n" --temperature 0.8 --max-new-tokens "$max_new" --seed 3 \
    --dtype "${DTYPE:-f32}" ${SWEETSPOT_ARGS:-} >/dev/null
read -r ss_wall ss_user ss_sys < "$work/ss.time"
ss_tokens=$("$python" -c 'import json,sys; print(sum(json.loads(l)["token_count"] for l in open(sys.argv[1])))' "$work/ss.jsonl")

# transformers: its script times the generation; the process's CPU time from time(1).
/usr/bin/time -f "%e %U %S" -o "$work/tf.time" "$python" scripts/bench_nsample_transformers.py \
    "$work/prompts.jsonl" "$n" "$max_new" > "$work/tf.out" 2>/dev/null
read -r tf_wall tf_user tf_sys < "$work/tf.time"
tf_tokens=$(grep -oE '[0-9]+ tokens' "$work/tf.out" | head -1 | cut -d' ' -f1)

row() { # name tokens wall user sys ratio-base
    awk -v name="$1" -v t="$2" -v w="$3" -v busy="$(busy "$3" "$4" "$5")" -v base="$6" 'BEGIN {
        tps = t / w;
        ratio = (base > 0) ? sprintf("%.2fx", tps / base) : "";
        printf "| %s | %d | %.1f | %.1f | %s | %s |\n", name, t, w, tps, busy, ratio }'
}
tf_tps=$(awk -v t="$tf_tokens" -v w="$tf_wall" 'BEGIN { print t / w }')
row "transformers (whole process)" "$tf_tokens" "$tf_wall" "$tf_user" "$tf_sys" 0
row "sweetspot ${SWEETSPOT_ARGS:-(defaults)}" "$ss_tokens" "$ss_wall" "$ss_user" "$ss_sys" "$tf_tps"
echo
grep -E 'tokens/s|threads' "$work/tf.out" | sed 's/^/transformers: /'
