#!/usr/bin/env bash
# sim-curves.sh — convergence over time for N = 10, 100, 1000 nodes in one plot (issue 4's curve):
# random geometric graph of mean degree 6, 10% loss, 20% churn, ten writes per node, seed 1.
#
#   tools/sim-curves.sh [FIELDMESH-SIM] [OUT.svg]     (defaults: build/fieldmesh-sim, docs/convergence.svg)
#
# Each run's JSON summary is printed; the CSV time series stay in a temporary directory. The 1000-node
# run is the long one (minutes).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
SIM=${1:-$ROOT/build/fieldmesh-sim}
OUT=${2:-$ROOT/docs/convergence.svg}
T=$(mktemp -d "${TMPDIR:-/tmp}/fm-curves-XXXXXX")
trap 'rm -rf "$T"' EXIT
for n in 10 100 1000; do
    "$SIM" --nodes "$n" --topology rgg --degree 6 --loss 0.1 --churn 0.2 --writes $((n * 10)) \
        --seed 1 --json --csv "$T/n$n.csv"
done
"$SIM" plot --svg "$OUT" "$T/n10.csv" "$T/n100.csv" "$T/n1000.csv"
echo "sim-curves: wrote $OUT"
