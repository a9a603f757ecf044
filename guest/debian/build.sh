#!/usr/bin/env bash
# Builds a real Debian 12 guest from the package mirror alone: a minimal system with systemd,
# openssh-server, qemu-guest-agent, cloud-init and the OpenArena (Quake 3 engine) dedicated server,
# on a GPT disk that boots through UEFI (GRUB on an EFI system partition). No loop device and no
# mount: the root file system is made by 'mkfs.ext4 -d', the EFI partition with mtools, and both
# are written into the disk image at their offsets.
#
#   guest/debian/build.sh [--force]
#
# Output (guest/out/debian/): debian-12-openarena.qcow2 and manifest.json. Skipped when this
# script and the package list are unchanged (the build downloads about 600 MB and takes minutes).
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
out="$here/../out/debian"
image="$out/debian-12-openarena.qcow2"
fail() { echo "guest/debian/build.sh: $*" >&2; exit 1; }
force=0
[ "${1:-}" = --force ] && force=1

[ "$(id -u)" = 0 ] || fail "run as root (debootstrap and mkfs.ext4 -d must keep file owners)"
need_tool() { command -v "$1" >/dev/null 2>&1 || fail "missing tool '$1' (apt-get install -y $2)"; }
need_tool debootstrap debootstrap
need_tool mkfs.ext4 e2fsprogs
need_tool mkfs.fat dosfstools
need_tool mcopy mtools
need_tool sfdisk fdisk
need_tool grub-mkstandalone grub-common
need_tool qemu-img qemu-utils
[ -d /usr/lib/grub/x86_64-efi ] || fail "missing GRUB's UEFI modules (apt-get install -y grub-efi-amd64-bin)"

# debootstrap lays down the base; apt installs the rest inside it (apt orders the configuration of a
# large set of packages correctly, where debootstrap's --include does not: python3-cryptography
# failed to configure that way).
base=(systemd-sysv udev dbus)
packages=(linux-image-cloud-amd64 initramfs-tools openssh-server qemu-guest-agent cloud-init
  ifupdown iproute2 netbase procps openarena-server)
suite=bookworm
mirror=$(awk '/^URIs:/ && /debian\/?$/ {print $2; exit}' /etc/apt/sources.list.d/debian.sources 2>/dev/null || true)
[ -n "$mirror" ] || mirror=$(awk '$1 == "deb" && $3 == "bookworm" {print $2; exit}' /etc/apt/sources.list 2>/dev/null || true)
[ -n "$mirror" ] || mirror=http://deb.debian.org/debian

inputs_hash=$( { cat "$0"; echo "${base[*]} ${packages[*]} $suite"; } | sha256sum | cut -c1-16)
mkdir -p "$out"
exec 9>"$out/.build.lock"
flock 9
if [ $force = 0 ] && [ -f "$image" ] && grep -q "\"inputsHash\": \"$inputs_hash\"" "$out/manifest.json" 2>/dev/null; then
  echo "Debian guest image up to date ($image, inputs $inputs_hash)"
  exit 0
fi

work=$(mktemp -d "$out/.work-XXXXXX")
root="$work/root"
cleanup() {
  umount "$root/proc" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT
started=$(date +%s)
log="$out/build.log"
echo "debootstrap $suite from $mirror ..."
debootstrap --variant=minbase --components=main --include="$(IFS=,; echo "${base[*]}")" "$suite" "$root" "$mirror" > "$log" 2>&1 \
  || { cp "$root/debootstrap/debootstrap.log" "$out/debootstrap.log" 2>/dev/null; tail -20 "$log" >&2; fail "debootstrap failed (log above; $out/debootstrap.log)"; }
echo "debootstrap done in $(( $(date +%s) - started )) s; installing ${packages[*]} ..."
# Nothing starts in the chroot: services run in the guest.
printf '#!/bin/sh\nexit 101\n' > "$root/usr/sbin/policy-rc.d"
chmod +x "$root/usr/sbin/policy-rc.d"
mount -t proc proc "$root/proc"
{
  chroot "$root" apt-get update
  DEBIAN_FRONTEND=noninteractive chroot "$root" apt-get install -y --no-install-recommends "${packages[@]}"
} >> "$log" 2>&1 || { tail -30 "$log" >&2; fail "installing the guest's packages failed (log above; $log)"; }
umount "$root/proc"
rm -f "$root/usr/sbin/policy-rc.d"
echo "packages installed in $(( $(date +%s) - started )) s"

# --- the system's configuration -----------------------------------------------------------------
echo "ferry-debian" > "$root/etc/hostname"
cat > "$root/etc/fstab" <<'FSTAB'
LABEL=ferry-root  /  ext4  defaults,errors=remount-ro  0  1
FSTAB
# cloud-init: only the NoCloud seed ferry attaches (no waiting for cloud metadata services); the
# C.UTF-8 locale, which needs no locales package.
cat > "$root/etc/cloud/cloud.cfg.d/90-ferry.cfg" <<'CFG'
datasource_list: [ NoCloud, None ]
locale: C.UTF-8
CFG
cat > "$root/etc/network/interfaces" <<'ENI'
auto lo
iface lo inet loopback
source /etc/network/interfaces.d/*
ENI
# The OpenArena server: a free-for-all on oa_dm1 with two bots (players that score while nobody
# plays), status answered to anyone, rcon for the demo's checks on the lab's private network.
cat > "$root/etc/openarena-server/server.cfg" <<'CFG'
set sv_hostname "ferry OpenArena"
set g_gametype 0
set sv_maxclients 8
set bot_enable 1
set bot_minplayers 0
set rconpassword "ferry-lab"
map oa_dm1
addbot Angelyss 1
addbot Grism 1
CFG
chroot "$root" systemctl enable openarena-server.service >/dev/null 2>&1 || true
chroot "$root" systemctl enable ssh.service >/dev/null 2>&1 || true
# No password login at all: cloud-init puts the user's SSH keys in place.
chroot "$root" passwd -l root >/dev/null
# Smaller: documentation and the apt cache are not needed in a guest.
rm -rf "$root/var/cache/apt/archives/"*.deb "$root/usr/share/doc/"* "$root/usr/share/man/"* "$root/var/lib/apt/lists/"*

kernel=$(cd "$root/boot" && ls vmlinuz-* | sort -V | tail -1)
initrd="initrd.img-${kernel#vmlinuz-}"
[ -f "$root/boot/$initrd" ] || fail "the kernel package made no initramfs ($root/boot/$initrd)"

# --- the EFI system partition: GRUB, standalone, with a config that finds the root by its label ---
cat > "$work/grub.cfg" <<CFG
set timeout=0
serial --unit=0 --speed=115200
terminal_input serial console
terminal_output serial console
search --no-floppy --label ferry-root --set root
linux /boot/$kernel root=LABEL=ferry-root ro console=ttyS0,115200 net.ifnames=0
initrd /boot/$initrd
boot
CFG
grub-mkstandalone -O x86_64-efi --modules="part_gpt ext2 search_label linux normal serial" -o "$work/BOOTX64.EFI" "boot/grub/grub.cfg=$work/grub.cfg" >/dev/null
esp_mib=64
mkfs.fat -C -n ESP "$work/esp.img" $((esp_mib * 1024)) >/dev/null
mmd -i "$work/esp.img" ::/EFI ::/EFI/BOOT
mcopy -i "$work/esp.img" "$work/BOOTX64.EFI" ::/EFI/BOOT/BOOTX64.EFI

# --- the root file system, sized to its contents with room to spare ------------------------------
used_mib=$(du -sm --exclude=./proc --exclude=./sys --exclude=./dev "$root" | cut -f1)
root_mib=$(( used_mib * 13 / 10 + 256 ))
rm -rf "$root/dev/"* "$root/proc/"* "$root/sys/"* "$root/run/"* 2>/dev/null || true
mkfs.ext4 -q -L ferry-root -d "$root" "$work/root.img" "${root_mib}M"

# --- the disk: GPT, the two partitions at their offsets --------------------------------------------
disk_mib=$(( 1 + esp_mib + root_mib + 1 ))
truncate -s "${disk_mib}M" "$work/disk.raw"
sfdisk -q "$work/disk.raw" <<PARTS
label: gpt
start=1MiB, size=${esp_mib}MiB, type=C12A7328-F81F-11D2-BA4B-00A0C93EC93B, name="EFI system"
start=$((1 + esp_mib))MiB, size=${root_mib}MiB, type=0FC63DAF-8483-4772-8E79-3D69D8477DE4, name="root"
PARTS
dd if="$work/esp.img" of="$work/disk.raw" bs=1M seek=1 conv=notrunc,sparse status=none
dd if="$work/root.img" of="$work/disk.raw" bs=1M seek=$((1 + esp_mib)) conv=notrunc,sparse status=none
qemu-img convert -O qcow2 "$work/disk.raw" "$image.tmp"
mv "$image.tmp" "$image"
cat > "$out/manifest.json" <<JSON
{
  "inputsHash": "$inputs_hash",
  "suite": "$suite",
  "kernel": "$kernel",
  "packages": "$(chroot "$root" dpkg-query -W -f='${Package} ' 2>/dev/null | wc -w) installed",
  "diskMiB": $disk_mib,
  "buildSeconds": $(( $(date +%s) - started ))
}
JSON
echo "Debian guest image built: $image ($(du -h "$image" | cut -f1) on disk, ${disk_mib} MiB virtual) in $(( $(date +%s) - started )) s"
