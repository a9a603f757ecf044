#!/usr/bin/env bash
# Builds ferry's guest image from Debian packages: the cloud kernel, busybox-static,
# and our small static programs (src/*.c), packed into an initramfs.
#
#   guest/build.sh [--force] [--update-kernel]
#
# Output (guest/out/): vmlinuz, initramfs.gz, ferry-guest.iso (the same, booted by GRUB), manifest.json. The build is skipped when
# its inputs (this script, rootfs/, src/, the kernel and busybox versions) are unchanged.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
out="$here/out"
cache="$out/cache"
fail() { echo "guest/build.sh: $*" >&2; exit 1; }
force=0
update_kernel=0
for arg in "$@"; do
  case "$arg" in
    --force) force=1 ;;
    --update-kernel) force=1; update_kernel=1 ;;
    *) fail "unknown option '$arg' (use --force or --update-kernel)" ;;
  esac
done

need_tool() { command -v "$1" >/dev/null 2>&1 || fail "missing tool '$1' (install the Debian package '$2': apt-get install -y $2)"; }

need_tool gcc gcc
need_tool cpio cpio
need_tool gzip gzip
need_tool dpkg-deb dpkg
need_tool apt-get apt
need_tool sha256sum coreutils
need_tool flock util-linux
need_tool grub-mkrescue grub-common
need_tool xorriso xorriso
need_tool mformat mtools
[ -d /usr/lib/grub/i386-pc ] || fail "missing GRUB's BIOS modules (install the Debian package 'grub-pc-bin')"
[ -d /usr/lib/grub/x86_64-efi ] || fail "missing GRUB's UEFI modules (install the Debian package 'grub-efi-amd64-bin')"
[ -f /usr/include/stdio.h ] || fail "missing C headers (install the Debian package 'libc6-dev')"
busybox=/bin/busybox
if [ ! -x "$busybox" ] || ldd "$busybox" >/dev/null 2>&1; then
  fail "missing a static busybox at $busybox (install the Debian package 'busybox-static': apt-get install -y busybox-static)"
fi

# The kernel is pinned: the package first downloaded (out/kernel.pin, its .deb kept in out/cache)
# stays the image's kernel although 'apt-get update' moves 'linux-image-cloud-amd64' to a new ABI,
# so a changed package list never invalidates a working image (agents, in namespaces without a
# route to the mirror, could not download a new one). --update-kernel moves to the current one.
mkdir -p "$out" "$cache"
pin_file="$out/kernel.pin"
kernel_pkg=""
if [ $update_kernel = 0 ] && [ -s "$pin_file" ]; then
  pinned=$(cat "$pin_file")
  if ls "$cache/${pinned}"_*.deb >/dev/null 2>&1; then kernel_pkg=$pinned; fi
fi
if [ -z "$kernel_pkg" ]; then
  kernel_pkg=$(apt-cache depends linux-image-cloud-amd64 2>/dev/null | awk '/Depends: linux-image-[0-9]/ {print $2; exit}')
  [ -n "$kernel_pkg" ] || fail "cannot resolve the package 'linux-image-cloud-amd64' (run 'apt-get update' first)"
fi
busybox_version=$(dpkg-query -W -f='${Version}' busybox-static 2>/dev/null || echo unknown)

inputs_hash=$( {
  echo "kernel=$kernel_pkg busybox=$busybox_version"
  cat "$here/build.sh"
  (cd "$here" && find rootfs src -type f | LC_ALL=C sort | xargs sha256sum)
} | sha256sum | cut -c1-16)

# Tests build the image from parallel processes: one build at a time, and the
# others then find it up to date. An image that does not unpack is rebuilt.
mkdir -p "$out"
exec 9>"$out/.build.lock"
flock 9
if [ $force = 0 ] && [ -f "$out/manifest.json" ] && grep -q "\"inputsHash\": \"$inputs_hash\"" "$out/manifest.json" \
   && [ -f "$out/vmlinuz" ] && [ -f "$out/initramfs.gz" ] && [ -f "$out/ferry-guest.iso" ] && gzip -t "$out/initramfs.gz" 2>/dev/null; then
  echo "guest image up to date ($out, inputs $inputs_hash)"
  exit 0
fi

mkdir -p "$cache"
deb=$(ls "$cache/${kernel_pkg}"_*.deb 2>/dev/null | head -1 || true)
if [ -z "$deb" ]; then
  echo "downloading $kernel_pkg ..."
  (cd "$cache" && apt-get download "$kernel_pkg" >/dev/null 2>&1) || fail "could not download the Debian package '$kernel_pkg' (check 'apt-get update' and the package sources)"
  deb=$(ls "$cache/${kernel_pkg}"_*.deb | head -1)
fi
echo "$kernel_pkg" > "$pin_file"
# Older kernels' packages are no longer needed once the pin moved.
for old in "$cache"/linux-image-*.deb; do
  case "$old" in "$cache/${kernel_pkg}"_*) ;; *) rm -f "$old" ;; esac
done

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
dpkg-deb -x "$deb" "$work/kernel"
kver=${kernel_pkg#linux-image-}
moddir="$work/kernel/lib/modules/$kver/kernel"
[ -d "$moddir" ] || fail "kernel package $kernel_pkg has no modules under lib/modules/$kver"

root="$work/root"
mkdir -p "$root"/{bin,dev,proc,sys,tmp,run,etc,lib/modules}
cp -a "$here/rootfs/." "$root/"
cp "$busybox" "$root/bin/busybox"
for m in $(cat "$here/rootfs/etc/modules.order"); do
  ko=$(find "$moddir" -name "$m.ko" | head -1)
  [ -n "$ko" ] || fail "module $m.ko not found in $kernel_pkg"
  cp "$ko" "$root/lib/modules/$m.ko"
done
for prog in "$here"/src/*.c; do
  name=$(basename "$prog" .c)
  gcc -O2 -static -Wall -Wextra -Werror -o "$root/bin/$name" "$prog" || fail "compiling $prog failed"
  strip "$root/bin/$name" 2>/dev/null || true
done

mkdir -p "$out"
cp "$work/kernel/boot/vmlinuz-$kver" "$out/vmlinuz.tmp"
(cd "$root" && find . | LC_ALL=C sort | cpio -o -H newc --quiet -R 0:0) | gzip -9 > "$out/initramfs.gz.tmp"
mv "$out/vmlinuz.tmp" "$out/vmlinuz"
mv "$out/initramfs.gz.tmp" "$out/initramfs.gz"

# The same guest as a bootable image (GRUB for BIOS and UEFI, hybrid: a CD or a disk), for VMs that
# boot through firmware: no address on its command line, it takes one from a cloud-init seed.
iso_root="$work/iso"
mkdir -p "$iso_root/boot/grub"
cp "$out/vmlinuz" "$out/initramfs.gz" "$iso_root/boot/"
cat > "$iso_root/boot/grub/grub.cfg" <<'CFG'
set timeout=0
serial --unit=0 --speed=115200
terminal_input serial console
terminal_output serial console
menuentry 'ferry guest' {
  linux /boot/vmlinuz console=ttyS0 quiet panic=-1 ferry.seed=cidata ferry.memcheck=16 ferry.dirty=1
  initrd /boot/initramfs.gz
}
CFG
grub-mkrescue -o "$out/ferry-guest.iso.tmp" "$iso_root" >/dev/null 2>&1 || fail "grub-mkrescue failed (it needs the Debian packages grub-common grub-pc-bin grub-efi-amd64-bin xorriso mtools)"
mv "$out/ferry-guest.iso.tmp" "$out/ferry-guest.iso"
cat > "$out/manifest.json" <<JSON
{
  "inputsHash": "$inputs_hash",
  "kernelPackage": "$kernel_pkg",
  "busyboxVersion": "$busybox_version",
  "programs": [$(for p in "$here"/src/*.c; do printf '"%s",' "$(basename "$p" .c)"; done | sed 's/,$//')],
  "readyLine": "FERRY-GUEST-READY"
}
JSON
echo "guest image built: $out/vmlinuz, $out/initramfs.gz ($(du -h "$out/initramfs.gz" | cut -f1)), inputs $inputs_hash"
