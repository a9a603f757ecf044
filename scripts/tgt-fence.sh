#!/bin/sh
# Storage fencing for a tgt iSCSI target whose management socket this machine reaches (the lab's):
#   tgt-fence.sh CONTROL_PORT TID fence|unfence ADDRESS HOST
# fence: the address may no longer log in, and its open sessions are closed (an unbind alone keeps them).
# unfence: the address may log in again. An iSCSI pool's --fence-command names this script and its first two arguments.
set -eu
[ $# -ge 4 ] || { echo "usage: $0 CONTROL_PORT TID fence|unfence ADDRESS [HOST]" >&2; exit 2; }
port=$1 tid=$2 action=$3 address=$4
adm() { tgtadm -C "$port" --lld iscsi "$@"; }
case $action in
  fence)
    # Already withdrawn is fine (fencing again after a crash half way must work).
    adm --mode target --op unbind --tid "$tid" -I "$address" 2>/dev/null || true
    adm --mode target --op show | awk -v tid="$tid" -v a="$address" '
      /^Target [0-9]+:/ { t = $2; sub(":", "", t) }
      /I_T nexus:/ { sid = $3 }
      /Connection:/ { cid = $2 }
      /IP Address:/ && t == tid && $3 == a { print sid, cid }' |
    while read -r sid cid; do adm --mode conn --op delete --tid "$tid" --sid "$sid" --cid "$cid"; done
    ;;
  unfence)
    adm --mode target --op bind --tid "$tid" -I "$address" 2>/dev/null || adm --mode target --op show | grep -q "^        $address\$"
    ;;
  *) echo "$0: the action is fence or unfence, not '$action'" >&2; exit 2 ;;
esac
