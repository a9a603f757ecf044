#!/usr/bin/env bash
# An installer ISO from the package mirror: the Debian 12 installer's own kernel and initrd (the
# text-mode netboot images of 'debian-installer-12-netboot-amd64'), made bootable by grub-mkrescue
# (BIOS and UEFI) with the installer's console on the serial line. Debian 12's package has no
# mini.iso, hence the wrapping; what boots is the installer as Debian ships it.
#
#   guest/installer/build.sh        output: guest/out/debian-installer.iso (cached by package version)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
out="$here/../out"
iso="$out/debian-installer.iso"
fail() { echo "guest/installer/build.sh: $*" >&2; exit 1; }
pkg=debian-installer-12-netboot-amd64
version=$(apt-cache show "$pkg" 2>/dev/null | awk '/^Version:/ {print $2; exit}')
[ -n "$version" ] || fail "the package '$pkg' is not known to apt (run 'apt-get update')"
stamp="$out/debian-installer.version"
if [ -f "$iso" ] && [ "$(cat "$stamp" 2>/dev/null)" = "$version" ]; then
  echo "installer ISO up to date ($iso, $pkg $version)"
  exit 0
fi
command -v grub-mkrescue >/dev/null || fail "missing grub-mkrescue (apt-get install -y grub-common grub-pc-bin grub-efi-amd64-bin xorriso mtools)"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
(cd "$work" && apt-get download "$pkg" >/dev/null 2>&1) || fail "could not download $pkg"
dpkg-deb -x "$work"/${pkg}_*.deb "$work/pkg"
images="$work/pkg/usr/lib/debian-installer/images/12/amd64/text/debian-installer/amd64"
mkdir -p "$work/iso/boot/grub"
cp "$images/linux" "$images/initrd.gz" "$work/iso/boot/"
cat > "$work/iso/boot/grub/grub.cfg" <<'CFG'
set timeout=0
serial --unit=0 --speed=115200
terminal_input serial console
terminal_output serial console
menuentry 'Debian 12 installer (serial console)' {
  linux /boot/linux console=ttyS0,115200n8 priority=low
  initrd /boot/initrd.gz
}
CFG
grub-mkrescue -o "$iso.tmp" "$work/iso" >/dev/null 2>&1 || fail "grub-mkrescue failed"
mv "$iso.tmp" "$iso"
echo "$version" > "$stamp"
echo "installer ISO built: $iso ($(du -h "$iso" | cut -f1), $pkg $version)"
