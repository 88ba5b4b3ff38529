#!/usr/bin/env bash
# deps.sh — the one place that lists the Debian 12 packages fieldmesh needs to build, test, fuzz and
# run its demo, and installs whichever are missing.
#
#   tools/deps.sh            install missing packages (as root), or explain how (as anyone else)
#   tools/deps.sh --check    exit 0 if everything is installed, 1 (listing what is missing) if not
#   tools/deps.sh --list     print the package list, one a line
#
# When every package is already installed it does nothing else (no apt-get, no network), so it is
# cheap to run before every build. The Makefile also keeps a stamp file so it is not even run
# again until this script or the dpkg database changes.
set -euo pipefail

# The package list. Keep it sorted by purpose; add new build/test dependencies here and nowhere else.
PACKAGES=(
    # toolchain
    build-essential cmake pkg-config
    # clang for libFuzzer builds (make fuzz) and clang-format for the style check
    clang clang-format libclang-rt-14-dev
    # libraries
    libsodium-dev libmsgpack-dev libsqlite3-dev sqlite3 libevent-dev libavahi-client-dev
    # BLE transport: sd-bus (bluetoothd over D-Bus) and the AF_BLUETOOTH/L2CAP headers
    libsystemd-dev libbluetooth-dev
    # services and tools used by integration tests
    avahi-daemon avahi-utils dbus iproute2 python3
    # link impairment in integration.mdns_mesh: iptables (loss, NFQUEUE) and the library of the
    # userspace delayer tools/nfq_delay.c (the kernel has no netem)
    iptables libnetfilter-queue-dev
    # make check-ble: a qemu VM (TCG) with BlueZ, built with debootstrap from Debian's packages,
    # and its btvirt built from Debian's bluez source (fetched, checked, patched: tests/ble/vm.sh)
    qemu-system-x86 debootstrap cpio curl xz-utils patch
)

missing_packages() {
    local pkg status
    for pkg in "${PACKAGES[@]}"; do
        status=$(dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null || true)
        if [ "$status" != "install ok installed" ]; then
            printf '%s\n' "$pkg"
        fi
    done
}

case "${1:-}" in
--list)
    printf '%s\n' "${PACKAGES[@]}"
    exit 0
    ;;
--check | "") ;;
*)
    echo "usage: $0 [--check | --list]" >&2
    exit 2
    ;;
esac

if ! command -v dpkg-query >/dev/null 2>&1; then
    echo "deps.sh: dpkg-query not found; this script supports Debian 12 only." >&2
    echo "deps.sh: install the equivalents of: ${PACKAGES[*]}" >&2
    exit 1
fi

mapfile -t MISSING < <(missing_packages)
if [ "${#MISSING[@]}" -eq 0 ]; then
    exit 0
fi

INSTALL_CMD="apt-get install -y --no-install-recommends ${MISSING[*]}"

if [ "${1:-}" = "--check" ]; then
    echo "deps.sh: missing packages: ${MISSING[*]}" >&2
    exit 1
fi

if [ "$(id -u)" -ne 0 ]; then
    echo "deps.sh: missing Debian packages: ${MISSING[*]}" >&2
    echo "deps.sh: run as root (or with sudo):" >&2
    echo "    apt-get update && $INSTALL_CMD" >&2
    exit 1
fi

echo "deps.sh: installing missing packages: ${MISSING[*]}"
export DEBIAN_FRONTEND=noninteractive
APT_OPTS=(-o Acquire::Retries=3 -o DPkg::Lock::Timeout=600)
apt-get "${APT_OPTS[@]}" update </dev/null
UNAVAILABLE=()
for pkg in "${MISSING[@]}"; do
    if ! apt-cache policy "$pkg" 2>/dev/null | grep 'Candidate: [^(]' >/dev/null; then
        UNAVAILABLE+=("$pkg")
    fi
done
if [ "${#UNAVAILABLE[@]}" -ne 0 ]; then
    echo "deps.sh: not available from the configured apt sources: ${UNAVAILABLE[*]}" >&2
    echo "deps.sh: this list is for Debian 12 (bookworm); see /etc/apt/sources.list*" >&2
    exit 1
fi
apt-get "${APT_OPTS[@]}" install -y --no-install-recommends "${MISSING[@]}" </dev/null

mapfile -t MISSING < <(missing_packages)
if [ "${#MISSING[@]}" -ne 0 ]; then
    echo "deps.sh: still missing after install: ${MISSING[*]}" >&2
    exit 1
fi
echo "deps.sh: all packages installed"
