#!/usr/bin/env bash
# Submits the plan of ../../../paper-grid-full.toml to Slurm: one job per node that is not complete (4 jobs),
# each `sweetspot run RECIPE --node ID`, in the order of the plan's dependencies.
# Written by `sweetspot run --emit slurm` (sweetspot 0.1.0). Run it where sbatch works.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
cd "$here"
export SWEETSPOT=sweetspot
export SWEETSPOT_RECIPE="$here"/../../../paper-grid-full.toml
export SWEETSPOT_DEVICE=cuda

# generate
j0=$(sbatch --parsable --export=ALL --job-name=sweetspot-generate --partition=gpu --time=24:00:00 --cpus-per-task=16 --gres=gpu:1 --output=logs/generate-6487a00909f5c348-%j.out node.sh generate-6487a00909f5c348)

# score
j1=$(sbatch --parsable --export=ALL --job-name=sweetspot-score --partition=gpu --time=24:00:00 --cpus-per-task=16 --gres=gpu:1 --dependency=afterok:${j0} --output=logs/score-2739b67c6e7de178-%j.out node.sh score-2739b67c6e7de178)

# pairs
j2=$(sbatch --parsable --export=ALL --job-name=sweetspot-pairs --partition=gpu --time=24:00:00 --cpus-per-task=16 --dependency=afterok:${j1} --output=logs/pairs-c02e543e6643787b-%j.out node.sh pairs-c02e543e6643787b)

# train grid_max_vs_min, train grid_max_vs_-2, train grid_max_vs_-1, train grid_max_vs_0, train grid_max_vs_+1, train grid_max_vs_+2, train grid_+2_vs_min, train grid_+2_vs_-2, train grid_+2_vs_-1, train grid_+2_vs_0, train grid_+2_vs_+1, train grid_+1_vs_min, train grid_+1_vs_-2, train grid_+1_vs_-1, train grid_+1_vs_0, train grid_0_vs_min, train grid_0_vs_-2, train grid_0_vs_-1, train grid_-1_vs_min, train grid_-1_vs_-2, train grid_-2_vs_min
j3=$(sbatch --parsable --export=ALL --job-name=sweetspot-train --partition=gpu --time=24:00:00 --cpus-per-task=16 --gres=gpu:8 --dependency=afterok:${j2} --array=0-20 --output=logs/array-3-%A_%a.out array.sh array-3.txt)

echo "submitted 4 jobs for 24 nodes; logs in $here/logs"
