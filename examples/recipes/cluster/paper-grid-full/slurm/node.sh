#!/usr/bin/env bash
# One node of the plan: sweetspot run RECIPE --node ID (see submit.sh).
set -euo pipefail
exec "$SWEETSPOT" run "$SWEETSPOT_RECIPE" --node "$1" --device "$SWEETSPOT_DEVICE"
