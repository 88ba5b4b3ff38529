#!/usr/bin/env bash
# check-ble.sh — `make check-ble`: the BLE tests on a real BlueZ stack in a qemu VM (vm.sh),
# one boot for all of them (guest-test.sh).
#
#   check-ble.sh BUILD_DIR     BUILD_DIR holds fieldmesh and tests/bulk_writer (a release build)
#
# Prepares a scratch directory (never the repository: the guest writes there as root) with the
# binaries and three node stores in one mesh, boots the VM, prints the results and the tail of
# each node's log on failure. A run that the guest kernel's known L2CAP bug broke (see
# known_kernel_bug) is booted once more, in a new directory. Exit 0 pass, 1 fail, 77 skipped
# (not root, or no qemu).
# Env: FM_BLE_KEEP=1 keeps the scratch directory; FM_BLE_SKIP_THIRD=1 leaves out the third daemon
# (step 5) and FM_BLE_SKIP_RESTART=1 the bluetoothd restart (step 6); FM_BLE_BTMON=1 records the
# HCI traffic (btmon.txt, with FM_BLE_KEEP=1); see vm.sh for the VM's knobs.
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
BUILD=$(cd "${1:?usage: check-ble.sh BUILD_DIR}" && pwd)
if [ "$(id -u)" -ne 0 ]; then
    echo "check-ble: SKIP: needs root (debootstrap for the VM image, once)"
    exit 77
fi
if ! command -v qemu-system-x86_64 >/dev/null; then
    echo "check-ble: SKIP: no qemu-system-x86_64 (tools/deps.sh installs qemu-system-x86)"
    exit 77
fi
# One scratch directory per attempt: the binaries and three node stores in one mesh.
prepare() {
    S=$(mktemp -d "${TMPDIR:-/var/tmp}/fm-ble-run-XXXXXX")
    SCRATCH+=("$S")
    mkdir -p "$S/bin" "$S/nodes"
    cp "$BUILD/fieldmesh" "$BUILD/tests/bulk_writer" "$S/bin/"
    cp "$HERE/guest-test.sh" "$S/"
    [ -z "${FM_BLE_SKIP_THIRD:-}" ] || touch "$S/skip-third"
    [ -z "${FM_BLE_SKIP_RESTART:-}" ] || touch "$S/skip-restart"
    [ -z "${FM_BLE_BTMON:-}" ] || touch "$S/btmon"
    export HOME=$S/home
    mkdir -p "$HOME"
    for n in A B C; do
        "$FM" --dir "$S/nodes/$n" init --name "ble-$n" >/dev/null
    done
    "$FM" --dir "$S/nodes/A" mesh create >/dev/null
    for n in B C; do
        key=$("$FM" --dir "$S/nodes/$n" status --json | sed -n 's/.*"device_key":"\([^"]*\)".*/\1/p')
        cert=$("$FM" --dir "$S/nodes/A" admit "$key" --name "ble-$n")
        "$FM" --dir "$S/nodes/$n" join "$cert" >/dev/null
    done
}

# The guest's kernel (Debian 6.1) sometimes corrupts its own list when an L2CAP socket is closed
# while the restarting bluetoothd takes the adapter down (kernel BUG in hci_chan_del, called from
# l2cap_sock_release): a kernel bug that also stops the closing daemon. Only that exact trace,
# and only once per check, earns a second boot.
known_kernel_bug() {
    grep -q "list_del corruption" "$S/dmesg.txt" 2>/dev/null &&
        grep -q "hci_chan_del" "$S/dmesg.txt" && grep -q "l2cap_sock_release" "$S/dmesg.txt"
}

SCRATCH=()
cleanup() {
    if [ -n "${FM_BLE_KEEP:-}" ]; then
        echo "check-ble: kept ${SCRATCH[*]}"
    else
        rm -rf "${SCRATCH[@]}"
    fi
}
trap cleanup EXIT
FM=$BUILD/fieldmesh
t0=$SECONDS
"$HERE/vm.sh" image >/dev/null
echo "check-ble: VM image ready in $((SECONDS - t0)) s"
for attempt in 1 2; do
    prepare
    rc=0
    "$HERE/vm.sh" run "$S" guest-test.sh || rc=$?
    grep -E "^FMVM:|^FMBLE:" "$S/console.log" || true
    if [ "$rc" -ne 0 ] && [ "$attempt" -eq 1 ] && known_kernel_bug; then
        echo "check-ble: the guest kernel hit its hci_chan_del list corruption (a kernel bug):"
        grep -E "list_del corruption|kernel BUG|hci_chan_del|l2cap_" "$S/dmesg.txt" | head -8 |
            sed 's/^/  /'
        echo "check-ble: booting the VM test once more"
        continue
    fi
    break
done
if [ -s "$S/results.txt" ]; then
    echo "check-ble: results (emulated air: btvirt, not a radio):"
    sed 's/^/  /' "$S/results.txt"
fi
if [ "$rc" -ne 0 ]; then
    for n in A B C; do
        [ -f "$S/logs/$n.log" ] || continue
        echo "---- last lines of node $n ----"
        tail -n 30 "$S/logs/$n.log"
    done
    echo "check-ble: FAIL (status $rc; console: $S/console.log, FM_BLE_KEEP=1 keeps it)"
    exit 1
fi
[ "$attempt" -eq 1 ] || echo "check-ble: passed on the second boot (the first hit the kernel bug)"
echo "check-ble: PASS"
