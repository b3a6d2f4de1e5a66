#!/usr/bin/env bash
# Prepare, once per machine, an arm64 Debian userland that this x86_64 host runs under QEMU's
# user-mode emulator: a root filesystem made by debootstrap from the host's own Debian mirror, with
# python3 and a venv holding the runtime's dependencies (no torch). run.sh installs the project
# itself into that venv on every run, so only the slow, unchanging part is cached here.
#
# Cache: $AARCH64_CACHE (default ~/.cache/alexnet-deploy/aarch64), outside the repository.
# Needs root (apt-get, debootstrap, chroot, binfmt_misc). Idempotent: a finished step is skipped.
set -euo pipefail
source "$(dirname "$0")/common.sh"

# The host packages: the static emulator (its binfmt.d file names the aarch64 ELF magic) and debootstrap.
install_host_tools() {
    local missing=()
    command -v qemu-aarch64-static >/dev/null || missing+=(qemu-user-static)
    command -v debootstrap >/dev/null || missing+=(debootstrap)
    [ ${#missing[@]} -eq 0 ] && return
    say "apt-get install ${missing[*]}"
    apt-get update -q >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null
}

# The Debian mirror and release the host itself uses (so nothing else has to be reachable).
host_mirror() {
    apt-get indextargets --format '$(REPO_URI) $(RELEASE)' 'Created-By: Packages' \
        | awk -v suite="$SUITE" '$2 == suite && $1 ~ /\/debian\/$/ {print $1; exit}'
}

make_rootfs() {
    [ -e "$ROOTFS/.stage2-done" ] && return
    local mirror
    mirror=${AARCH64_MIRROR:-$(host_mirror)}
    [ -n "$mirror" ] || die "no Debian mirror for '$SUITE' in the host's apt sources; set AARCH64_MIRROR"
    rm -rf "$ROOTFS"
    say "debootstrap --arch arm64 --foreign $SUITE (from $mirror)"
    # minbase + python3-venv: the smallest userland that can make a venv and pip-install wheels.
    debootstrap --arch arm64 --foreign --variant=minbase \
        --include=python3,python3-venv,ca-certificates "$SUITE" "$ROOTFS" "$mirror" >"$CACHE/debootstrap-1.log"
    say "debootstrap second stage (arm64 binaries under QEMU; the slow part)"
    chroot "$ROOTFS" /debootstrap/debootstrap --second-stage >"$CACHE/debootstrap-2.log" 2>&1 \
        || die "second stage failed; see $CACHE/debootstrap-2.log and $ROOTFS/debootstrap/debootstrap.log"
    touch "$ROOTFS/.stage2-done"
}

# The runtime's dependencies, taken from the same pyproject the project installs with, minus torch:
# a later `pip install project[ort]` then only adds the project itself.
make_venv() {
    [ -e "$ROOTFS/opt/venv/.deps-done" ] && return
    say "python3 -m venv /opt/venv and the runtime's wheels (numpy, Pillow, onnxruntime, onnx ...) for aarch64"
    in_rootfs python3 -m venv /opt/venv
    in_rootfs /opt/venv/bin/python -m pip install -q --upgrade pip
    in_rootfs /opt/venv/bin/python -m pip install -q numpy Pillow click rich onnxruntime onnx
    touch "$ROOTFS/opt/venv/.deps-done"
}

main() {
    local started=$SECONDS
    mkdir -p "$CACHE"
    install_host_tools
    enable_binfmt
    make_rootfs
    mount_rootfs
    trap umount_rootfs EXIT
    make_venv
    say "prepared $ROOTFS in $((SECONDS - started)) s ($(du -sh "$ROOTFS" 2>/dev/null | cut -f1))"
}

main "$@"
