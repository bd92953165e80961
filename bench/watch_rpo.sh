#!/usr/bin/env bash
# Recovery point of `bakare watch --continuous`: the time from a file's close() to a snapshot
# that holds it, over EDITS edits one after another (root: fanotify filesystem marks).
#
#   bench/watch_rpo.sh [EDITS] [DEBOUNCE] [WORK_DIR]      (defaults: 100 edits, 10s)
#
# A 2,000-file tree from the project's generator; each edit appends a line to one file, then
# waits until `snapshots` lists one more. Prints p50, p95 and the worst, in seconds.
# bakare is $BAKARE or target/release/bakare of this checkout.
set -euo pipefail
edits=${1:-100}
debounce=${2:-10s}
here=$(cd "$(dirname "$0")" && pwd)
root=$(dirname "$here")
work=${3:-/var/tmp/bakare-watch-rpo}
bakare=${BAKARE:-$root/target/release/bakare}
cargo build --release -q --manifest-path "$root/Cargo.toml" -p bakare-testkit -p bakare-cli
export BAKARE_PASSPHRASE=bench BAKARE_CACHE_DIR=$work/cache BAKARE_CONFIG=/dev/null BAKARE_REPOSITORY=$work/repo
rm -rf "$work"
mkdir -p "$work"
"$root/target/release/testkit" create "$work/tree" --files 2000 --mean-kib 4 >/dev/null
"$bakare" init -q
"$bakare" watch --continuous --debounce "$debounce" "$work/tree" >"$work/watch.log" 2>&1 &
daemon=$!
trap 'kill $daemon 2>/dev/null || true' EXIT
count() { "$bakare" --json snapshots 2>/dev/null | grep -o '"id"' | wc -l; }
until [ "$(count)" -ge 1 ]; do sleep 0.2; done
find "$work/tree" -type f -print0 >"$work/files"
: >"$work/rpo"
for i in $(seq "$edits"); do
  n=$(count)
  t0=$(date +%s.%N)
  shuf -z -n 1 --random-source=<(yes "rpo$i") "$work/files" | while IFS= read -r -d '' f; do echo "edit $i" >>"$f"; done
  until [ "$(count)" -gt "$n" ]; do sleep 0.1; done
  echo "$(date +%s.%N) - $t0" | bc >>"$work/rpo"
done
sort -n "$work/rpo" | awk '{a[NR] = $1} END {printf "close() to snapshot, %d edits, --debounce '"$debounce"': p50 %.2f s, p95 %.2f s, worst %.2f s\n", NR, a[int(NR * 0.5 + 0.5)], a[int(NR * 0.95 + 0.5)], a[NR]}'
