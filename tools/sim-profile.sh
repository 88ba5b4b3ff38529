#!/usr/bin/env bash
# sim-profile.sh — instructions the simulator runs for the 1000-node target's scenario at a smaller
# size, counted by callgrind on one thread: the same for every run of one binary, where this VM's
# wall time varies by up to 20 % from run to run and by half from day to day. Give two binaries
# for an A/B; both run at once (one CPU each) and must give the same trace for the same work.
#
#   tools/sim-profile.sh [--nodes N] [--top K] FIELDMESH-SIM [OTHER-FIELDMESH-SIM] [-- SIM-FLAGS...]
#
# N defaults to 300 (about 8 minutes; 100 takes about 2), with ten writes per node as in the
# target. Prints, per binary, the total, the trace hash and the K (default 25) costliest functions
# by inclusive instructions. The callgrind files and each run's output stay in a temporary
# directory, named at the end (and when a run fails), for callgrind_annotate or kcachegrind.
# Flags after -- go to every run, after the scenario's own (a later flag wins: --link ble,
# --push-delay-ms 0): one binary's instructions under two settings are two profiles.
# Needs valgrind (apt-get install -y valgrind).
set -euo pipefail
nodes=300 top=25
while [ $# -gt 0 ]; do
    case $1 in
    --nodes) nodes=$2; shift 2 ;;
    --top) top=$2; shift 2 ;;
    --) break ;;
    -h | --help) sed -n '2,14p' "$0"; exit 0 ;;
    -*) echo "sim-profile: unknown flag $1" >&2; exit 2 ;;
    *) break ;;
    esac
done
bins=()
while [ $# -gt 0 ] && [ "$1" != -- ]; do
    bins+=("$1")
    shift
done
if [ $# -gt 0 ]; then shift; fi # the --: what is left goes to the simulator
extra=("$@")
if [ ${#bins[@]} -lt 1 ] || [ ${#bins[@]} -gt 2 ]; then
    echo "usage: sim-profile.sh [--nodes N] [--top K] SIM [SIM2] [-- SIM-FLAGS...]" >&2
    exit 2
fi
set -- "${bins[@]}"
case $nodes in '' | *[!0-9]*) echo "sim-profile: --nodes wants a number" >&2; exit 2 ;; esac
case $top in '' | *[!0-9]*) echo "sim-profile: --top wants a number" >&2; exit 2 ;; esac
command -v valgrind > /dev/null || { echo "sim-profile: needs valgrind" >&2; exit 2; }
for b in "$@"; do [ -x "$b" ] || { echo "sim-profile: $b is not an executable" >&2; exit 2; }; done
T=$(mktemp -d "${TMPDIR:-/tmp}/fm-profile-XXXXXX")
# The tunables sim/main.c sets by re-executing itself, which valgrind would not follow.
export GLIBC_TUNABLES=glibc.malloc.trim_threshold=4294967296:glibc.malloc.mmap_threshold=33554432
i=0
pids=()
for b in "$@"; do
    i=$((i + 1))
    valgrind --tool=callgrind --callgrind-out-file="$T/cg$i.out" "$b" --nodes "$nodes" \
        --topology rgg --degree 6 --loss 0.1 --churn 0.2 --writes $((nodes * 10)) --seed 1 \
        --json --threads 1 ${extra[@]+"${extra[@]}"} > "$T/run$i.json" 2> "$T/run$i.err" &
    pids+=($!)
done
failed=0
for k in "${!pids[@]}"; do
    if ! wait "${pids[$k]}"; then
        echo "sim-profile: ${bins[$k]} failed under callgrind: see $T/run$((k + 1)).err" >&2
        failed=1
    fi
done
[ "$failed" = 0 ] || exit 1
i=0
traces=()
for b in "$@"; do
    i=$((i + 1))
    total=$(sed -n 's/^summary: //p' "$T/cg$i.out")
    trace=$(grep -o '"trace_hash":"[0-9a-f]*' "$T/run$i.json" | cut -d'"' -f4)
    echo "== $b: $total instructions, trace ${trace:0:16}"
    traces+=("$trace")
    callgrind_annotate --inclusive=yes "$T/cg$i.out" > "$T/annotate$i.txt" 2> /dev/null
    # sed, not head: it reads to the end, so nothing upstream dies of SIGPIPE under pipefail.
    grep -E '^ *[0-9,]+ +\([ 0-9.]+%\) +' "$T/annotate$i.txt" |
        grep -vE 'PROGRAM TOTALS|libc-start|\(below main\)|ld-linux|:main \[|thread_main|start_thread|clone3' |
        sed -n "1,${top}p"
done
if [ ${#traces[@]} -eq 2 ] && [ "${traces[0]}" != "${traces[1]}" ]; then
    echo "sim-profile: the traces differ: the two binaries did different work"
fi
echo "sim-profile: callgrind files in $T"
