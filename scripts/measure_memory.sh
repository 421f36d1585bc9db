#!/usr/bin/env bash
# Peak resident memory (GNU time's "Maximum resident set size") of CPU runs of the tiny fixtures
# and SmolLM2-135M, for the memory plan's check in docs/benchmarks.md. Writes one line per run to
# $OUT/rss.tsv: name, peak RSS in KiB, wall time. Needs a release build and
# models/SmolLM2-135M-Instruct.Q4_1.gguf (scripts/fetch_smollm2.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
bin=${BIN:-target/release/sweetspot}
out=${OUT:-target/measure}
rm -rf "$out"; mkdir -p "$out"
smol=models/SmolLM2-135M-Instruct.Q4_1.gguf
prompts=examples/quickstart/prompts.jsonl
measure() { # name, command...
  local name=$1; shift
  /usr/bin/time -v -o "$out/$name.time" "$@" >"$out/$name.log" 2>&1 || { echo "$name failed"; tail -5 "$out/$name.log"; }
  local kib secs
  kib=$(awk -F': ' '/Maximum resident set size/ {print $2}' "$out/$name.time")
  secs=$(awk -F': ' '/Elapsed \(wall clock\)/ {print $2}' "$out/$name.time")
  printf '%s\t%s\t%s\n' "$name" "$kib" "$secs" | tee -a "$out/rss.tsv"
}
# The binary alone (no runtime started); the process baseline of the memory plan is gen-tiny's
# peak (a model of 0.1 MB: the binary, burn's runtime, allocator arenas, tokenizer).
measure binary "$bin" --version
# Tiny fixtures.
measure gen-tiny "$bin" generate -q -m tests/fixtures/models/policy -p "$prompts" -n 8 \
  --max-new-tokens 96 --batch-size 16 --seed 1 -o "$out/tiny-samples.jsonl"
measure score-tiny "$bin" score -q -t armorm -m tests/fixtures/models/armorm \
  -i "$out/tiny-samples.jsonl" --batch-size 16 -o "$out/tiny-scored.jsonl"
"$bin" pairs -q -i "$out/tiny-scored.jsonl" -s max-min -o "$out/tiny-pairs.jsonl" >/dev/null
measure train-tiny "$bin" train -q -m tests/fixtures/models/policy --pairs "$out/tiny-pairs.jsonl" \
  -o "$out/tiny-train" --param batch_size=4 --param micro_batch_size=2
# SmolLM2-135M (GGUF Q4_1, dequantized to f32 on load). It scores as the quickstart's Yes/No
# judge; for training, its samples get seeded random rewards (what training holds does not depend
# on the rewards, only on the pairs' lengths).
measure gen-smol "$bin" generate -q -m "$smol" -p "$prompts" -n 4 --max-new-tokens 128 \
  --batch-size 16 --seed 1 -o "$out/smol-samples.jsonl"
measure score-smol-judge "$bin" score -q -t judge -m "$smol" -i "$out/smol-samples.jsonl" \
  --batch-size 16 -o "$out/smol-judged.jsonl"
python3 - "$out/smol-samples.jsonl" "$out/smol-scored.jsonl" <<'PY'
import json, random, sys
random.seed(1)
with open(sys.argv[1]) as f, open(sys.argv[2], "w") as g:
    for line in f:
        row = json.loads(line)
        row["reward"] = random.gauss(0, 1)
        g.write(json.dumps(row) + "\n")
PY
"$bin" pairs -q -i "$out/smol-scored.jsonl" -s max-min -o "$out/smol-pairs.jsonl" >/dev/null
measure train-smol "$bin" train -q -m "$smol" --pairs "$out/smol-pairs.jsonl" -o "$out/smol-train" \
  --param batch_size=4 --param micro_batch_size=2
measure train-smol-ckpt "$bin" train -q -m "$smol" --pairs "$out/smol-pairs.jsonl" \
  -o "$out/smol-train-ckpt" --param batch_size=4 --param micro_batch_size=2 \
  --param gradient_checkpointing=true
# LoRA DPO (r = 16 on every linear layer) on the f32 and the bf16 base.
for bd in f32 bf16; do
  cat > "$out/lora-$bd.toml" <<TOML
[train]
pairs = "smol-pairs.jsonl"
policy = "$PWD/$smol"
output = "lora-$bd-out"
batch_size = 4
micro_batch_size = 2

[train.loss]
type = "dpo"

[train.adapter]
type = "lora"
r = 16
lora_alpha = 32
target_modules = "all-linear"
base_dtype = "$bd"
TOML
  measure "train-smol-lora-$bd" "$bin" train -q --recipe "$out/lora-$bd.toml"
  "$bin" run --plan "scripts/memory/smol-lora-$bd.toml" | sed -n '/^memory/,$p' > "$out/plan-smol-lora-$bd.txt"
done
# The estimates: the same runs as recipes, planned.
for r in tiny smol; do
  "$bin" run --plan "scripts/memory/$r.toml" | sed -n '/^memory/,$p' > "$out/plan-$r.txt"
done
"$bin" run --plan scripts/memory/smol-ckpt.toml | sed -n '/^memory/,$p' > "$out/plan-smol-ckpt.txt"
