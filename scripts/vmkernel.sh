#!/usr/bin/env bash
# vmkernel.sh [PACKAGE]: make sure qemu and cpio are installed and
# Debian's cloud kernel (the image PACKAGE depends on, by default
# linux-image-cloud-amd64: Debian 12's 6.1; linux-image-6.12-cloud-amd64
# is another) is in the cache, with the modules a VM node needs (virtio
# PCI and network, those the kernel does not have built in), and print
# the kernel's directory:
#
#   DIR/vmlinuz     the kernel
#   DIR/release     its release (uname -r)
#   DIR/modules/    virtio_net and what it needs (.ko, or .ko.xz),
#                   modules.order listing them in the order to load
#
# scripts/vmtest.sh and the VM node of e2e (TestVMLive, make vmtest-live)
# use it. Environment: VMTEST_CACHE, the download cache (default
# ~/.cache/migrate-vmtest). Messages go to stderr; on failure it prints
# nothing on stdout and exits non-zero.
set -euo pipefail

cache=${VMTEST_CACHE:-${HOME:-/root}/.cache/migrate-vmtest}
meta=${1:-linux-image-cloud-amd64}

log() { echo "vmkernel: $*" >&2; }
die() {
	log "$*"
	exit 1
}

# --- tools, installed only if missing ---------------------------------------
updated=""
apt_update() {
	if [ -z "$updated" ]; then
		apt-get update -qq >&2 || die "apt-get update failed"
		updated=1
	fi
}
missing=""
command -v qemu-system-x86_64 >/dev/null || missing="$missing qemu-system-x86"
command -v cpio >/dev/null || missing="$missing cpio"
if [ -n "$missing" ]; then
	log "installing$missing"
	apt_update
	DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $missing >&2 || die "apt-get install$missing failed"
fi

# --- the kernel: the image linux-image-cloud-amd64 depends on, cached --------
kpkg_of() {
	apt-cache depends "$meta" 2>/dev/null |
		awk '/Depends: linux-image-[0-9]/ { print $2; exit }'
}
kpkg=$(kpkg_of || true)
if [ -z "$kpkg" ]; then
	apt_update
	kpkg=$(kpkg_of || true)
fi
if [ -z "$kpkg" ] && [ "$meta" = linux-image-cloud-amd64 ]; then
	# No apt lists (offline): take the newest 6.1 kernel already cached.
	kpkg=$(ls -1 "$cache" 2>/dev/null | grep '^linux-image-6\.1\.' | sort -V | tail -1 || true)
fi
[ -n "$kpkg" ] || die "cannot tell which package $meta depends on"
kdir=$cache/$kpkg
# The modules of a VM node, in the order they load (each after those it
# needs): virtio over PCI, then its network driver.
mods="virtio_ring virtio virtio_pci_legacy_dev virtio_pci_modern_dev virtio_pci failover net_failover virtio_net"
if [ ! -s "$kdir/vmlinuz" ] || [ ! -e "$kdir/modules/modules.order" ]; then
	log "downloading $kpkg"
	mkdir -p "$cache/dl" "$kdir"
	(cd "$cache/dl" && rm -f "$kpkg"_*.deb && apt-get download "$kpkg" >&2) || {
		apt_update
		(cd "$cache/dl" && apt-get download "$kpkg" >&2) || die "apt-get download $kpkg failed"
	}
	deb=$(ls -1 "$cache/dl/$kpkg"_*.deb | head -1)
	tmp=$(mktemp -d)
	trap 'rm -rf "$tmp"' EXIT
	dpkg-deb -x "$deb" "$tmp"
	img=$(ls -1 "$tmp"/boot/vmlinuz-* | head -1)
	[ -n "$img" ] || die "no boot/vmlinuz-* in $deb"
	rm -rf "$kdir/modules.tmp" && mkdir -p "$kdir/modules.tmp"
	: >"$kdir/modules.tmp/modules.order"
	for m in $mods; do
		ko=$(find "$tmp/lib/modules" -name "$m.ko" -o -name "$m.ko.xz" | head -1)
		if [ -z "$ko" ]; then
			grep -q "/$m\.ko\$" "$tmp"/lib/modules/*/modules.builtin || die "no $m.ko in $deb, nor built in"
			continue
		fi
		cp "$ko" "$kdir/modules.tmp/"
		basename "$ko" >>"$kdir/modules.tmp/modules.order"
	done
	rm -rf "$kdir/modules" && mv "$kdir/modules.tmp" "$kdir/modules"
	cp "$img" "$kdir/vmlinuz.tmp" && mv "$kdir/vmlinuz.tmp" "$kdir/vmlinuz"
	basename "$img" | sed 's/^vmlinuz-//' >"$kdir/release"
	rm -f "$deb"
fi
echo "$kdir"
