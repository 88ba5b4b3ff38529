#!/usr/bin/env bash
# check-ble.sh — `make check-ble`: the BLE tests on a real BlueZ stack in a qemu VM (vm.sh),
# one boot for all of them (guest-test.sh).
#
#   check-ble.sh BUILD_DIR     BUILD_DIR holds fieldmesh and tests/bulk_writer (a release build)
#
# Prepares a scratch directory (never the repository: the guest writes there as root) with the
# binaries and three node stores in one mesh, boots the VM, prints the results and the tail of
# each node's log on failure. Exit 0 pass, 1 fail, 77 skipped (not root, or no qemu).
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
S=$(mktemp -d "${TMPDIR:-/var/tmp}/fm-ble-run-XXXXXX")
cleanup() {
    if [ -n "${FM_BLE_KEEP:-}" ]; then echo "check-ble: kept $S"; else rm -rf "$S"; fi
}
trap cleanup EXIT
mkdir -p "$S/bin" "$S/nodes"
cp "$BUILD/fieldmesh" "$BUILD/tests/bulk_writer" "$S/bin/"
cp "$HERE/guest-test.sh" "$S/"
[ -z "${FM_BLE_SKIP_THIRD:-}" ] || touch "$S/skip-third"
[ -z "${FM_BLE_SKIP_RESTART:-}" ] || touch "$S/skip-restart"
[ -z "${FM_BLE_BTMON:-}" ] || touch "$S/btmon"
FM=$BUILD/fieldmesh
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
t0=$SECONDS
"$HERE/vm.sh" image >/dev/null
echo "check-ble: VM image ready in $((SECONDS - t0)) s"
rc=0
"$HERE/vm.sh" run "$S" guest-test.sh || rc=$?
grep -E "^FMVM:|^FMBLE:" "$S/console.log" || true
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
echo "check-ble: PASS"
