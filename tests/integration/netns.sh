#!/usr/bin/env bash
# netns.sh — the harness for integration tests that run real nodes on a real (virtual) network:
# one Linux network namespace per node, veth "cables" between them, a private dbus-daemon and
# avahi-daemon per node for mDNS, link impairment on kernels without netem, and a teardown that
# also runs when the test fails, is interrupted, or is killed outright.
#
# Sourced by tests/integration/test_*.sh (functions nn_*, variables NN_*):
#   nn_require CMD...            not root, no `ip netns`, or a CMD missing: say why, exit 77 (SKIP)
#   nn_begin NAME                run state in $NN_STATE; teardown traps (EXIT INT TERM HUP) and a
#                                guardian process that tears down if the test is SIGKILLed
#   nn_node X                    a namespace for node X: lo up, IP forwarding off
#   nn_link X Y N                a cable X<->Y: "to-Y" in X is 10.77.N.1/24, "to-X" in Y 10.77.N.2/24
#   nn_addr X Y                  X's address on its cable to Y
#   nn_mdns_up X...              per node: its own dbus-daemon and avahi-daemon (on all its cables,
#                                no reflector); returns when every avahi has finished probing
#   nn_avahi X stop|kill|start   stop = SIGTERM (goodbyes sent), kill = SIGKILL (a crash)
#   nn_spawn X TAG LOG CMD...    CMD in X's namespace with X's bus, in the background, output to
#                                LOG; its PID (and start time) recorded as TAG
#   nn_stop SIGNAL TAG...        signal recorded processes, wait up to 5 s, then SIGKILL
#   nn_pid TAG                   the PID recorded as TAG, if that process still runs
#   nn_x X CMD...                CMD in X's namespace with X's bus, in the foreground
#   nn_cable X Y up|down         plug / unplug a cable (both ends lose carrier)
#   nn_impair X Y [--loss PCT] [--delay MS] [--jitter MS] [--rate RATE]
#                                traffic that X receives from Y is dropped (iptables statistic)
#                                and delayed (NFQUEUE + tools/nfq_delay, $NN_NFQ_DELAY); traffic X
#                                sends to Y is rate-limited (tc tbf). Impair both ends for both
#                                directions.
#   nn_unimpair X Y              remove it; prints what the loss rule and the delayer counted
#   nn_wait SECONDS CMD...       run CMD every 50 ms until it succeeds; status 1 on timeout
#   nn_now_ms                    monotonic-enough wall clock in milliseconds, for printed timings
#
# Run directly:
#   netns.sh down STATE_DIR      tear down one run by hand (NN_KEEP=1 runs leave their state)
#   netns.sh reap                tear down every run whose test process is gone
#   netns.sh guard STATE PID     (internal) wait for PID to end, then tear down STATE
#
# What it touches: only namespaces it creates (named fm<id>-<node>, listed in STATE/netns) and the
# processes it starts (stopped by recorded PID after checking the start time, so a reused PID is
# never signalled). Nothing in the root namespace's network changes; addresses are 10.77.N.0/24
# inside the namespaces. Set NN_KEEP=1 to keep the state directory (logs) after a run.

NN_ROOT=${NN_ROOT:-${TMPDIR:-/tmp}/fm-netns}
NN_SELF=$(readlink -f "${BASH_SOURCE[0]}")

# ---- small tools -------------------------------------------------------------------------------

nn_now_ms() {
    date +%s%3N
}

nn_wait() {
    local deadline=$(($(nn_now_ms) + $1 * 1000))
    shift
    until "$@" >/dev/null 2>&1; do
        (($(nn_now_ms) < deadline)) || return 1
        sleep 0.05
    done
}

nn__log() {
    printf 'netns: %s\n' "$*" >&2
}

# The kernel's start time of PID (clock ticks since boot), or nothing if there is no such process.
# Fields after "(comm)" start at field 3; starttime is field 22.
nn__start_time() {
    local stat
    stat=$(cat "/proc/$1/stat" 2>/dev/null) || return 0
    stat=${stat##*) }
    set -- $stat
    printf '%s\n' "${20}"
}

# nn__record TAG PID: remember a process we started.
nn__record() {
    printf '%s %s\n' "$2" "$(nn__start_time "$2")" >"$NN_STATE/pids/$1"
}

# The PID recorded as TAG if that very process still runs (same start time), else nothing.
nn__live_pid() {
    local state=$1 tag=$2 pid start
    [ -f "$state/pids/$tag" ] || return 0
    read -r pid start <"$state/pids/$tag" || return 0
    [ -n "$pid" ] && [ -n "$start" ] && [ "$(nn__start_time "$pid")" = "$start" ] && echo "$pid"
}

# nn__stop_in STATE SIGNAL TAG...: signal the live ones, wait up to 5 s for all, SIGKILL the rest.
nn__stop_in() {
    local state=$1 sig=$2 tag pid pids=()
    local -A starts=()
    shift 2
    for tag in "$@"; do
        pid=$(nn__live_pid "$state" "$tag")
        rm -f "$state/pids/$tag"
        [ -n "$pid" ] || continue
        starts[$pid]=$(nn__start_time "$pid")
        kill "-$sig" "$pid" 2>/dev/null && pids+=("$pid")
    done
    [ "${#pids[@]}" -gt 0 ] || return 0
    local deadline=$(($(nn_now_ms) + 5000)) left
    while :; do
        left=0
        for pid in "${pids[@]}"; do
            # a zombie (not yet reaped) counts as gone
            [ -e "/proc/$pid" ] && [ "$(awk '{print $3}' "/proc/$pid/stat" 2>/dev/null)" != Z ] &&
                left=1
        done
        ((left && $(nn_now_ms) < deadline)) || break
        sleep 0.05
    done
    for pid in "${pids[@]}"; do
        # only a process still there under its recorded start time (never a reused PID)
        [ "$(nn__start_time "$pid")" = "${starts[$pid]}" ] && kill -KILL "$pid" 2>/dev/null
    done
    return 0
}

nn__ns() {
    echo "$NN_ID-$1"
}

nn__bus() {
    echo "unix:path=$NN_STATE/node/$1/dbus.sock"
}

# ---- teardown ----------------------------------------------------------------------------------

# Everything a run made, in order: its processes (nodes and delayers first, then avahi, then dbus:
# avahi says goodbye over its bus), its namespaces (their veths, addresses, firewall rules and
# qdiscs go with them), its state. Safe to run twice and from another process.
nn__teardown() {
    local state=$1 first=() avahi=() dbus=() f tag ns
    [ -d "$state" ] || return 0
    for f in "$state"/pids/*; do
        [ -e "$f" ] || continue
        tag=${f##*/}
        case $tag in
        guard) continue ;; # the caller: nn__on_exit stops it, or it is the one tearing down
        avahi-*) avahi+=("$tag") ;;
        dbus-*) dbus+=("$tag") ;;
        *) first+=("$tag") ;;
        esac
    done
    nn__stop_in "$state" TERM "${first[@]}"
    nn__stop_in "$state" TERM "${avahi[@]}"
    nn__stop_in "$state" TERM "${dbus[@]}"
    if [ -f "$state/netns" ]; then
        while read -r ns; do
            [ -n "$ns" ] && ip netns del "$ns" 2>/dev/null
        done <"$state/netns"
    fi
    if [ "${NN_KEEP:-0}" = 1 ]; then
        nn__log "kept $state"
        rm -f "$state/owner"
    else
        rm -rf "$state"
    fi
}

nn__on_exit() {
    local rc=$?
    trap - EXIT INT TERM HUP
    local g
    g=$(nn__live_pid "$NN_STATE" guard)
    [ -n "$g" ] && kill -KILL "$g" 2>/dev/null
    rm -f "$NN_STATE/pids/guard"
    nn__teardown "$NN_STATE"
    exit "$rc"
}

# The guardian: a process outside the test's process tree (ctest kills a timed-out test's whole
# tree with SIGKILL, so no trap runs) that tears the run down once the test is gone.
nn__guard() {
    local state=$1 pid=$2 start=$3
    while [ -d "$state" ] && [ "$(nn__start_time "$pid")" = "$start" ]; do
        sleep 1
    done
    sleep 0.5 # let the killed tree finish dying
    nn__teardown "$state"
}

# Runs whose test process is gone (a guardian that was itself killed, a machine that rebooted).
nn_reap() {
    local d pid start
    for d in "$NN_ROOT"/*/; do
        d=${d%/}
        [ -f "$d/owner" ] || continue
        read -r pid start <"$d/owner" || continue
        if [ "$(nn__start_time "$pid")" != "$start" ]; then
            nn__log "reaping the leftovers of an earlier run: $d"
            nn__teardown "$d"
        fi
    done
}

# ---- setup -------------------------------------------------------------------------------------

nn_require() {
    local cmd
    if [ "$(id -u)" -ne 0 ]; then
        echo "SKIP: needs root (network namespaces, avahi-daemon, iptables)" >&2
        exit 77
    fi
    for cmd in ip unshare mount awk "$@"; do
        if ! command -v "$cmd" >/dev/null 2>&1; then
            echo "SKIP: $cmd not found (install what is missing: tools/deps.sh)" >&2
            exit 77
        fi
    done
    local probe="fmprobe$$"
    if ! ip netns add "$probe" 2>/dev/null; then
        echo "SKIP: cannot create a network namespace (ip netns add failed)" >&2
        exit 77
    fi
    ip netns del "$probe"
}

nn_begin() {
    mkdir -p "$NN_ROOT"
    nn_reap
    NN_ID="fm$$"
    NN_STATE="$NN_ROOT/$1-$$"
    rm -rf "$NN_STATE"
    mkdir -p "$NN_STATE/pids" "$NN_STATE/node"
    : >"$NN_STATE/netns"
    printf '%s %s\n' "$$" "$(nn__start_time $$)" >"$NN_STATE/owner"
    trap nn__on_exit EXIT
    trap 'exit 130' INT
    trap 'exit 143' TERM
    trap 'exit 129' HUP
    # Double fork: the guardian's parent exits at once, so it is no part of the test's tree.
    (setsid bash "$NN_SELF" guard "$NN_STATE" "$$" "$(nn__start_time $$)" \
        </dev/null >>"$NN_STATE/guard.log" 2>&1 &
        echo $! >"$NN_STATE/guard.pid")
    nn__record guard "$(cat "$NN_STATE/guard.pid")"
}

nn_node() {
    local ns
    ns=$(nn__ns "$1")
    mkdir -p "$NN_STATE/node/$1/run"
    : >"$NN_STATE/node/$1/ifaces"
    ip netns add "$ns" || return 1
    echo "$ns" >>"$NN_STATE/netns"
    ip -n "$ns" link set lo up
    ip netns exec "$ns" sysctl -qw net.ipv4.ip_forward=0 net.ipv6.conf.all.forwarding=0
}

nn_link() {
    local x=$1 y=$2 n=$3
    ip -n "$(nn__ns "$x")" link add "to-$y" type veth peer name "to-$x" netns "$(nn__ns "$y")" ||
        return 1
    ip -n "$(nn__ns "$x")" addr add "10.77.$n.1/24" dev "to-$y"
    ip -n "$(nn__ns "$y")" addr add "10.77.$n.2/24" dev "to-$x"
    ip -n "$(nn__ns "$x")" link set "to-$y" up
    ip -n "$(nn__ns "$y")" link set "to-$x" up
    echo "to-$y 10.77.$n.1" >>"$NN_STATE/node/$x/ifaces"
    echo "to-$x 10.77.$n.2" >>"$NN_STATE/node/$y/ifaces"
}

nn_addr() {
    awk -v i="to-$2" '$1 == i { print $2 }' "$NN_STATE/node/$1/ifaces"
}

nn__write_dbus_conf() {
    local d=$NN_STATE/node/$1
    cat >"$d/dbus.conf" <<EOF
<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <!-- node $1's private system bus: its avahi-daemon and the node's avahi client only -->
  <type>system</type>
  <listen>unix:path=$d/dbus.sock</listen>
  <auth>EXTERNAL</auth>
  <policy context="default">
    <allow user="*"/>
    <deny own="*"/>
    <deny send_type="method_call"/>
    <allow send_type="signal"/>
    <allow send_requested_reply="true" send_type="method_return"/>
    <allow send_requested_reply="true" send_type="error"/>
    <allow receive_type="method_call"/>
    <allow receive_type="method_return"/>
    <allow receive_type="error"/>
    <allow receive_type="signal"/>
    <allow send_destination="org.freedesktop.DBus"/>
  </policy>
  <!-- brings avahi's policy: root owns org.freedesktop.Avahi, everyone may call it -->
  <includedir>/usr/share/dbus-1/system.d</includedir>
</busconfig>
EOF
}

# Every namespace shares one UTS host name, so each avahi gets its own; only this node's cables.
nn__write_avahi_conf() {
    local d=$NN_STATE/node/$1 ifs
    ifs=$(awk '{ printf "%s%s", (NR > 1 ? "," : ""), $1 }' "$d/ifaces")
    cat >"$d/avahi-daemon.conf" <<EOF
[server]
host-name=fm-$1
domain-name=local
use-ipv4=yes
use-ipv6=no
allow-interfaces=$ifs
enable-dbus=yes
ratelimit-interval-usec=1000000
ratelimit-burst=1000

[wide-area]
enable-wide-area=no

[publish]
publish-hinfo=no
publish-workstation=no
publish-addresses=yes

[reflector]
enable-reflector=no

[rlimits]
EOF
}

# avahi-daemon's pid file and socket are fixed under /run/avahi-daemon, so each one runs in its
# own mount namespace with the node's directory bound on /run. ip netns exec, unshare (without
# --fork) and exec keep the PID, so $! is avahi-daemon itself.
nn__start_avahi() {
    local x=$1 d=$NN_STATE/node/$1
    mkdir -p "$d/run/avahi-daemon"
    rm -f "$d/run/avahi-daemon/pid"
    echo "---- start $(date -u +%T.%3N)" >>"$d/avahi.log"
    ip netns exec "$(nn__ns "$x")" unshare --mount --propagation private \
        env DBUS_SYSTEM_BUS_ADDRESS="$(nn__bus "$x")" D="$d" \
        sh -c 'mount --bind "$D/run" /run && exec avahi-daemon --file="$D/avahi-daemon.conf" \
                   --no-chroot --no-drop-root --no-rlimits --no-proc-title' \
        >>"$d/avahi.log" 2>&1 &
    nn__record "avahi-$x" $!
    disown $! # killing it on purpose (nn_avahi X kill) is not news for the test's stderr
}

# Waits for the "Server startup complete" of the current avahi run (after the last start mark).
nn__avahi_ready() {
    awk '/^---- start/ { ok = 0 } /Server startup complete/ { ok = 1 } END { exit !ok }' \
        "$NN_STATE/node/$1/avahi.log"
}

nn__wait_avahi() {
    if ! nn_wait 15 nn__avahi_ready "$1"; then
        nn__log "avahi-daemon of $1 did not start:"
        tail -n 20 "$NN_STATE/node/$1/avahi.log" >&2
        return 1
    fi
}

nn_mdns_up() {
    local x d
    for x in "$@"; do
        d=$NN_STATE/node/$x
        nn__write_dbus_conf "$x"
        nn__write_avahi_conf "$x"
        ip netns exec "$(nn__ns "$x")" dbus-daemon --config-file="$d/dbus.conf" --nofork \
            --nopidfile >"$d/dbus.log" 2>&1 &
        nn__record "dbus-$x" $!
        disown $!
    done
    for x in "$@"; do
        nn_wait 5 test -S "$NN_STATE/node/$x/dbus.sock" ||
            { nn__log "dbus-daemon of $x did not start" && return 1; }
        nn__start_avahi "$x"
    done
    for x in "$@"; do
        nn__wait_avahi "$x" || return 1
    done
}

nn_avahi() {
    case $2 in
    stop) nn__stop_in "$NN_STATE" TERM "avahi-$1" ;;
    kill) nn__stop_in "$NN_STATE" KILL "avahi-$1" ;;
    start) nn__start_avahi "$1" && nn__wait_avahi "$1" ;;
    *)
        nn__log "nn_avahi NODE stop|kill|start"
        return 2
        ;;
    esac
}

nn_spawn() {
    local x=$1 tag=$2 log=$3
    shift 3
    ip netns exec "$(nn__ns "$x")" env DBUS_SYSTEM_BUS_ADDRESS="$(nn__bus "$x")" "$@" \
        </dev/null >>"$log" 2>&1 &
    nn__record "$tag" $!
}

# The PID recorded as TAG while that process runs (a child of the test: `wait` gives its status).
nn_pid() {
    nn__live_pid "$NN_STATE" "$1"
}

nn_stop() {
    local sig=$1
    shift
    nn__stop_in "$NN_STATE" "$sig" "$@"
}

nn_x() {
    local x=$1
    shift
    ip netns exec "$(nn__ns "$x")" env DBUS_SYSTEM_BUS_ADDRESS="$(nn__bus "$x")" "$@"
}

nn_cable() {
    ip -n "$(nn__ns "$1")" link set "to-$2" "$3"
}

# ---- impairment --------------------------------------------------------------------------------

nn__ipt() {
    ip netns exec "$(nn__ns "$1")" iptables "${@:2}"
}

nn_impair() {
    local x=$1 y=$2 loss=0 delay=0 jitter=0 rate="" dev="to-$2" chain="FMIMPAIR-to-$2"
    shift 2
    while [ $# -gt 0 ]; do
        case $1 in
        --loss) loss=$2 ;;
        --delay) delay=$2 ;;
        --jitter) jitter=$2 ;;
        --rate) rate=$2 ;;
        *)
            nn__log "nn_impair: unknown option $1"
            return 2
            ;;
        esac
        shift 2
    done
    nn_unimpair "$x" "$y" >/dev/null
    nn__ipt "$x" -N "$chain" || return 1
    nn__ipt "$x" -I INPUT -i "$dev" -j "$chain" || return 1
    if [ "$loss" != 0 ]; then
        nn__ipt "$x" -A "$chain" -m statistic --mode random \
            --probability "$(awk -v l="$loss" 'BEGIN { printf "%.6f", l / 100 }')" -j DROP ||
            return 1
    fi
    if [ "$delay" != 0 ] || [ "$jitter" != 0 ]; then
        if [ ! -x "${NN_NFQ_DELAY:-}" ]; then
            nn__log "nn_impair: delay needs the nfq_delay tool (NN_NFQ_DELAY='${NN_NFQ_DELAY:-}')"
            return 1
        fi
        # one queue per cable: its line number in the node's cable list
        local q
        q=$(awk -v i="$dev" '$1 == i { print NR }' "$NN_STATE/node/$x/ifaces")
        # without --queue-bypass: if the delayer dies the link fails closed, not silently fast
        nn__ipt "$x" -A "$chain" -j NFQUEUE --queue-num "$q" || return 1
        nn_spawn "$x" "nfq-$x-$y" "$NN_STATE/node/$x/nfq-$y.log" "$NN_NFQ_DELAY" "$q" "$delay" \
            "$jitter"
        disown $!
        if ! nn_wait 5 grep -q "nfq_delay: queue" "$NN_STATE/node/$x/nfq-$y.log"; then
            nn__log "nfq_delay did not start:"
            cat "$NN_STATE/node/$x/nfq-$y.log" >&2
            return 1
        fi
    fi
    if [ -n "$rate" ]; then
        ip netns exec "$(nn__ns "$x")" tc qdisc add dev "$dev" root tbf rate "$rate" \
            burst 16kb latency 200ms || return 1
    fi
    echo "$x<-$y: loss $loss%, delay ${delay}ms +- ${jitter}ms; $x->$y: rate ${rate:-unlimited}"
}

nn_unimpair() {
    local x=$1 y=$2 dev="to-$2" chain="FMIMPAIR-to-$2"
    if nn__ipt "$x" -S "$chain" >/dev/null 2>&1; then
        local dropped
        dropped=$(nn__ipt "$x" -L "$chain" -v -x -n 2>/dev/null | awk '/statistic/ { print $1 }')
        [ -n "$dropped" ] && echo "$x<-$y: the loss rule dropped $dropped packets"
        nn__ipt "$x" -D INPUT -i "$dev" -j "$chain"
        nn__ipt "$x" -F "$chain"
        nn__ipt "$x" -X "$chain"
    fi
    if [ -n "$(nn__live_pid "$NN_STATE" "nfq-$x-$y")" ]; then
        nn_stop TERM "nfq-$x-$y"
        tail -n 1 "$NN_STATE/node/$x/nfq-$y.log"
    fi
    ip netns exec "$(nn__ns "$x")" tc qdisc del dev "$dev" root 2>/dev/null
    return 0
}

# ---- run directly ------------------------------------------------------------------------------

if [ "${BASH_SOURCE[0]}" = "$0" ]; then
    case ${1:-} in
    down)
        [ -n "${2:-}" ] || exit 2
        nn__teardown "$2"
        ;;
    reap) nn_reap ;;
    guard)
        [ $# -eq 4 ] || exit 2
        NN_KEEP=${NN_KEEP:-0}
        nn__guard "$2" "$3" "$4"
        ;;
    *)
        sed -n '2,40p' "$0"
        exit 2
        ;;
    esac
fi
