#!/usr/bin/env bash
# Backup and restore throughput to a local S3 server (moto on loopback), bakare against
# restic on the same server in the same run: first backup, a no-change backup, a full
# restore; wall time, MiB/s of the tree, peak RSS (/usr/bin/time -v).
#
#   bench/remote.sh [FILES] [WORK_DIR]     (defaults: 20000 files of ~25 KiB mean, /tmp/bakare-remote)
#
# Needs moto_server on PATH (see .ci/run for the install) and restic. bakare is $BAKARE or
# target/release/bakare of this checkout. moto keeps objects in memory: a tree of a few GB
# needs that much RAM for each tool.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(dirname "$here")
files=${1:-20000}
work=${2:-/tmp/bakare-remote}
BAKARE=${BAKARE:-$root/target/release/bakare}
mkdir -p "$work"
tree=$work/tree-$files
cargo build --release -q --manifest-path "$root/Cargo.toml" -p bakare-testkit
[ -d "$tree" ] || "$root/target/release/testkit" create "$tree" --files "$files" >/dev/null
mib=$(du -sm "$tree" | cut -f1)
echo "tree: $(find "$tree" -type f | wc -l) files, $mib MiB"

port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
moto_server -H 127.0.0.1 -p "$port" >"$work/moto.log" 2>&1 &
moto=$!
trap 'kill $moto 2>/dev/null || true' EXIT
until curl -s -o /dev/null "http://127.0.0.1:$port/"; do sleep 0.1; done
curl -s -X PUT "http://127.0.0.1:$port/bench" >/dev/null

export AWS_ACCESS_KEY_ID=bench AWS_SECRET_ACCESS_KEY=bench AWS_REGION=us-east-1 AWS_DEFAULT_REGION=us-east-1
export AWS_ENDPOINT_URL=http://127.0.0.1:$port AWS_EC2_METADATA_DISABLED=true
export BAKARE_PASSPHRASE=bench RESTIC_PASSWORD=bench
rm -rf "$work/cache" "$work/restic-cache" "$work/restore-"*

# step NAME COMMAND...: one timed run; prints wall, MiB/s of the tree and peak RSS.
step() {
  local name=$1; shift
  sync; echo 3 >/proc/sys/vm/drop_caches 2>/dev/null || true
  /usr/bin/time -v -o "$work/time" "$@" >"$work/out" 2>&1 || { cat "$work/out"; exit 1; }
  local wall rss
  wall=$(awk -F': ' '/Elapsed \(wall clock\)/ {n=split($2,a,":"); s=0; for(i=1;i<=n;i++) s=s*60+a[i]; print s}' "$work/time")
  rss=$(awk -F': ' '/Maximum resident/ {print int($2/1024)}' "$work/time")
  printf '%-34s %8.2f s %9.1f MiB/s %7d MiB peak\n' "$name" "$wall" "$(echo "$mib / $wall" | bc -l)" "$rss"
}

b=("$BAKARE" --cache-dir "$work/cache" -r s3://bench/bakare)
r=(restic --cache-dir "$work/restic-cache" -r "s3:http://127.0.0.1:$port/bench/restic")
"${b[@]}" init -q
"${r[@]}" init >/dev/null

step "bakare first backup" "${b[@]}" backup -q "$tree"
step "restic first backup" "${r[@]}" backup -q "$tree"
step "bakare no-change backup" "${b[@]}" backup -q "$tree"
step "restic no-change backup" "${r[@]}" backup -q "$tree"
step "bakare restore" "${b[@]}" restore -q latest --target "$work/restore-bakare"
step "restic restore" "${r[@]}" restore latest --target "$work/restore-restic"
diff -r "$tree" "$work/restore-bakare$tree" >/dev/null && echo "bakare restore identical"
diff -r "$tree" "$work/restore-restic$tree" >/dev/null && echo "restic restore identical"
rm -rf "$work/restore-"*
