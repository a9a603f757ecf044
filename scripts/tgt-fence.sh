#!/bin/sh
# Storage fencing for a tgt iSCSI target whose management socket this machine reaches (the lab's):
#   tgt-fence.sh CONTROL_PORT TID fence|unfence ADDRESS [HOST]
# fence: the address may no longer log in, and its open sessions are closed (an unbind alone keeps them);
# exits non-zero unless the target's ACL then holds neither the address nor ALL and no session from it is left.
# unfence: the address may log in again. An iSCSI pool's --fence-command names this script and its first two arguments.
set -eu
[ $# -ge 4 ] || { echo "usage: $0 CONTROL_PORT TID fence|unfence ADDRESS [HOST]" >&2; exit 2; }
port=$1 tid=$2 action=$3 address=$4
adm() { tgtadm -C "$port" --lld iscsi "$@"; }
# The part of `--op show` about target $tid, read at the top level (set -e: a tgtd that does not answer stops the script).
read_target() {
  show=$(adm --mode target --op show)
  target=$(printf '%s\n' "$show" | awk -v tid="$tid" '/^Target [0-9]+:/ { t = $2; sub(":", "", t) } t == tid')
  [ -n "$target" ] || { echo "$0: tgtd on control port $port has no target $tid" >&2; exit 1; }
}
acl_has() { printf '%s\n' "$target" | awk '/ACL information:/ { acl = 1; next } acl && NF == 1 { print $1 }' | grep -qxF "$1"; }
sessions() { printf '%s\n' "$target" | awk -v a="$address" '/I_T nexus:/ { sid = $3 } /Connection:/ { cid = $2 } /IP Address:/ && $3 == a { print sid, cid }'; }
read_target
case $action in
  fence)
    # Already withdrawn is fine (fencing again after a recovery that failed half way).
    if acl_has "$address"; then adm --mode target --op unbind --tid "$tid" -I "$address"; fi
    if acl_has ALL; then echo "$0: target $tid lets ALL initiators in: $address cannot be withdrawn alone" >&2; exit 1; fi
    for conn in $(sessions | tr ' ' ':'); do adm --mode conn --op delete --tid "$tid" --sid "${conn%%:*}" --cid "${conn#*:}"; done
    read_target
    if acl_has "$address" || [ -n "$(sessions)" ]; then echo "$0: $address is still let in to target $tid" >&2; exit 1; fi
    ;;
  unfence)
    if ! acl_has "$address"; then adm --mode target --op bind --tid "$tid" -I "$address"; fi
    ;;
  *) echo "$0: the action is fence or unfence, not '$action'" >&2; exit 2 ;;
esac
