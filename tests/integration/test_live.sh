#!/usr/bin/env bash
# test_live.sh — three live nodes (`fieldmesh run`) on loopback, static peers in a line A - B - C:
#   - without a running node the commands open the store themselves, and `peers` / `sync-now`
#     say that no node is running (exit 1);
#   - a second `run` in a directory that already has a node is refused;
#   - writes on every node (one mv field written concurrently on A and C, a counter and a set all
#     three touch) converge: equal state hashes, the mv conflict listed with both values on every
#     node, `peers --json` shows the connected peers, `status --json` says running;
#   - SIGTERM: exit 0 and control.sock removed, also with a control request arriving during the
#     shutdown;
#   - a bulk of 20000 ops written into C's store while C is stopped (bulk_writer), C restarted
#     (now reaching B through a local relay that passes C -> B bytes at a bounded rate, so the
#     transfer takes seconds on any machine), B SIGKILLed while it receives them (its store holds
#     some but not all), restarted: everything converges and every acknowledged write is present
#     on every node (records and op counts).
#
# usage: test_live.sh PATH-TO-fieldmesh PATH-TO-bulk_writer
# Every failure prints what was expected and what came out, and the nodes' last log lines.
# Convergence is polled with a bound, never timed. Every process started here is stopped at exit
# (by PID); temp files go too (FM_TEST_KEEP=1 keeps them for a post-mortem).
set -u

FM=${1:?usage: test_live.sh PATH-TO-fieldmesh PATH-TO-bulk_writer}
BULK=${2:?usage: test_live.sh PATH-TO-fieldmesh PATH-TO-bulk_writer}
T=$(mktemp -d "${TMPDIR:-/tmp}/fm-test-live-XXXXXX") || exit 1
export HOME="$T/home" # the default store location must never be the real one
unset FIELDMESH_DIR
mkdir -p "$HOME"

declare -A PID=() # node name -> pid of its `fieldmesh run`
cleanup() {
    local n p
    for n in "${!PID[@]}"; do
        p=${PID[$n]}
        kill -TERM "$p" 2>/dev/null
    done
    for n in "${!PID[@]}"; do
        p=${PID[$n]}
        for _ in $(seq 1 50); do
            kill -0 "$p" 2>/dev/null || break
            sleep 0.1
        done
        kill -KILL "$p" 2>/dev/null
        wait "$p" 2>/dev/null
    done
    if [ "${FAILS:-0}" -ne 0 ] || [ "${KEEP_LOGS:-0}" = 1 ]; then
        for n in A B C; do
            [ -f "$T/$n.log" ] || continue
            printf -- '---- last lines of node %s log ----\n' "$n" >&2
            tail -n 40 "$T/$n.log" >&2
        done
    fi
    if [ -n "${FM_TEST_KEEP:-}" ]; then
        printf 'test_live: kept %s (FM_TEST_KEEP)\n' "$T" >&2
    else
        rm -rf "$T"
    fi
}
trap cleanup EXIT
trap 'exit 143' TERM INT

. "$(dirname "$0")/checks.sh"
note() { printf 'test_live: %s\n' "$*" >&2; }
check() { # check WHAT CONDITION-STATUS (0 = holds)
    CHECKS=$((CHECKS + 1))
    [ "$2" -eq 0 ] || fail "$1"
}

# A field of a flat JSON object on stdin ("" if absent or not JSON).
jfield() {
    python3 -c 'import json,sys
try:
    v = json.load(sys.stdin).get(sys.argv[1])
except Exception:
    sys.exit(0)
print("" if v is None else (str(v).lower() if isinstance(v, bool) else v))' "$1"
}
status_field() { # status_field NODE FIELD
    "$FM" --dir "$T/$1" status --json 2>/dev/null | jfield "$2"
}

# Ports: a range of its own per test process, each checked free before use.
PORT_NEXT=$((20000 + ($$ % 2000) * 10))
# pick_port: sets PORT (not in a subshell: the counter must advance).
pick_port() {
    local p
    for _ in $(seq 1 200); do
        p=$PORT_NEXT
        PORT_NEXT=$((PORT_NEXT + 1))
        [ "$PORT_NEXT" -lt 60000 ] || PORT_NEXT=20000
        if python3 -c 'import socket,sys
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("127.0.0.1", int(sys.argv[1])))' "$p" 2>/dev/null; then
            PORT=$p
            return 0
        fi
    done
    return 1
}

# ---- the acknowledged writes: every put that returned 0 must end up on every node ------------------
EXPECTED_OPS=0
ACKED="$T/acked" # lines: COLLECTION ID FIELD JSON-VALUE
: >"$ACKED"
# put_ok NODE COLLECTION ID FIELD=VALUE... ; lww assignments FIELD=V are remembered.
put_ok() {
    local node=$1 coll=$2 id=$3
    shift 3
    run "$FM" --dir "$T/$node" put "$coll" "$id" "$@"
    eq "put $coll/$id on $node: exit status" "$RC" 0
    [ "$RC" -eq 0 ] || return 1
    EXPECTED_OPS=$((EXPECTED_OPS + $#))
    local a
    for a in "$@"; do
        case "$a" in
        *[+:\[-]*=*) ;; # counters, sets and mv fields are checked separately
        *=*) printf '%s %s %s %s\n' "$coll" "$id" "${a%%=*}" "${a#*=}" >>"$ACKED" ;;
        esac
    done
}

# check_acked NODE...: every remembered lww write is in each node's store, with its value.
check_acked() {
    local node colls c
    colls=$(cut -d' ' -f1 "$ACKED" | sort -u)
    for node in "$@"; do
        for c in $colls; do
            "$FM" --dir "$T/$node" list "$c" >"$T/list.$node.$c" 2>"$T/.err" ||
                fail "list $c on $node failed: $(cat "$T/.err")"
        done
        local missing
        missing=$(python3 - "$ACKED" "$T/list.$node" <<'EOF'
import json, sys
acked, prefix = sys.argv[1], sys.argv[2]
recs = {}
for line in open(acked):
    coll, rid, field, val = line.rstrip("\n").split(" ", 3)
    if coll not in recs:
        recs[coll] = {}
        for l in open(prefix + "." + coll):
            r = json.loads(l)
            recs[coll][r["_id"]] = r
    r = recs[coll].get(rid)
    want = json.loads(val)
    if r is None or r.get(field) != want:
        print(f"{coll}/{rid}.{field}: want {val}, got {None if r is None else r.get(field)}")
EOF
)
        CHECKS=$((CHECKS + 1))
        [ -z "$missing" ] || fail "acknowledged writes missing on node $node:"$'\n'"$missing"
    done
}

# ---- nodes ----------------------------------------------------------------------------------------
declare -A LISTEN=()
# start_node NAME [--peer ADDR]...: runs `fieldmesh run` in the background, waits until it answers.
start_node() {
    local n=$1
    shift
    "$FM" --dir "$T/$n" run --listen "127.0.0.1:${LISTEN[$n]}" --no-mdns --no-ble \
        --log-level debug "$@" >>"$T/$n.log" 2>&1 &
    PID[$n]=$!
    local running=""
    for _ in $(seq 1 300); do # up to ~60 s
        if ! kill -0 "${PID[$n]}" 2>/dev/null; then
            wait "${PID[$n]}"
            fail "node $n exited at start (status $?); see its log below"
            unset "PID[$n]"
            return 1
        fi
        [ -S "$T/$n/control.sock" ] && running=$(status_field "$n" running)
        [ "$running" = true ] && return 0
        sleep 0.2
    done
    fail "node $n never answered on its control socket"
    return 1
}

# stop_node NAME: SIGTERM, exit status 0, control.sock removed.
stop_node() {
    local n=$1 p=${PID[$1]} st
    kill -TERM "$p"
    wait "$p"
    st=$?
    unset "PID[$n]"
    eq "node $n exit status after SIGTERM" "$st" 0
    CHECKS=$((CHECKS + 1))
    [ ! -e "$T/$n/control.sock" ] || fail "node $n left $T/$n/control.sock after SIGTERM"
}

# converge TIMEOUT_S NODE...: until the nodes have one state hash and EXPECTED_OPS ops each.
converge() {
    local limit=$1 n h first ops good
    shift
    local deadline=$((SECONDS + limit))
    while :; do
        good=1
        first=""
        SNAPSHOT=""
        for n in "$@"; do
            run "$FM" --dir "$T/$n" status --json
            h=$(printf '%s' "$OUT" | jfield state_hash)
            ops=$(printf '%s' "$OUT" | jfield ops)
            SNAPSHOT+="  $n: ops=$ops hash=$h running=$(printf '%s' "$OUT" | jfield running)"$'\n'
            [ -n "$first" ] || first=$h
            { [ -n "$h" ] && [ "$h" = "$first" ] && [ "$ops" = "$EXPECTED_OPS" ]; } || good=0
        done
        [ "$good" = 1 ] && return 0
        [ "$SECONDS" -lt "$deadline" ] || break
        sleep 0.25
    done
    fail "no convergence within ${limit} s (want $EXPECTED_OPS ops everywhere):"$'\n'"$SNAPSHOT"
    return 1
}

# peers_in NODE STATE...: fingerprints of NODE's peers in one of the states, sorted, one line.
peers_in() {
    local node=$1
    shift
    "$FM" --dir "$T/$node" peers --json 2>/dev/null | python3 -c 'import json,sys
try:
    ps = json.load(sys.stdin)
except Exception:
    print("(not JSON)"); sys.exit(0)
print(" ".join(sorted(p["id"] for p in ps if p.get("id") and p.get("state") in sys.argv[1:])))' "$@"
}
connected_peers() { peers_in "$1" syncing synced; }
synced_peers() { peers_in "$1" synced; }
sorted_words() { printf '%s\n' "$@" | sort | tr '\n' ' ' | sed 's/ $//'; }

# ---- set up the mesh: A is the authority; B and C are admitted ---------------------------------------
declare -A FPR=()
for n in A B C; do
    ok "$FM" --dir "$T/$n" init --name "node-$n"
    FPR[$n]=$OUT
    pick_port || {
        fail "no free port"
        exit 1
    }
    LISTEN[$n]=$PORT
done
ok "$FM" --dir "$T/A" mesh create
for n in B C; do
    key=$(status_field "$n" device_key)
    ok "$FM" --dir "$T/A" admit "$key" --name "node-$n"
    cert=$OUT
    ok "$FM" --dir "$T/$n" join "$cert"
done

# ---- no node running: commands open the store; peers and sync-now say so --------------------------------
for n in A C; do
    run "$FM" --dir "$T/$n" peers
    eq "peers without a node on $n: exit status" "$RC" 1
    contains "peers without a node: says so" "$ERR" "no node is running"
    eq "peers without a node: nothing on stdout" "$OUT" ""
done
run "$FM" --dir "$T/A" peers --json
eq "peers --json without a node: exit status" "$RC" 1
contains "peers --json without a node: says so" "$ERR" "no node is running"
run "$FM" --dir "$T/A" sync-now
eq "sync-now without a node: exit status" "$RC" 1
contains "sync-now without a node: says so" "$ERR" "no node is running"
eq "status --json without a node: running" "$(status_field A running)" false
# The conflicting mv writes: made offline on A and on C, so neither has seen the other.
put_ok A patients p1 name='"M. Okafor"' dose:mv=5 visits+=1
put_ok C patients p1 dose:mv=7 'tags[]+="allergy"'
ok "$FM" --dir "$T/A" get patients p1
eq "offline get on A" "$OUT" '{"dose":5,"name":"M. Okafor","visits":1}'
ok "$FM" --dir "$T/A" conflicts
eq "no conflict on A before any sync" "$OUT" ""

# ---- three live nodes in a line A - B - C ---------------------------------------------------------------
start_node A || exit 1
start_node B --peer "127.0.0.1:${LISTEN[A]}" || exit 1
start_node C --peer "127.0.0.1:${LISTEN[B]}" || exit 1
note "nodes A ${LISTEN[A]}, B ${LISTEN[B]} (peer A), C ${LISTEN[C]} (peer B) running"

# One node per directory: a second run on A is refused, and A keeps running.
pick_port
run timeout 30 "$FM" --dir "$T/A" run --listen "127.0.0.1:$PORT" --no-mdns --no-ble
eq "a second run in A: exit status" "$RC" 1
contains "a second run in A: says why" "$ERR" "already running"
eq "A still running after the refused second run" "$(status_field A running)" true

for n in A B C; do
    put_ok "$n" notes "live-$n" v="\"written on $n\"" n=1
    put_ok "$n" shared tally hits+=1 "seen[]+=\"$n\""
done
converge 60 A B C
H1=$(status_field A state_hash)

for n in A B C; do
    ok "$FM" --dir "$T/$n" get patients p1
    eq "patients/p1 on $n" "$(printf '%s' "$OUT" | python3 -c 'import json,sys
r = json.load(sys.stdin); d = r.get("dose")
print(json.dumps({"dose": sorted(d["conflict"]) if isinstance(d, dict) else d,
                  "name": r.get("name"), "visits": r.get("visits"), "tags": r.get("tags")}, sort_keys=True))')" \
        '{"dose": [5, 7], "name": "M. Okafor", "tags": ["allergy"], "visits": 1}'
    ok "$FM" --dir "$T/$n" conflicts
    eq "conflicts on $n: the mv conflict with both values" "$(printf '%s\n' "$OUT" | python3 -c 'import json,sys
out = []
for l in sys.stdin:
    if l.strip():
        c = json.loads(l); c["values"] = sorted(c["values"]); out.append(c)
print(json.dumps(out, sort_keys=True))')" \
        '[{"collection": "patients", "field": "dose", "id": "p1", "values": [5, 7]}]'
    ok "$FM" --dir "$T/$n" get shared tally
    eq "shared/tally on $n (counter and set from every node)" "$OUT" \
        '{"hits":3,"seen":["A","B","C"]}'
    run "$FM" --dir "$T/$n" status --json
    eq "status --json on $n: running" "$(printf '%s' "$OUT" | jfield running)" true
    eq "status --json on $n: conflicts" "$(printf '%s' "$OUT" | jfield conflicts)" 1
done
check_acked A B C

# peers --json: every node shows its neighbours on the line connected (and, soon, synced).
declare -A WANT_PEERS=([A]="${FPR[B]}" [B]="$(sorted_words "${FPR[A]}" "${FPR[C]}")" [C]="${FPR[B]}")
declare -A WANT_CONNS=([A]=1 [B]=2 [C]=1)
for n in A B C; do
    eq "peers --json on $n: connected peers" "$(connected_peers "$n")" "${WANT_PEERS[$n]}"
    got=""
    for _ in $(seq 1 120); do # up to ~30 s for the states to settle to synced
        got=$(synced_peers "$n")
        [ "$got" = "${WANT_PEERS[$n]}" ] && break
        sleep 0.25
    done
    eq "peers --json on $n: synced peers" "$got" "${WANT_PEERS[$n]}"
    eq "status --json on $n: connections" "$(status_field "$n" connections)" "${WANT_CONNS[$n]}"
    run "$FM" --dir "$T/$n" peers
    eq "peers (text) on $n: exit status" "$RC" 0
    contains "peers (text) on $n: header" "$OUT" "LAST SYNCED"
done
ok "$FM" --dir "$T/A" sync-now
contains "sync-now on A" "$OUT" "sync started with 1 connected peer"
note "phase 1: converged (state hash $H1), $CHECKS checks, $FAILS failed"

# ---- SIGTERM: clean exit; the stopped node's commands open the store themselves -----------------------
stop_node C
eq "status on stopped C: running" "$(status_field C running)" false
eq "status on stopped C: state hash kept" "$(status_field C state_hash)" "$H1"
run "$FM" --dir "$T/C" peers --json
eq "peers on stopped C: exit status" "$RC" 1
contains "peers on stopped C: says so" "$ERR" "no node is running"

# ---- a bulk backlog on C; B SIGKILLed while it receives it ----------------------------------------------
BULK_N=20000
# C comes back through a TCP relay that passes C -> B bytes at a bounded rate, so B receives the
# bulk over seconds whatever the machine's speed, and the kill below lands while it receives.
cat >"$T/throttle.py" <<'EOF'
import socket, sys, threading, time
port, target, rate = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
srv = socket.socket()
srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
srv.bind(("127.0.0.1", port))
srv.listen(16)
def pump(src, dst, limit):
    try:
        while True:
            data = src.recv(4096)
            if not data:
                break
            dst.sendall(data)
            if limit:
                time.sleep(len(data) / limit)
    except OSError:
        pass
    for s in (src, dst):
        try:
            s.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
while True:
    c, _ = srv.accept()
    try:
        u = socket.create_connection(("127.0.0.1", target))
    except OSError:
        c.close()
        continue
    threading.Thread(target=pump, args=(c, u, rate), daemon=True).start()
    threading.Thread(target=pump, args=(u, c, 0), daemon=True).start()
EOF
pick_port
RELAY=$PORT
python3 "$T/throttle.py" "$RELAY" "${LISTEN[B]}" $((256 * 1024)) 2>>"$T/relay.log" &
PID[relay]=$!

put_ok A notes while-c-down v=11
converge 60 A B || true # B has A's write before C comes back
attempt=0
killed_mid=0
while [ "$attempt" -lt 2 ] && [ "$killed_mid" = 0 ]; do
    attempt=$((attempt + 1))
    [ "$attempt" = 1 ] || stop_node C
    prefix="bk$attempt"
    c_before=$(status_field C ops)
    run "$BULK" "$T/C" bulk "$prefix" "$BULK_N" 10
    eq "bulk_writer into stopped C: exit status" "$RC" 0
    eq "bulk_writer output" "$OUT" "committed $BULK_N ops in $((BULK_N / 10)) batches"
    [ "$RC" -eq 0 ] || break
    EXPECTED_OPS=$((EXPECTED_OPS + BULK_N))
    BULK_PREFIXES="${BULK_PREFIXES:-} $prefix"
    eq "ops on stopped C after the bulk" "$(status_field C ops)" "$((c_before + BULK_N))"
    # An acknowledged write on B just before it starts receiving: it must survive the SIGKILL.
    put_ok B notes "before-kill-$attempt" v="$attempt"
    b_before=$(status_field B ops)
    start_node C --peer "127.0.0.1:$RELAY" || exit 1
    # Wait until B holds some of the bulk but not all of it, write on B again, then kill it.
    seen=""
    for _ in $(seq 1 1200); do # up to a minute or so
        seen=$(status_field B ops)
        [ -n "$seen" ] && [ "$seen" -gt "$b_before" ] && break
        sleep 0.05
    done
    dput=0
    behind=""
    if [ -n "$seen" ] && [ "$seen" -lt "$EXPECTED_OPS" ]; then
        behind=$(status_field B to_receive_ops) # informative: what B reports still to come
        put_ok B notes "during-sync-$attempt" v="$attempt" && dput=1
    fi
    kill -KILL "${PID[B]}"
    { wait "${PID[B]}"; } 2>/dev/null
    st=$?
    unset "PID[B]"
    eq "B died of SIGKILL" "$st" 137
    # The store after the kill: some of the bulk arrived, not all of it.
    b_after=$(status_field B ops)
    note "attempt $attempt: B had $b_before ops, saw $seen while receiving (to_receive_ops ${behind:-?}), holds $b_after after SIGKILL (total $EXPECTED_OPS)"
    if [ -n "$b_after" ] && [ "$b_after" -gt "$((b_before + dput))" ] &&
        [ "$b_after" -lt "$EXPECTED_OPS" ]; then
        killed_mid=1
    else
        note "attempt $attempt: the kill missed the sync (B had none or all of it); again with a new bulk"
        start_node B --peer "127.0.0.1:${LISTEN[A]}" || exit 1
        converge 120 A B C
    fi
done
eq "B was killed while receiving (some but not all of the bulk stored)" "$killed_mid" 1
# The killed node left a stale control.sock: the CLI sees no node and opens the store.
eq "status on killed B: running" "$(status_field B running)" false
run "$FM" --dir "$T/B" peers
eq "peers on killed B: exit status" "$RC" 1
contains "peers on killed B: says so" "$ERR" "no node is running"
ok "$FM" --dir "$T/B" get notes live-A
# While B is down, A and C go on writing; then B comes back.
put_ok A notes while-b-down-A v=21
put_ok C notes while-b-down-C v=22
if [ "$killed_mid" = 1 ]; then
    start_node B --peer "127.0.0.1:${LISTEN[A]}" || exit 1
fi
converge 120 A B C
H2=$(status_field A state_hash)

# Everything acknowledged is everywhere: the op counts (converge), every lww write, the bulk.
check_acked A B C
for n in A B C; do
    run "$FM" --dir "$T/$n" list bulk
    eq "list bulk on $n: exit status" "$RC" 0
    printf '%s\n' "$OUT" >"$T/bulk.$n"
    for prefix in $BULK_PREFIXES; do
        got=$(python3 - "$T/bulk.$n" "$prefix" "$BULK_N" <<'EOF'
import json, sys
path, prefix, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
have = {}
for l in open(path):
    if l.strip():
        r = json.loads(l)
        if r["_id"].startswith(prefix + "-"):
            have[r["_id"]] = r.get("v")
bad = [i for i in range(n) if have.get("%s-%06d" % (prefix, i)) != i]
first = (" (first %s-%06d)" % (prefix, bad[0])) if bad else ""
print("%d records, %d wrong or missing%s" % (len(have), len(bad), first))
EOF
)
        eq "bulk $prefix on $n" "$got" "$BULK_N records, 0 wrong or missing"
    done
done
for n in A B C; do
    ok "$FM" --dir "$T/$n" get bulk "bk1-000000"
    eq "bulk first record on $n" "$OUT" '{"v":0}'
    ok "$FM" --dir "$T/$n" get bulk "bk1-019999"
    eq "bulk last record on $n" "$OUT" '{"v":19999}'
    ok "$FM" --dir "$T/$n" conflicts
    contains "the conflict survives on $n" "$OUT" '"field":"dose"'
    eq "pending batches on $n" "$(status_field "$n" pending)" 0
done
note "phase 2: converged after the bulk and the SIGKILL (state hash $H2), $EXPECTED_OPS ops"

# ---- clean stop of everything ----------------------------------------------------------------------------
for n in A B C; do
    stop_node "$n"
done
for n in A B C; do
    eq "state hash of stopped $n" "$(status_field "$n" state_hash)" "$H2"
    eq "ops of stopped $n" "$(status_field "$n" ops)" "$EXPECTED_OPS"
    run "$FM" --dir "$T/$n" sync-now
    eq "sync-now on stopped $n: exit status" "$RC" 1
    contains "sync-now on stopped $n: says so" "$ERR" "no node is running"
done

# ---- SIGTERM with a command in flight ------------------------------------------------------------------
# A CLI that has connected to control.sock when the node gets SIGTERM, and sends its request just
# after: the node must still exit 0 (answering or dropping the request), and a put it answered 0
# must be in the store.
start_node A || exit 1
python3 - "$T/A/control.sock" "${PID[A]}" >"$T/inflight" 2>&1 <<'EOF'
import os, signal, socket, struct, sys, time
path, pid = sys.argv[1], int(sys.argv[2])
s = socket.socket(socket.AF_UNIX)
s.connect(path)
os.kill(pid, signal.SIGTERM)
time.sleep(0.3)  # the node is shutting down (it lingers about a second for final frames)
args = [b"fieldmesh", b"put", b"notes", b"inflight", b"v=1"]
try:
    s.sendall(struct.pack(">I", len(args)) + b"".join(struct.pack(">I", len(a)) + a for a in args))
    s.settimeout(30)
    reply = b""
    while True:
        d = s.recv(65536)
        if not d:
            break
        reply += d
except OSError as e:
    print("error", e)
    sys.exit(0)
print("answered", struct.unpack(">I", reply[:4])[0] if len(reply) >= 4 else "nothing")
EOF
wait "${PID[A]}"
st=$?
unset "PID[A]"
LAST="kill -TERM A; then a put request on its control socket"
eq "exit status of A after SIGTERM with a control request in flight ($(cat "$T/inflight"))" "$st" 0
CHECKS=$((CHECKS + 1))
[ ! -e "$T/A/control.sock" ] || fail "A left control.sock after SIGTERM with a request in flight"
if grep -q "answered 0" "$T/inflight"; then
    ok "$FM" --dir "$T/A" get notes inflight
    eq "the put the stopping node answered 0 is stored" "$OUT" '{"v":1}'
fi

printf 'test_live.sh: %d checks, %d failed\n' "$CHECKS" "$FAILS" >&2
[ "$FAILS" -eq 0 ]
