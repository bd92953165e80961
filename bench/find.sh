#!/usr/bin/env bash
# Searching snapshots: `bakare find` against `restic find` on the same S snapshots of a tree of
# N small files with 1 % of the files changed between snapshots, in one run.
#
#   bench/find.sh N S [WORK_DIR]        (defaults: 200000 files, 50 snapshots)
#
# Makes the tree and the S snapshots with both tools (setup, timed but not compared; with
# REUSE=1 an earlier setup in WORK_DIR is kept), then, with the figures `find --json` reports
# (snapshots indexed, trees read, index and query milliseconds):
#   - bakare find, first call: builds the local name index from all S snapshots;
#   - bakare find, warm: answers from the index (the goal: under 300 ms);
#   - one more 1 % mutation and backup, then bakare find: indexes only the new snapshot,
#     reading only the folders that changed (about 2/3 of them: 1 % of the files, spread);
#   - one file changed and backed up, then bakare find: a few trees read;
#   - restic find with a glob over the same snapshots.
# bakare is $BAKARE or target/release/bakare of this checkout; restic from Debian's package.
set -euo pipefail
n=${1:-200000}
s=${2:-50}
here=$(cd "$(dirname "$0")" && pwd)
root=$(dirname "$here")
work=${3:-/tmp/bakare-find-$n-$s}
bakare=${BAKARE:-$root/target/release/bakare}
cargo build --release -q --manifest-path "$root/Cargo.toml" -p bakare-testkit
gen=$root/target/release/testkit
export RESTIC_PASSWORD=bench BAKARE_PASSPHRASE=bench BAKARE_CACHE_DIR=$work/bakare.cache
mkdir -p "$work"
tree=$work/tree
if [ "${REUSE:-0}" = 1 ] && [ -f "$work/setup.done" ]; then
  echo "setup: reusing $work"
else
  rm -rf "$tree" "$work/bakare.repo" "$work/restic.repo" "$BAKARE_CACHE_DIR" "$work/setup.done"
  "$gen" create "$tree" --files "$n" --mean-kib 1 >/dev/null
  "$bakare" init --repo "$work/bakare.repo" >/dev/null
  restic init --repo "$work/restic.repo" >/dev/null
  start=$(date +%s.%N)
  for i in $(seq 1 "$s"); do
    [ "$i" -gt 1 ] && "$gen" mutate "$tree" --percent 1 --seed "$i" >/dev/null
    "$bakare" backup -q --repo "$work/bakare.repo" "$tree"
    restic backup -q --repo "$work/restic.repo" "$tree" >/dev/null
  done
  echo "setup: $s snapshots of $n files in $(echo "$(date +%s.%N) - $start" | bc) s (both tools)"
  touch "$work/setup.done"
fi
# The name index is local state: start without it.
rm -rf "$BAKARE_CACHE_DIR"/*/names.redb
first=$(find "$tree" -type f -print -quit)
name=$(basename "$first")
stem=${name%.*}
row() { # row LABEL CMD...
  local label=$1; shift
  /usr/bin/time -f "%e %M" -o "$work/time" "$@" >"$work/out" 2>&1 || true
  read -r wall rss < <(tail -1 "$work/time")
  printf "%-40s %8.3f s %7d MiB  %s lines\n" "$label" "$wall" $((rss / 1024)) "$(wc -l <"$work/out")"
}
# bfind LABEL QUERY: bakare find --json, with what its summary says of the index and query.
bfind() {
  row "$1" "$bakare" --json find --repo "$work/bakare.repo" --limit 5 "$2"
  python3 -c 'import json,sys
s=[json.loads(l) for l in open(sys.argv[1]) if l.startswith("{")][-1]
i=s["index"]
print("%44s indexed %d snapshots reading %d trees in %d ms; query %d ms; %d matches" % ("", i["snapshots_indexed"], i["trees_read"], i["index_ms"], s["query_ms"], s["matches"]))' "$work/out"
}
folders=$(find "$tree" -type d | wc -l)
echo "tree: $(find "$tree" -type f | wc -l) files in $folders folders"
bfind "bakare find (first: builds the index)" "$stem"
for i in 1 2 3; do
  bfind "bakare find (warm $i)" "$stem"
done
bfind "bakare find (warm, typo)" "${stem:1:1}${stem:0:1}${stem:2}"
"$gen" mutate "$tree" --percent 1 --seed $((s + 1000 + RANDOM)) >/dev/null
"$bakare" backup -q --repo "$work/bakare.repo" "$tree"
restic backup -q --repo "$work/restic.repo" "$tree" >/dev/null
bfind "bakare find (1 more snapshot, 1 %)" "$stem"
echo "changed" >>"$first"
"$bakare" backup -q --repo "$work/bakare.repo" "$tree"
restic backup -q --repo "$work/restic.repo" "$tree" >/dev/null
bfind "bakare find (1 more snapshot, 1 file)" "$stem"
bfind "bakare find (warm again)" "$stem"
row "restic find" restic find --repo "$work/restic.repo" "*$stem*"
