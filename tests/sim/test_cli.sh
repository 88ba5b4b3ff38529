#!/usr/bin/env bash
# test_cli.sh — fieldmesh-sim end to end: the same seed gives the same trace hash, the JSON has
# the promised fields, a failing run exits 1 and prints its replay line, and --csv/--svg/plot
# write readable files. Usage: test_cli.sh path/to/fieldmesh-sim
set -euo pipefail
SIM=$1
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
fail() { echo "FAIL: $*" >&2; exit 1; }

FLAGS=(--nodes 12 --topology ring --loss 0.05 --churn 0.2 --writes 60 --seed 21)
"$SIM" "${FLAGS[@]}" --json --csv "$TMP/a.csv" --svg "$TMP/a.svg" >"$TMP/a.json"
"$SIM" "${FLAGS[@]}" --json >"$TMP/b.json"
for f in nodes seed converged convergence_ms messages bytes bytes_per_op ops lost_writes \
    distinct_state_hashes wall_ms threads windows wait_ms trace_hash; do
    grep -q "\"$f\":" "$TMP/a.json" || fail "field $f missing: $(cat "$TMP/a.json")"
done
grep -q '"converged":true' "$TMP/a.json" || fail "not converged: $(cat "$TMP/a.json")"
grep -q '"lost_writes":0,' "$TMP/a.json" || fail "lost writes: $(cat "$TMP/a.json")"
ha=$(grep -o '"trace_hash":"[0-9a-f]*"' "$TMP/a.json")
hb=$(grep -o '"trace_hash":"[0-9a-f]*"' "$TMP/b.json")
[ "$ha" = "$hb" ] || fail "same seed, different traces: $ha vs $hb"
"$SIM" --nodes 12 --topology ring --loss 0.05 --churn 0.2 --writes 60 --seed 22 --json >"$TMP/c.json"
hc=$(grep -o '"trace_hash":"[0-9a-f]*"' "$TMP/c.json")
[ "$ha" != "$hc" ] || fail "different seeds, same trace"

head -2 "$TMP/a.csv" | grep -q '^t_ms,coverage,bytes,messages,nodes_online$' || fail "csv header"
[ "$(wc -l <"$TMP/a.csv")" -gt 10 ] || fail "csv too short"
grep -q '<svg' "$TMP/a.svg" && grep -q 'polyline' "$TMP/a.svg" || fail "svg"
"$SIM" plot --svg "$TMP/all.svg" "$TMP/a.csv" "$TMP/a.csv"
[ "$(grep -c '<polyline' "$TMP/all.svg")" -eq 2 ] || fail "plot overlays two curves"

# A run cut short by --duration does not converge: exit 1 and the exact flags to replay it.
set +e
"$SIM" --nodes 8 --topology line --writes 40 --duration 2 --quiet 2>"$TMP/err"
rc=$?
set -e
[ "$rc" -eq 1 ] || fail "unconverged run exited $rc"
grep -qx 'replay: fieldmesh-sim --nodes 8 --topology line --writes 40 --duration 2 --quiet' \
    "$TMP/err" || fail "replay line: $(cat "$TMP/err")"
echo "sim.cli: ok"
