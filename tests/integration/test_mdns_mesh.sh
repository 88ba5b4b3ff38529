#!/usr/bin/env bash
# test_mdns_mesh.sh — four live nodes that find each other only by mDNS and can reach each other
# only through one another: namespaces A, B, C, D in a line (cables A-B, B-C, C-D; no IP
# forwarding, no avahi reflector), each with its own dbus-daemon, avahi-daemon and
# `fieldmesh run`. Checked, with every wait bounded and every time printed (times are not
# asserted):
#   1. discovery: each node finds exactly its neighbours;
#   2. a write on A reaches D through two relays;
#   3. partition: the B-C cable is unplugged, A and D write the same record (an mv field, an lww
#      field, a counter), each side converges on its own; after the cable is back all four have
#      one state hash, every node lists the mv conflict with both values, and the lww field has
#      the same winner everywhere;
#   4. an impaired cable (A-B: 10 % loss and 50 ms delay each way) while writes flow: converges;
#   5. avahi-daemon restarts: C's stopped and started again (its neighbours see it go and come
#      back), B's crashed (SIGKILL) and started again (B finds its neighbours again); after each
#      a new write converges;
#   6. no node heard of a non-neighbour, no reconnect churn, every node exits 0 on SIGTERM with
#      no error or sanitizer report in its log.
#
# usage: test_mdns_mesh.sh PATH-TO-fieldmesh [PATH-TO-nfq_delay]
# Without nfq_delay (libnetfilter-queue-dev missing at build time) step 4 impairs by loss only.
# Exit 77 (SKIP) when not root or when ip netns, dbus-daemon, avahi-daemon or iptables is missing.
# NN_KEEP=1 keeps the logs (the path is printed). Everything else is removed at exit, also on
# failure, interruption, or a SIGKILL from ctest (see netns.sh).
set -u

FM=$(readlink -f "${1:?usage: test_mdns_mesh.sh PATH-TO-fieldmesh [PATH-TO-nfq_delay]}")
NN_NFQ_DELAY=${2:+$(readlink -f "$2")}
HERE=$(cd "$(dirname "$0")" && pwd)
. "$HERE/netns.sh"

nn_require dbus-daemon avahi-daemon iptables python3
nn_begin mdns_mesh
F=$NN_STATE/fm
mkdir -p "$F"

CONVERGE_S=45 # bound on every convergence wait
NODES=(a b c d)
declare -A pid
CHECKS=0
FAILS=0

fail() { # reports the line of the test's top level that led here
    FAILS=$((FAILS + 1))
    printf 'FAIL (line %s): %s\n' "${BASH_LINENO[${#BASH_LINENO[@]} - 2]:-?}" "$*" >&2
}

check() { # check WHAT CMD...: CMD must succeed
    local what=$1
    shift
    CHECKS=$((CHECKS + 1))
    "$@" || fail "$what"
}

eq() { # eq WHAT GOT WANT
    CHECKS=$((CHECKS + 1))
    [ "$2" = "$3" ] || fail "$1"$'\n'"  got:  $2"$'\n'"  want: $3"
}

fm() { # fm NODE ARGS...: the CLI on NODE's directory (through its control socket when running)
    local x=$1
    shift
    "$FM" --dir "$F/$x" "$@"
}

jfield() { # jfield KEY: one top-level field of the JSON object on stdin
    python3 -c 'import json, sys; print(json.load(sys.stdin)[sys.argv[1]])' "$1"
}

hash_of() {
    fm "$1" status --json 2>/dev/null | jfield state_hash 2>/dev/null
}

# Succeeds when every node given has the same state hash.
same_hash() {
    local h0 x h
    h0=$(hash_of "$1") || return 1
    [ -n "$h0" ] || return 1
    for x in "${@:2}"; do
        h=$(hash_of "$x")
        [ "$h" = "$h0" ] || return 1
    done
}

all_converged() {
    same_hash "${NODES[@]}"
}

# wait_timed WHAT SECONDS CMD...: poll CMD, print how long it took; a failure if it never held.
wait_timed() {
    local what=$1 secs=$2 t0
    shift 2
    t0=$(nn_now_ms)
    CHECKS=$((CHECKS + 1))
    if nn_wait "$secs" "$@"; then
        printf '  %-58s %6d ms\n' "$what" $(($(nn_now_ms) - t0))
        return 0
    fi
    fail "$what: not within $secs s"
    return 1
}

# Lines "mdns: found NAME at ADDR" in a node's log that name addr.
found_count() {
    grep -c "mdns: found .* at $2:7400\$" "$F/$1.log" 2>/dev/null
}

found_more() { # found_more NODE ADDR N: NODE has found ADDR more than N times
    [ "$(found_count "$1" "$2")" -gt "$3" ]
}

dump_state() {
    local x
    for x in "${NODES[@]}"; do
        echo "---- $x: status, peers, last log lines" >&2
        fm "$x" status --json >&2
        fm "$x" peers >&2
        tail -n 25 "$F/$x.log" >&2
    done
}

# ---- the network and the mesh -------------------------------------------------------------------
echo "setup: namespaces, cables, dbus + avahi per node (state in $NN_STATE)"
t0=$(nn_now_ms)
for x in "${NODES[@]}"; do
    nn_node "$x" || exit 1
done
nn_link a b 1 && nn_link b c 2 && nn_link c d 3 || exit 1
nn_mdns_up "${NODES[@]}" || exit 1
printf '  %-58s %6d ms\n' "4 namespaces, dbus and avahi up" $(($(nn_now_ms) - t0))

fm a init --name a >/dev/null && fm a mesh create >/dev/null || exit 1
for x in b c d; do
    fm "$x" init --name "$x" >/dev/null || exit 1
    key=$(fm "$x" status --json | jfield device_key)
    cert=$(fm a admit "$key" --name "$x") && fm "$x" join "$cert" || exit 1
done

t0=$(nn_now_ms)
for x in "${NODES[@]}"; do
    nn_spawn "$x" "node-$x" "$F/$x.log" "$FM" --dir "$F/$x" run --listen 0.0.0.0:7400 \
        --log-level debug
done
for x in "${NODES[@]}"; do
    nn_wait 20 fm "$x" status || {
        fail "node $x did not start"
        tail -n 30 "$F/$x.log" >&2
        exit 1
    }
done
printf '  %-58s %6d ms\n' "4 nodes answering on their control sockets" $(($(nn_now_ms) - t0))

# ---- 1. discovery: neighbours only --------------------------------------------------------------
echo "1. discovery by mDNS"
# X finds its neighbour Y at Y's address on their cable.
seen() { # seen X Y: the address X finds Y at
    nn_addr "$2" "$1"
}
for pair in "a b" "b a" "b c" "c b" "c d" "d c"; do
    set -- $pair
    wait_timed "$1 finds $2 at $(seen "$1" "$2")" 15 found_more "$1" "$(seen "$1" "$2")" 0
done

# ---- 2. a write on A reaches D -------------------------------------------------------------------
echo "2. a write on A reaches D (two relays)"
t0=$(nn_now_ms)
check "put on a" fm a put notes n1 title='"first"' dose:mv=5
if ! wait_timed "write on A readable on D" 30 fm d get notes n1; then
    dump_state
    # Later steps need connections: start rounds by hand (the peers are still the ones mDNS
    # found). A node connects only to peers whose advertised digest differs from its own, so one
    # sync-now each is not enough when a relay has not received the write yet: repeat until
    # every node has it.
    echo "  (recovering for the next steps: sync-now on every node until all four converge)"
    sync_all() {
        local x
        for x in "${NODES[@]}"; do
            fm "$x" sync-now >/dev/null
        done
        sleep 1
        all_converged
    }
    wait_timed "all four converged with sync-now rounds" "$CONVERGE_S" sync_all
fi
eq "record n1 on d" "$(fm d get notes n1 2>&1)" '{"dose":5,"title":"first"}'
wait_timed "all four converged" "$CONVERGE_S" all_converged
printf '  %-58s %6d ms\n' "A write -> all four equal (from the put)" $(($(nn_now_ms) - t0))
for x in "${NODES[@]}"; do
    printf '  %s: connections %s\n' "$x" "$(fm "$x" status --json | jfield connections)"
done

# ---- 3. partition, concurrent writes, heal -------------------------------------------------------
echo "3. partition B-C, conflicting writes on A and D, heal"
check "put r1 on a" fm a put notes r1 dose:mv=1 note='"base"' visits+=1
wait_timed "r1 on all four before the cut" "$CONVERGE_S" all_converged
nn_cable b c down
t_cut=$(nn_now_ms)
check "put on a during the cut" fm a put notes r1 dose:mv=10 note='"from a"' visits+=1
sleep 0.05 # distinct clocks for the lww fields (the winner is whichever is later)
check "put on d during the cut" fm d put notes r1 dose:mv=20 note='"from d"' visits+=1
wait_timed "A and B converge during the cut" "$CONVERGE_S" same_hash a b
wait_timed "C and D converge during the cut" "$CONVERGE_S" same_hash c d
CHECKS=$((CHECKS + 1))
! same_hash a d || fail "A and D equal during the cut: the cut did not cut"
sleep 3 # a cut long enough for mDNS on B to drop C (its interface went down)
nn_cable b c up
printf '  %-58s %6d ms\n' "cable B-C down for" $(($(nn_now_ms) - t_cut))
if ! wait_timed "heal -> all four converged" "$CONVERGE_S" all_converged; then
    dump_state
fi
for x in "${NODES[@]}"; do
    got=$(fm "$x" conflicts | python3 -c '
import json, sys
for line in sys.stdin:
    c = json.loads(line)
    if (c["collection"], c["id"], c["field"]) == ("notes", "r1", "dose"):
        print(sorted(c["values"]))')
    eq "$x: conflicts lists r1.dose with both values" "$got" "[10, 20]"
done
note_a=$(fm a get notes r1 | jfield note)
CHECKS=$((CHECKS + 1))
case $note_a in
"from a" | "from d") ;;
*) fail "lww field note on a is '$note_a', want one of the two concurrent writes" ;;
esac
for x in b c d; do
    eq "$x: same lww winner as a" "$(fm "$x" get notes r1 | jfield note)" "$note_a"
    eq "$x: counter visits" "$(fm "$x" get notes r1 | jfield visits)" 3
done
echo "  lww winner everywhere: '$note_a'"

# ---- 4. an impaired cable with writes flowing ------------------------------------------------------
echo "4. impaired cable A-B (loss and delay both ways) with writes flowing"
impair=(--loss 10)
if [ -x "${NN_NFQ_DELAY:-}" ]; then
    impair+=(--delay 50)
else
    echo "  nfq_delay not built: loss only (build needs libnetfilter-queue-dev)"
fi
nn_impair a b "${impair[@]}" | sed 's/^/  /' || fail "impairing a<-b"
nn_impair b a "${impair[@]}" | sed 's/^/  /' || fail "impairing b<-a"
t0=$(nn_now_ms)
check "put on a through the impaired cable" fm a put notes slow x=1
wait_timed "impaired: write on A readable on D" "$CONVERGE_S" fm d get notes slow
t0=$(nn_now_ms)
for i in $(seq 1 15); do
    fm a put flow "a$i" n="$i" total+=1 >/dev/null || fail "put flow a$i on a"
    fm d put flow "d$i" n="$i" total+=1 >/dev/null || fail "put flow d$i on d"
    fm b put flow shared who='"b"' total+=1 >/dev/null || fail "put flow shared on b"
    sleep 0.2
done
printf '  %-58s %6d ms\n' "45 writes on A, B and D" $(($(nn_now_ms) - t0))
t0=$(nn_now_ms)
if ! wait_timed "impaired: all four converged after the last write" "$CONVERGE_S" all_converged; then
    dump_state
fi
eq "a: counter flow/shared.total" "$(fm a get flow shared | jfield total)" 15
eq "d: records in flow" "$(fm d list flow | wc -l)" 31
nn_unimpair a b | sed 's/^/  /'
nn_unimpair b a | sed 's/^/  /'

# ---- 5. avahi-daemon restarts ----------------------------------------------------------------------
echo "5. avahi-daemon restarts"
# C: graceful stop (goodbyes: B and D drop it), start again: B and D find it again, it finds them.
log_count() { # log_count NODE TEXT: lines of NODE's log that contain TEXT
    grep -cF "$2" "$F/$1.log"
}
log_more() { # log_more NODE TEXT N
    [ "$(log_count "$1" "$2")" -gt "$3" ]
}
n_bc=$(found_count b "$(seen b c)") n_dc=$(found_count d "$(seen d c)")
n_cb=$(found_count c "$(seen c b)") n_cd=$(found_count c "$(seen c d)")
n_gone=$(log_count c "mdns: avahi-daemon unavailable") n_back=$(log_count c "avahi-daemon is back")
nn_avahi c stop
wait_timed "c's node notices its avahi-daemon is gone" 10 \
    log_more c "mdns: avahi-daemon unavailable" "$n_gone"
nn_avahi c start || fail "avahi-daemon of c did not start again"
wait_timed "c's node is back on avahi" 15 log_more c "mdns: avahi-daemon is back" "$n_back"
wait_timed "b finds c again" 15 found_more b "$(seen b c)" "$n_bc"
wait_timed "d finds c again" 15 found_more d "$(seen d c)" "$n_dc"
wait_timed "c finds b again" 15 found_more c "$(seen c b)" "$n_cb"
wait_timed "c finds d again" 15 found_more c "$(seen c d)" "$n_cd"
check "put on d after c's avahi restart" fm d put notes after-c x=1
wait_timed "write after c's avahi restart converged" "$CONVERGE_S" all_converged

# B: crash (no goodbyes: A and C keep it in their caches), start again: B finds A and C again.
n_ba=$(found_count b "$(seen b a)") n_bc=$(found_count b "$(seen b c)")
nn_avahi b kill
nn_avahi b start || fail "avahi-daemon of b did not start again"
wait_timed "b finds a again after its avahi crashed" 15 found_more b "$(seen b a)" "$n_ba"
wait_timed "b finds c again after its avahi crashed" 15 found_more b "$(seen b c)" "$n_bc"
check "put on a after b's avahi crash" fm a put notes after-b x=2
wait_timed "write after b's avahi crash converged" "$CONVERGE_S" all_converged

# ---- the topology held, no churn, clean exits ---------------------------------------------------------
echo "6. topology, connection churn, shutdown"
# No node ever heard of a node beyond its neighbours (no forwarding, no reflector).
CHECKS=$((CHECKS + 1))
if grep -E "mdns: found .* at 10\.77\.(2|3)\." "$F/a.log" >&2 ||
    grep -E "mdns: found .* at 10\.77\.(1|2)\." "$F/d.log" >&2 ||
    grep -E "mdns: found .* at 10\.77\.3\." "$F/b.log" >&2 ||
    grep -E "mdns: found .* at 10\.77\.1\." "$F/c.log" >&2; then
    fail "a node found a node that is not its neighbour"
fi
for x in b c; do
    eq "$x: IP forwarding off" "$(nn_x "$x" sysctl -n net.ipv4.ip_forward)" 0
done

# Two nodes that connect to each other at once keep one connection (the one the smaller id
# started): a few duplicates closed per run are normal, one every backoff interval is churn.
for x in "${NODES[@]}"; do
    dups=$(grep -c "closing: already exists" "$F/$x.log")
    echo "  $x: duplicate connections closed: $dups"
    CHECKS=$((CHECKS + 1))
    [ "$dups" -le 6 ] || fail "node $x closed $dups duplicate connections: it reconnects to a" \
        "peer it is already connected to, again and again"
done

# Clean shutdown: SIGTERM, exit status 0, and nothing from the node's log at ERROR or from the
# sanitizers (their reports come at exit).
for x in "${NODES[@]}"; do
    pid[$x]=$(nn_pid "node-$x")
done
nn_stop TERM node-a node-b node-c node-d
for x in "${NODES[@]}"; do
    status=gone
    [ -n "${pid[$x]}" ] && { wait "${pid[$x]}"; status=$?; }
    eq "node $x: exit status after SIGTERM" "$status" 0
    CHECKS=$((CHECKS + 1))
    ! grep -E " ERROR |AddressSanitizer|LeakSanitizer|runtime error" "$F/$x.log" >&2 ||
        fail "node $x logged errors"
done

if [ "$FAILS" -ne 0 ]; then
    echo "test_mdns_mesh.sh: $FAILS of $CHECKS checks failed (NN_KEEP=1 keeps the logs)" >&2
    exit 1
fi
echo "test_mdns_mesh.sh: all $CHECKS checks passed"
