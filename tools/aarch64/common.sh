# Shared by prepare.sh and run.sh (sourced, not run).
CACHE=${AARCH64_CACHE:-$HOME/.cache/alexnet-deploy/aarch64}
ROOTFS=$CACHE/rootfs
# The host's Debian release: its mirror serves arm64 too, and it is the one mirror we know we reach.
SUITE=${AARCH64_SUITE:-$(. /etc/os-release && echo "$VERSION_CODENAME")}

say() { printf '\033[1m[aarch64]\033[0m %s\n' "$*" >&2; }
die() { printf 'Error: %s\n' "$*" >&2; exit 1; }

[ "$(id -u)" -eq 0 ] || die "needs root (debootstrap, chroot, binfmt_misc); run as root or via sudo"

# Let the kernel hand aarch64 ELF files to qemu-aarch64-static, so that chroot, pip's build
# subprocesses and anything else the emulated Python starts run too. The F flag opens the
# emulator now, so it need not exist inside the root filesystem. Without systemd nothing else
# registers it; the line is the one the qemu-user-static package ships for systemd-binfmt.
enable_binfmt() {
    local dir=/proc/sys/fs/binfmt_misc conf=/usr/lib/binfmt.d/qemu-aarch64.conf
    [ -e "$dir/register" ] || mount -t binfmt_misc binfmt_misc "$dir" \
        || die "cannot mount binfmt_misc (needed to run arm64 binaries)"
    [ -e "$dir/qemu-aarch64" ] && return
    [ -f "$conf" ] || die "$conf missing: apt-get install qemu-user-static"
    grep -v '^#' "$conf" | head -n1 >"$dir/register"
}

# /proc for Python (cpu counts, /proc/self), /dev for /dev/null and urandom; the host's DNS and
# trust store for pip (where HTTPS goes through a proxy, its CA is only in the host's bundle).
HOST_CA=${PIP_CERT:-${SSL_CERT_FILE:-/etc/ssl/certs/ca-certificates.crt}}
mount_rootfs() {
    mountpoint -q "$ROOTFS/proc" || mount -t proc proc "$ROOTFS/proc"
    mountpoint -q "$ROOTFS/dev" || mount --bind /dev "$ROOTFS/dev"
    cp -L /etc/resolv.conf /etc/hosts "$ROOTFS/etc/"
    if [ -f "$HOST_CA" ]; then cp -L "$HOST_CA" "$ROOTFS/etc/ssl/host-ca.crt"; fi
}

umount_rootfs() {
    umount -l "$ROOTFS/dev" 2>/dev/null || true
    umount -l "$ROOTFS/proc" 2>/dev/null || true
}

# The emulated CPU model. QEMU's default ("max") has every arm64 extension (SVE, i8mm, ...), so ONNX
# Runtime would pick int8 kernels no Jetson runs. Cortex-A76 is the closest QEMU 7.2 model to Orin's
# Cortex-A78AE: the same ARMv8.2-A features (fp16, dot product), no i8mm, no SVE. No /sys is mounted:
# with the host's (x86) /sys, ONNX Runtime's cpuinfo crashed at import; without it cpuinfo warns and
# ORT reads the CPU features from the kernel's HWCAP bits, which QEMU sets from this model.
export QEMU_CPU=${AARCH64_CPU:-cortex-a76}

# A command inside the arm64 root filesystem with a clean environment (the host's pip settings
# point at x86_64 wheel folders that do not exist there). QEMU_CPU is passed on: every arm64
# program started inside starts its own emulator.
in_rootfs() {
    chroot "$ROOTFS" /usr/bin/env -i HOME=/root LANG=C.UTF-8 TERM="${TERM:-dumb}" COLUMNS="${COLUMNS:-120}" \
        QEMU_CPU="$QEMU_CPU" \
        PATH=/opt/venv/bin:/usr/local/bin:/usr/bin:/bin PIP_DISABLE_PIP_VERSION_CHECK=1 \
        PIP_CERT="$(ca_in_rootfs)" \
        PIP_DEFAULT_TIMEOUT="${PIP_DEFAULT_TIMEOUT:-120}" "$@"
}

ca_in_rootfs() {
    if [ -f "$ROOTFS/etc/ssl/host-ca.crt" ]; then echo /etc/ssl/host-ca.crt; else echo /etc/ssl/certs/ca-certificates.crt; fi
}
