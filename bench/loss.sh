#!/usr/bin/env bash
# bakare against restic through random packet loss, in one run: a network namespace of its
# own whose loopback drops packets at random in the kernel (iptables' statistic match on
# the namespace's lo; each direction crosses it, so a rate of p drops p of the packets each
# way), with moto's S3 server and OpenSSH's sshd (SFTP) inside it. For each store and loss
# rate, each tool makes a fresh repository, backs the tree up and restores it; wall time,
# bytes sent over the lossy loopback (both ways, retransmissions included) and whether the
# restore is identical.
#
#   [TOOLS="bakare restic"] bench/loss.sh [FILES] [RATES] [STORES] [WORK_DIR]
#     defaults: 2000 files (~50 MiB), "0 5 10 25" (percent), "s3 sftp", /tmp/bakare-loss
#
# Needs root, ip, iptables, moto_server, /usr/sbin/sshd and restic. bakare is $BAKARE or
# target/release/bakare of this checkout. Each command gets 20 minutes at most (`timeout`),
# then counts as failed. Never touches the host's own network: only the namespace's.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(dirname "$here")
files=${1:-2000}
rates=${2:-"0 5 10 25"}
stores=${3:-"s3 sftp"}
work=${4:-/tmp/bakare-loss}
tools=${TOOLS:-"bakare restic"}
BAKARE=${BAKARE:-$root/target/release/bakare}
limit=${LOSS_COMMAND_LIMIT:-1200}
mkdir -p "$work"
work=$(cd "$work" && pwd)
tree=$work/tree-$files
cargo build --release -q --manifest-path "$root/Cargo.toml" -p bakare-testkit
[ -d "$tree" ] || "$root/target/release/testkit" create "$tree" --files "$files" --seed 1 >/dev/null
mib=$(du -sm "$tree" | cut -f1)
echo "tree: $(find "$tree" -type f | wc -l) files, $mib MiB; bakare $("$BAKARE" --version)"
echo "restic: $(restic version | head -1)"

ns=bakare-bench-loss-$$
ip netns add "$ns"
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  pkill -f "$work/ssh/client" 2>/dev/null || true
  # `ip netns exec` hands over to the server it starts, which the kill above may miss:
  # whatever still runs in the namespace is ended before it goes.
  ip netns pids "$ns" 2>/dev/null | xargs -r kill 2>/dev/null || true
  ip netns del "$ns" 2>/dev/null || true
}
trap cleanup EXIT
in_ns() { ip netns exec "$ns" "$@"; }
in_ns ip link set lo up
set_loss() {
  in_ns iptables -F INPUT
  in_ns iptables -A INPUT -i lo -m statistic --mode random --probability "$(echo "$1 / 100" | bc -l)" -j DROP
}
set_loss 0
tx() { in_ns cat /sys/class/net/lo/statistics/tx_bytes; }

# moto (S3) and sshd (SFTP) inside the namespace, on fixed ports (the namespace is ours).
in_ns moto_server -H 127.0.0.1 -p 5000 >"$work/moto.log" 2>&1 &
pids+=($!)
until in_ns curl -s -o /dev/null http://127.0.0.1:5000/; do sleep 0.2; done
in_ns curl -s -X PUT http://127.0.0.1:5000/bench >/dev/null
rm -rf "$work/ssh" && mkdir -p "$work/ssh/srv" /run/sshd
ssh-keygen -q -t ed25519 -N "" -f "$work/ssh/host"
ssh-keygen -q -t ed25519 -N "" -f "$work/ssh/client"
cp "$work/ssh/client.pub" "$work/ssh/authorized_keys"
cat >"$work/ssh/sshd_config" <<EOF
Port 2222
ListenAddress 127.0.0.1
HostKey $work/ssh/host
PidFile $work/ssh/sshd.pid
AuthorizedKeysFile $work/ssh/authorized_keys
PermitRootLogin prohibit-password
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
StrictModes no
Subsystem sftp internal-sftp
MaxStartups 128
EOF
in_ns /usr/sbin/sshd -D -f "$work/ssh/sshd_config" -E "$work/ssh/sshd.log" &
pids+=($!)
until in_ns bash -c 'echo >/dev/tcp/127.0.0.1/2222' 2>/dev/null; do sleep 0.2; done

export AWS_ACCESS_KEY_ID=bench AWS_SECRET_ACCESS_KEY=bench AWS_REGION=us-east-1 AWS_DEFAULT_REGION=us-east-1
export AWS_ENDPOINT_URL=http://127.0.0.1:5000 AWS_EC2_METADATA_DISABLED=true
export BAKARE_PASSPHRASE=bench RESTIC_PASSWORD=bench
export BAKARE_SFTP_KEY=$work/ssh/client BAKARE_SFTP_KNOWN_HOSTS=accept
ssh_cmd="ssh -p 2222 -i $work/ssh/client -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -o LogLevel=ERROR root@127.0.0.1 -s sftp"

# step LABEL COMMAND...: one timed run inside the namespace; sets $wall, $bytes, $ok.
step() {
  local label=$1; shift
  local before t0 rc=0
  before=$(tx)
  t0=$(date +%s.%N)
  in_ns timeout "$limit" "$@" >"$work/out-$label" 2>&1 || rc=$?
  wall=$(echo "$(date +%s.%N) - $t0" | bc -l)
  bytes=$(( $(tx) - before ))
  ok=$rc
}

printf '\n%-6s %5s  %-7s %-8s %9s %10s  %s\n' store loss tool step "wall s" "MiB sent" result
for store in $stores; do
  for rate in $rates; do
    set_loss "$rate"
    for tool in $tools; do
      run=$store-$rate-$tool
      rm -rf "$work/cache-$run" "$work/restore-$run"
      case $store-$tool in
        s3-bakare) cmd=("$BAKARE" --cache-dir "$work/cache-$run" -r "s3://bench/$run") ;;
        s3-restic) cmd=(restic --cache-dir "$work/cache-$run" -r "s3:http://127.0.0.1:5000/bench/$run") ;;
        sftp-bakare) cmd=("$BAKARE" --cache-dir "$work/cache-$run" -r "sftp://root@127.0.0.1:2222$work/ssh/srv/$run") ;;
        sftp-restic) cmd=(restic --cache-dir "$work/cache-$run" -r "sftp:root@127.0.0.1:2222/$work/ssh/srv/$run" -o "sftp.command=$ssh_cmd") ;;
      esac
      for what in init backup restore; do
        case $what in
          init) step "$run-init" "${cmd[@]}" init ;;
          backup) step "$run-backup" "${cmd[@]}" backup "$tree" ;;
          restore) step "$run-restore" "${cmd[@]}" restore latest --target "$work/restore-$run" ;;
        esac
        result=ok
        [ "$ok" = 0 ] || result="failed (exit $ok, see $work/out-$run-$what)"
        if [ "$what" = restore ] && [ "$ok" = 0 ]; then
          diff -r --no-dereference "$tree" "$work/restore-$run$tree" >/dev/null && result="identical" || result="DIFFERS"
        fi
        printf '%-6s %4s%%  %-7s %-8s %9.1f %10.1f  %s\n' "$store" "$rate" "$tool" "$what" "$wall" \
          "$(echo "$bytes / 1048576" | bc -l)" "$result"
        [ "$ok" = 0 ] || break
      done
      rm -rf "$work/restore-$run"
    done
  done
done
