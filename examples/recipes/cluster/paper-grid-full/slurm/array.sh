#!/usr/bin/env bash
# Task SLURM_ARRAY_TASK_ID of a job array: the node on that line of the list (see submit.sh).
set -euo pipefail
id=$(sed -n "$((SLURM_ARRAY_TASK_ID + 1))p" "$1")
exec "$SWEETSPOT" run "$SWEETSPOT_RECIPE" --node "$id" --device "$SWEETSPOT_DEVICE"
