#!/usr/bin/env bash
# demo-live.sh — three real fieldmesh nodes on this machine, end to end:
#   three devices (ana: the mesh authority, ben, cai) are set up and admitted; ana and ben each
#   record a dose for the same patient while offline (a conflict), cai counts a dose and tags the
#   patient; then the three nodes start (`fieldmesh run`), find each other — by mDNS when an
#   avahi-daemon is running, else by static peers on 127.0.0.1 — and sync. Every device ends with
#   the same state hash and lists the conflict with both values; an ordinary write then resolves
#   it, and a write made while the nodes run arrives everywhere. Every node is stopped at the end.
#
# usage: tools/demo-live.sh [PATH-TO-fieldmesh]     (default: $FIELDMESH, else build/fieldmesh)
# Exit status 0 when every step worked. Nothing outside a temporary directory is touched.
set -u

ROOT=$(cd "$(dirname "$0")/.." && pwd)
FM=${1:-${FIELDMESH:-$ROOT/build/fieldmesh}}
if [ ! -x "$FM" ]; then
    echo "demo-live: no fieldmesh binary at $FM (run 'make build' first, or pass its path)" >&2
    exit 1
fi
command -v python3 >/dev/null || {
    echo "demo-live: python3 is needed to read the nodes' JSON" >&2
    exit 1
}

T=$(mktemp -d "${TMPDIR:-/tmp}/fieldmesh-demo-XXXXXX") || exit 1
export HOME="$T/home" # never the user's own store
unset FIELDMESH_DIR
mkdir -p "$HOME"
NAMES=(ana ben cai)
declare -A PID=() PORT=() FPR=()
OK=1

cleanup() {
    local n
    for n in "${!PID[@]}"; do kill -TERM "${PID[$n]}" 2>/dev/null; done
    for n in "${!PID[@]}"; do
        for _ in $(seq 1 50); do
            kill -0 "${PID[$n]}" 2>/dev/null || break
            sleep 0.1
        done
        kill -KILL "${PID[$n]}" 2>/dev/null
        wait "${PID[$n]}" 2>/dev/null
    done
    if [ "$OK" != 1 ]; then
        for n in "${NAMES[@]}"; do
            [ -f "$T/$n.log" ] || continue
            echo "---- last lines of $n's node log ----"
            tail -n 15 "$T/$n.log"
        done
    fi
    rm -rf "$T"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

step() { printf '\n== %s\n' "$*"; }
say() { printf '   %s\n' "$*"; }
die() {
    OK=0
    printf '\ndemo-live: FAILED: %s\n' "$*" >&2
    exit 1
}
fm() { "$FM" --dir "$T/$1" "${@:2}"; }
# show NODE CMD...: prints "ana$ fieldmesh CMD..." and its output, indented.
show() {
    local n=$1
    shift
    printf '   %s$ fieldmesh %s\n' "$n" "$*"
    fm "$n" "$@" 2>&1 | sed 's/^/       /'
    return "${PIPESTATUS[0]}"
}
jfield() { python3 -c 'import json,sys
try: v = json.load(sys.stdin).get(sys.argv[1])
except Exception: v = None
print("" if v is None else str(v).lower() if isinstance(v, bool) else v)' "$1"; }
field() { fm "$1" status --json 2>/dev/null | jfield "$2"; }

free_port() { # sets P to a free TCP port at or after $1
    P=$1
    while ! python3 -c 'import socket,sys
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("", int(sys.argv[1])))' "$P" 2>/dev/null; do
        P=$((P + 1))
    done
}

# ---- discovery: mDNS if an avahi-daemon answers, else static peers -----------------------------------
if command -v avahi-daemon >/dev/null && avahi-daemon --check 2>/dev/null; then
    MODE=mdns
    DISCOVERY="mDNS (avahi-daemon is running): nodes listen on all interfaces and find each other"
else
    MODE=static
    why="no avahi-daemon installed"
    command -v avahi-daemon >/dev/null && why="avahi-daemon is not running"
    DISCOVERY="static peers on 127.0.0.1, in a line ana - ben - cai ($why, so no mDNS)"
fi

echo "fieldmesh live demo: three nodes on this machine"
say "binary:    $FM"
say "discovery: $DISCOVERY"
say "stores:    $T/{ana,ben,cai}"

# ---- devices and the mesh ------------------------------------------------------------------------------
step "1. Three devices; ana creates the mesh and admits ben and cai (certificates work offline)"
next=$((20000 + ($$ % 2000) * 10))
for n in "${NAMES[@]}"; do
    FPR[$n]=$(fm "$n" init --name "$n") || die "init $n"
    free_port "$next"
    PORT[$n]=$P
    next=$((P + 1))
    say "$n: device ${FPR[$n]}"
done
MESH=$(fm ana mesh create) || die "mesh create"
say "mesh id (ana's authority key): $MESH"
for n in ben cai; do
    cert=$(fm ana admit "$(field "$n" device_key)" --name "$n") || die "admit $n"
    fm "$n" join "$cert" || die "join $n"
    say "ana admitted $n; $n joined with its certificate"
done

# ---- offline writes: a conflict in the making ---------------------------------------------------------
step "2. Offline, before any node runs: ana and ben both record a dose for patient pt-1"
show ana put patients pt-1 name='"M. Okafor"' dose_mg:mv=5 doses+=1 || die "put on ana"
show ben put patients pt-1 dose_mg:mv=7 doses+=1 || die "put on ben"
show cai put patients pt-1 'tags[]+="allergy"' || die "put on cai"
show ana get patients pt-1
show ben get patients pt-1

# ---- the nodes -----------------------------------------------------------------------------------------------
step "3. Start the three nodes (fieldmesh run)"
for i in 0 1 2; do
    n=${NAMES[$i]}
    args=(--no-ble --log-level debug)
    if [ "$MODE" = mdns ]; then
        args+=(--listen "0.0.0.0:${PORT[$n]}")
    else
        args+=(--listen "127.0.0.1:${PORT[$n]}" --no-mdns)
        [ "$i" -gt 0 ] && args+=(--peer "127.0.0.1:${PORT[${NAMES[$((i - 1))]}]}")
    fi
    "$FM" --dir "$T/$n" run "${args[@]}" >"$T/$n.log" 2>&1 &
    PID[$n]=$!
    for _ in $(seq 1 100); do
        [ "$(field "$n" running)" = true ] && break
        kill -0 "${PID[$n]}" 2>/dev/null || die "node $n exited at start"
        sleep 0.2
    done
    [ "$(field "$n" running)" = true ] || die "node $n does not answer"
    peer_text=""
    [ "$MODE" = static ] && [ "$i" -gt 0 ] && peer_text=", static peer ${NAMES[$((i - 1))]}"
    say "$n: running, pid ${PID[$n]}, port ${PORT[$n]}$peer_text"
done

# wait_converged LIMIT_S: until the three state hashes are equal.
wait_converged() {
    local deadline=$((SECONDS + $1)) last="" line h
    while :; do
        line=""
        declare -A H=()
        for n in "${NAMES[@]}"; do
            h=$(field "$n" state_hash)
            H[$n]=$h
            line+="$n ${h:0:12} ops $(field "$n" ops)   "
        done
        [ "$line" != "$last" ] && say "$line"
        last=$line
        [ -n "${H[ana]}" ] && [ "${H[ana]}" = "${H[ben]}" ] && [ "${H[ben]}" = "${H[cai]}" ] &&
            return 0
        [ "$SECONDS" -lt "$deadline" ] || return 1
        sleep 0.5
    done
}

step "4. The nodes sync: state hashes (first 12 hex digits) until all three agree"
wait_converged 90 || die "the three nodes did not converge within 90 s"
say "converged: every device holds the same state ($(field ana state_hash))"

step "5. Every device shows the dose conflict with both values; the counter adds up"
for n in "${NAMES[@]}"; do
    show "$n" get patients pt-1
done
for n in "${NAMES[@]}"; do
    show "$n" conflicts
    [ "$(fm "$n" conflicts | grep -c '"field":"dose_mg"')" = 1 ] || die "$n does not list the conflict"
done
show ben peers

step "6. ana resolves the conflict with an ordinary write; cai registers a patient while online"
show ana put patients pt-1 dose_mg=6 || die "put on ana"
show cai put patients pt-2 name='"J. Mensah"' dose_mg:mv=2 || die "put on cai"
wait_converged 90 || die "the three nodes did not converge within 90 s"
for n in "${NAMES[@]}"; do
    out=$(fm "$n" conflicts)
    [ -z "$out" ] || die "$n still lists a conflict: $out"
done
say "no device lists a conflict any more"
show ana list patients
show ben status

step "7. Stop the nodes (SIGTERM)"
for n in "${NAMES[@]}"; do
    kill -TERM "${PID[$n]}"
    wait "${PID[$n]}"
    st=$?
    unset "PID[$n]"
    [ "$st" = 0 ] || {
        say "$n: exited with status $st"
        OK=0
        continue
    }
    say "$n: stopped cleanly (exit 0)"
done
show cai status
[ "$OK" = 1 ] || die "a node did not stop cleanly"
printf '\ndemo-live: done: three nodes synced over %s, the conflict was listed everywhere and resolved.\n' \
    "$([ "$MODE" = mdns ] && echo mDNS || echo 'static peers')"
