#!/usr/bin/env bash
# Throughput against the peers: `testkit peers` on a generated tree of about 2 GB
# (first backup, no-change backup, 2 %-changed backup, full restore; wall time, peak RSS,
# repository size), then bakare's CPU use during a first backup ((user + sys) / wall; 2.0
# is both cores busy on this machine).
#
#   bench/peers.sh [FILES] [WORK_DIR]      (defaults: 80000 files of ~25 KiB mean, /tmp/bakare-peers)
#
# TOOLS chooses the peers (default "bakare restic rustic borg bupstash"; missing ones are skipped). bakare is $BAKARE or
# target/release/bakare of this checkout. Page caches are dropped before each step when run
# as root. Quote ratios between rows of one run. The rows are also written as JSON
# (WORK_DIR/peers.json) and drawn (WORK_DIR/peers.svg).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(dirname "$here")
files=${1:-80000}
work=${2:-/tmp/bakare-peers}
export BAKARE=${BAKARE:-$root/target/release/bakare}
export TOOLS=${TOOLS:-"bakare restic rustic borg bupstash"}
mkdir -p "$work"
tree=$work/tree-$files
cargo build --release -q --manifest-path "$root/Cargo.toml" -p bakare-testkit -p bakare-cli
[ -d "$tree" ] || "$root/target/release/testkit" create "$tree" --files "$files" >/dev/null
echo "tree: $(find "$tree" -type f | wc -l) files, $(du -sh "$tree" | cut -f1)"
"$root/target/release/testkit" peers "$tree" --work "$work/run" --tools "$TOOLS" --bakare "$BAKARE" \
  --json "$work/peers.json" --svg "$work/peers.svg"
# CPU use of a first backup, in a repository of its own.
export BAKARE_PASSPHRASE=bench
rm -rf "$work/cpu.repo" "$work/cpu.cache"
"$BAKARE" init -q --repo "$work/cpu.repo"
sync; echo 3 >/proc/sys/vm/drop_caches 2>/dev/null || true
/usr/bin/time -f "%e %U %S %M" -o "$work/cpu.time" \
  "$BAKARE" backup -q --cache-dir "$work/cpu.cache" --repo "$work/cpu.repo" "$tree"
read -r wall user sys rss <"$work/cpu.time"
printf 'bakare first backup: %s s wall, %s s user, %s s sys: CPU use %.2f cores of %d, %d MiB peak\n' \
  "$wall" "$user" "$sys" "$(echo "($user + $sys) / $wall" | bc -l)" "$(nproc)" $((rss / 1024))
