#!/usr/bin/env bash
# vm.sh — a throw-away qemu VM with a real BlueZ stack (kernel bluetooth, hci_vhci, btvirt virtual
# LE controllers joined by emulated air, dbus, bluetoothd) for the BLE tests (make check-ble).
# The host kernel here has no Bluetooth; the guest runs Debian's own kernel in TCG mode, and a
# btvirt built from Debian's bluez source with btvirt-peripheral-handle.patch (see its header).
#
#   vm.sh image             build the image once (debootstrap + Debian's kernel .deb + btvirt, as
#                           root), cached under $FM_BLE_CACHE/<hash of this script and the
#                           patch>; prints its dir
#   vm.sh btvirt DIR        only build the patched btvirt, into DIR/btvirt
#   vm.sh run DIR SCRIPT    boot once with host DIR shared read-write at /mnt/fm (virtio-9p), the
#                           controllers powered and bluetoothd up, run "sh /mnt/fm/SCRIPT" in the
#                           guest, power off; exit with SCRIPT's status (DIR/rc). Console:
#                           DIR/console.log. SCRIPT sees FM_HCI_ADDRS="addr0 addr1 ...".
#   vm.sh clean             remove every cached image
#
# Env: FM_BLE_CACHE (default /var/tmp/fieldmesh-ble), FM_BLE_CONTROLLERS (default 3),
#      FM_BLE_TIMEOUT (default 900 s for the whole boot).
# DIR must be a scratch directory, not the repository: guest root writes there as host root.
# The VM has no network device (-nic none); the only I/O is the console and the 9p share.
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
CACHE=${FM_BLE_CACHE:-/var/tmp/fieldmesh-ble}
BTVIRT_PATCH=$HERE/btvirt-peripheral-handle.patch
# The image is rebuilt when this script (the recipe) or the btvirt patch changes.
KEY=$(cat "$HERE/vm.sh" "$BTVIRT_PATCH" | sha256sum | cut -c1-16)
IMG=$CACHE/$KEY
# Runtime libraries of the project's binaries and the BlueZ stack (btmgmt, bluetoothctl and
# bluetoothd are in bluez; btvirt is built here, so not Debian's bluez-test-tools).
GUEST_PACKAGES=bluez,kmod,dbus,procps,libevent-2.1-7,libbluetooth3,libsodium23,libmsgpackc2,libsqlite3-0,libavahi-client3,libsystemd0
# The bluez source btvirt is built from: the guest's own bluez version (bookworm), pinned by the
# sha256 its .dsc lists, so a changed or truncated download stops the build.
BLUEZ_VERSION=5.66
BLUEZ_DEBIAN_VERSION=5.66-1+deb12u2
BLUEZ_ORIG_SHA256=a231fb9d151780edf6d2536c81914e2dbd3daa36b68f486badaf98a7f34021e4
BLUEZ_DEBIAN_SHA256=75dbf1e325782512ecee5e1609662b05a8a49c9998efbd03e349220482102f1c

die() {
    echo "vm.sh: $*" >&2
    exit 1
}

debian_mirror() { # the host's own apt mirror (deb822 or one-line sources)
    local m
    m=$(awk '/^URIs:/ {print $2; exit}' /etc/apt/sources.list.d/*.sources 2>/dev/null || true)
    [ -n "$m" ] || m=$(awk '$1 == "deb" {print $2; exit}' /etc/apt/sources.list 2>/dev/null || true)
    [ -n "$m" ] || die "no Debian mirror in /etc/apt"
    echo "$m"
}

# fetch_verified URL FILE SHA256: URL into FILE, which must have the pinned hash.
fetch_verified() {
    local got
    curl -fsS --retry 3 -o "$2" "$1" || die "cannot download $1"
    got=$(sha256sum "$2" | cut -d' ' -f1)
    [ "$got" = "$3" ] || die "$1: sha256 $got, expected $3 (pinned in vm.sh; if the mirror has" \
        "moved past bluez $BLUEZ_DEBIAN_VERSION, take the new version and hashes from its .dsc" \
        "and check that btvirt-peripheral-handle.patch still applies and is still needed)"
}

# build_btvirt DIR: DIR/btvirt from Debian's bluez source (the orig tarball and Debian's patch
# series, which touches emulator/ only in a comment) plus our patch. The 20 files btvirt is made
# of are compiled straight with gcc, not through configure and its dozen -dev build dependencies;
# the defines are what configure finds on Debian 12. Built on the host (Debian 12, the guest's
# release), it links only libc.
build_btvirt() {
    local out=$1 src=$1/bluez-src pool p h
    pool="$(debian_mirror)"
    pool="${pool%/}/pool/main/b/bluez"
    rm -rf "$src"
    mkdir -p "$src"
    fetch_verified "$pool/bluez_$BLUEZ_VERSION.orig.tar.xz" "$out/orig.tar.xz" "$BLUEZ_ORIG_SHA256"
    fetch_verified "$pool/bluez_$BLUEZ_DEBIAN_VERSION.debian.tar.xz" "$out/debian.tar.xz" \
        "$BLUEZ_DEBIAN_SHA256"
    tar -xJf "$out/orig.tar.xz" -C "$src" --strip-components=1
    tar -xJf "$out/debian.tar.xz" -C "$src"
    while read -r p; do
        case $p in '' | '#'*) continue ;; esac
        patch -d "$src" -p1 -s <"$src/debian/patches/$p" || die "Debian's $p does not apply"
    done <"$src/debian/patches/series"
    patch -d "$src" -p1 -s <"$BTVIRT_PATCH" ||
        die "$BTVIRT_PATCH does not apply to bluez $BLUEZ_DEBIAN_VERSION"
    # <bluetooth/x.h> is lib/x.h, as bluez's own build links it.
    mkdir -p "$src/lib/bluetooth"
    for h in "$src"/lib/*.h; do ln -sf "../${h##*/}" "$src/lib/bluetooth/"; done
    (cd "$src" && gcc -O2 -g -Wall -Wno-unused-parameter -I. -Ilib \
        -DVERSION="\"$BLUEZ_DEBIAN_VERSION+peripheral-handle\"" -DHAVE_GETRANDOM \
        -DHAVE_SYS_RANDOM_H -DHAVE_LINUX_IF_ALG_H -DHAVE_LINUX_TYPES_H -o "$out/btvirt" \
        emulator/main.c emulator/serial.c emulator/server.c emulator/vhci.c emulator/btdev.c \
        emulator/bthost.c emulator/smp.c emulator/phy.c emulator/amp.c emulator/le.c \
        src/shared/queue.c src/shared/util.c src/shared/crypto.c src/shared/ecc.c \
        src/shared/io-mainloop.c src/shared/timeout-mainloop.c src/shared/mainloop.c \
        src/shared/mainloop-notify.c lib/bluetooth.c lib/hci.c) >"$out/build.log" 2>&1 ||
        die "btvirt does not compile: see $out/build.log"
}

# PID 1 of the guest: mounts, modules, btvirt, power the controllers, dbus + bluetoothd, 9p, the
# test, power off. Parameters come on the kernel command line (fm.ctrl=N).
write_init() {
    cat >"$1/init" <<'INIT'
#!/bin/sh
export PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root
mount -t proc proc /proc; mount -t sysfs sysfs /sys; mount -t devtmpfs devtmpfs /dev
mount -t tmpfs tmpfs /run; mount -t tmpfs tmpfs /tmp
up() { cut -d' ' -f1 /proc/uptime; }
arg() { tr ' ' '\n' </proc/cmdline | sed -n "s/^$1=//p"; }
echo "FMVM: userspace at ${0} uptime $(up) s"
N=$(arg fm.ctrl); N=${N:-3}
modprobe hci_vhci
echo "FMVM: btvirt $(btvirt --version)"
btvirt -L -l"$N" >/tmp/btvirt.log 2>&1 &
last=$((N - 1)); i=0
while [ ! -e /sys/class/bluetooth/hci$last ] && [ $i -lt 200 ]; do sleep 0.1; i=$((i + 1)); done
ADDRS=""
for n in $(seq 0 $last); do
    timeout 10 btmgmt --index $n le on >/dev/null
    timeout 10 btmgmt --index $n power on >/dev/null
    ADDRS="$ADDRS $(timeout 10 btmgmt --index $n info | awk '$1 == "addr" {print $2; exit}')"
done
export FM_HCI_ADDRS="${ADDRS# }"
mkdir -p /run/dbus; dbus-daemon --system --fork --nopidfile
/usr/libexec/bluetooth/bluetoothd -n >/tmp/bluetoothd.log 2>&1 &
i=0
until [ "$(timeout 5 bluetoothctl list 2>/dev/null | grep -c Controller)" -ge "$N" ] || [ $i -ge 100 ]; do
    sleep 0.2; i=$((i + 1))
done
echo "FMVM: $N controllers ($FM_HCI_ADDRS), bluetoothd up, uptime $(up) s"
modprobe virtio_pci; modprobe 9pnet_virtio; modprobe 9p
i=0
until ls /sys/bus/virtio/drivers/9pnet_virtio/virtio* >/dev/null 2>&1 || [ $i -ge 100 ]; do sleep 0.1; i=$((i + 1)); done
mkdir -p /mnt/fm
mount -t 9p -o trans=virtio,version=9p2000.L,msize=262144 fmshare /mnt/fm
(cd /mnt/fm && sh "/mnt/fm/$(arg fm.script)"); rc=$?
cp /tmp/bluetoothd.log /mnt/fm/bluetoothd.log 2>/dev/null
echo "$rc" >/mnt/fm/rc; sync
echo "FMVM: exit $rc, uptime $(up) s"
echo o >/proc/sysrq-trigger; sleep 10
INIT
    chmod +x "$1/init"
}

cmd_image() {
    if [ -f "$IMG/initrd.cpio" ] && [ -f "$IMG/vmlinuz" ]; then
        echo "$IMG"
        return 0
    fi
    [ "$(id -u)" -eq 0 ] || die "building the image needs root (debootstrap, chroot)"
    local t0=$SECONDS tmp=$CACHE/tmp-$KEY-$$
    rm -rf "$tmp"
    mkdir -p "$tmp"
    local root=$tmp/root
    echo "vm.sh: building the BLE test image in $IMG (debootstrap, a few minutes)" >&2
    # btvirt first: a download or a patch that no longer applies fails in seconds.
    mkdir -p "$tmp/btvirt"
    build_btvirt "$tmp/btvirt"
    debootstrap --variant=minbase --include="$GUEST_PACKAGES" bookworm "$root" \
        "$(debian_mirror)" >"$tmp/debootstrap.log" 2>&1 ||
        die "debootstrap failed: see $tmp/debootstrap.log"
    # The kernel: whatever linux-image-amd64 points at, unpacked, not installed.
    local kpkg kver
    kpkg=$(apt-cache depends linux-image-amd64 | awk '/Depends: linux-image-[0-9]/ {print $2; exit}')
    [ -n "$kpkg" ] || die "cannot resolve linux-image-amd64 (apt-get update?)"
    (cd "$tmp" && apt-get download "$kpkg" >/dev/null && dpkg-deb -x ./*.deb kernel)
    kver=$(ls "$tmp/kernel/lib/modules")
    local m=$tmp/kernel/lib/modules/$kver dst=$root/lib/modules/$kver
    rm -rf "$dst"
    mkdir -p "$dst"
    # Only the modules the stack needs (depmod resolves their dependencies).
    (cd "$m" && cp --parents -r kernel/net/bluetooth kernel/drivers/bluetooth kernel/crypto \
        kernel/lib/crc16.ko kernel/net/rfkill kernel/drivers/virtio kernel/fs/9p kernel/net/9p \
        kernel/fs/netfs kernel/fs/fscache modules.order modules.builtin \
        modules.builtin.modinfo "$dst/")
    chroot "$root" depmod "$kver"
    install -m 0755 "$tmp/btvirt/btvirt" "$root/usr/bin/btvirt"
    rm -rf "$root"/usr/share/{doc,man,info,locale} "$root"/var/cache/apt/archives/*.deb \
        "$root"/var/lib/apt/lists/*
    write_init "$root"
    mkdir -p "$IMG.new"
    cp "$tmp/kernel/boot/vmlinuz-$kver" "$IMG.new/vmlinuz"
    (cd "$root" && find . -xdev | cpio --quiet -o -H newc) >"$IMG.new/initrd.cpio"
    rm -rf "$IMG" "$tmp"
    mv "$IMG.new" "$IMG"
    echo "vm.sh: image built in $((SECONDS - t0)) s ($(du -sh "$IMG" | cut -f1))" >&2
    echo "$IMG"
}

cmd_run() {
    local dir script t0 rc=0
    dir=$(cd "${1:?usage: vm.sh run DIR SCRIPT}" && pwd)
    script=${2:?usage: vm.sh run DIR SCRIPT}
    [ -f "$dir/$script" ] || die "no $dir/$script"
    cmd_image >/dev/null
    rm -f "$dir/rc"
    t0=$(date +%s%N)
    # -nic none: no network at all. TCG (no KVM here), 2 vCPUs.
    timeout "${FM_BLE_TIMEOUT:-900}" qemu-system-x86_64 -accel tcg,thread=multi -smp 2 -m 1536 \
        -nic none -kernel "$IMG/vmlinuz" -initrd "$IMG/initrd.cpio" \
        -append "console=ttyS0 rdinit=/init panic=-1 loglevel=4 edd=off fm.ctrl=${FM_BLE_CONTROLLERS:-3} fm.script=$script" \
        -virtfs "local,path=$dir,mount_tag=fmshare,security_model=none" \
        -nographic -no-reboot </dev/null >"$dir/console.log" 2>&1 || rc=$?
    echo "vm.sh: VM wall time $((($(date +%s%N) - t0) / 1000000)) ms (qemu status $rc)" >&2
    [ -f "$dir/rc" ] || die "the guest reported no status (see $dir/console.log)"
    return "$(cat "$dir/rc")"
}

case ${1:-} in
image) cmd_image ;;
btvirt)
    mkdir -p "${2:?usage: vm.sh btvirt DIR}"
    build_btvirt "$(cd "$2" && pwd)"
    echo "$2/btvirt"
    ;;
run)
    shift
    cmd_run "$@"
    ;;
clean) rm -rf "$CACHE" ;;
*)
    sed -n '2,20p' "$0"
    exit 2
    ;;
esac
