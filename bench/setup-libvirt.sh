#!/usr/bin/env bash
# Installs libvirt for the benchmark's libvirt baseline (bench/libvirt.ts), if it is missing or
# older than 11: the baseline must drive the same QEMU as ferry (QEMU 10, which scripts/setup.sh
# installs from bookworm-backports on Debian 12), so on Debian 12 libvirt 11 comes from the same
# suite, pinned like QEMU: only libvirt's own packages come from there. Debian 13 ships libvirt 11. Tests do not need it, so
# scripts/setup.sh does not install it; `npm run bench` runs this script when
# libvirt is missing.
#
# Only the daemon, its QEMU driver and virsh: not libvirt-daemon-system, which
# brings init scripts, the default NAT network (dnsmasq, iptables) and
# services. Nothing is started: the benchmark runs its own libvirtd processes
# inside network namespaces and stops them. While apt runs, a policy-rc.d that
# refuses every service start is put in place if the machine has none (and
# removed afterwards), so a package's maintainer script cannot start a global
# daemon either.
set -euo pipefail

driver=/usr/lib/x86_64-linux-gnu/libvirt/connection-driver/libvirt_driver_qemu.so
have_user() { getent passwd libvirt-qemu >/dev/null && getent group libvirt-qemu >/dev/null; }
libvirt_major() { dpkg-query -W -f='${Version}' libvirt-daemon 2>/dev/null | sed -E 's/^[0-9]+://; s/\..*//'; }
if command -v libvirtd >/dev/null && command -v virsh >/dev/null && [ -e "$driver" ] && have_user && [ "$(libvirt_major)" -ge 11 ] 2>/dev/null; then
  exit 0
fi
if [ "$(id -u)" != 0 ]; then
  echo "setup-libvirt: must run as root to install libvirt-daemon, libvirt-daemon-driver-qemu, libvirt-clients" >&2
  exit 1
fi

policy=/usr/sbin/policy-rc.d
if [ ! -e "$policy" ]; then
  printf '#!/bin/sh\n# temporary, bench/setup-libvirt.sh: no service starts while libvirt installs\nexit 101\n' >"$policy"
  chmod 755 "$policy"
  trap 'rm -f "$policy"' EXIT
fi

export DEBIAN_FRONTEND=noninteractive
codename=$(. /etc/os-release 2>/dev/null && echo "${VERSION_CODENAME:-}")
if [ "$codename" = bookworm ]; then
  [ -e /etc/apt/sources.list.d/ferry-backports.sources ] || { echo "setup-libvirt: run 'bash scripts/setup.sh' first (it adds bookworm-backports for QEMU 10)" >&2; exit 1; }
  pin=$(printf '# ferry bench: libvirt 11 from bookworm-backports, for a baseline on the same QEMU 10; nothing else.\nPackage: libvirt-* libvirt0\nPin: release n=bookworm-backports\nPin-Priority: 990\n')
  [ "$(cat /etc/apt/preferences.d/ferry-libvirt 2>/dev/null)" = "$pin" ] || echo "$pin" > /etc/apt/preferences.d/ferry-libvirt
fi
packages=(libvirt-daemon libvirt-daemon-driver-qemu libvirt-clients libvirt-daemon-log)
if ! apt-get install -y -q --no-install-recommends "${packages[@]}"; then
  apt-get update -q
  apt-get install -y -q --no-install-recommends "${packages[@]}"
fi

# The QEMU driver resolves its compiled-in default user and group (libvirt-qemu)
# before it reads qemu.conf, and fails if they do not exist; libvirt-daemon-system
# would create them. The benchmark's qemu.conf runs QEMU as root all the same.
if ! getent group libvirt-qemu >/dev/null; then groupadd --system libvirt-qemu; fi
if ! getent passwd libvirt-qemu >/dev/null; then
  useradd --system --gid libvirt-qemu --no-create-home --home-dir /var/lib/libvirt --shell /usr/sbin/nologin libvirt-qemu
fi
