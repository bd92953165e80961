#!/usr/bin/env bash
# Searching snapshots: `bakare find` against `restic find` on the same S snapshots of a tree of
# N small files with 1 % of the files changed between snapshots, in one run.
#
#   bench/find.sh N S [WORK_DIR]        (defaults: 200000 files, 50 snapshots)
#
# Prints the time of the S backups of each tool (setup, not compared), then one search for a
# file name present in every snapshot: bakare's fuzzy `find` (warm; it reads every distinct
# tree of the chosen snapshots) and `restic find` with a glob. bakare is $BAKARE or
# target/release/bakare of this checkout; restic from Debian's package.
set -euo pipefail
n=${1:-200000}
s=${2:-50}
here=$(cd "$(dirname "$0")" && pwd)
root=$(dirname "$here")
work=${3:-/tmp/bakare-find-$n-$s}
bakare=${BAKARE:-$root/target/release/bakare}
gen=$root/../shared/bench/gen_tree.py
export RESTIC_PASSWORD=bench BAKARE_PASSPHRASE=bench BAKARE_CACHE_DIR=$work/bakare.cache
mkdir -p "$work"
tree=$work/tree
[ -d "$tree" ] || python3 "$gen" create "$tree" --files "$n" --mean-kib 1 >/dev/null
rm -rf "$work/bakare.repo" "$work/restic.repo" "$BAKARE_CACHE_DIR"
"$bakare" init --repo "$work/bakare.repo" >/dev/null
restic init --repo "$work/restic.repo" >/dev/null
start=$(date +%s.%N)
for i in $(seq 1 "$s"); do
  [ "$i" -gt 1 ] && python3 "$gen" mutate "$tree" --percent 1 --seed "$i" >/dev/null
  "$bakare" backup -q --repo "$work/bakare.repo" "$tree"
  restic backup -q --repo "$work/restic.repo" "$tree" >/dev/null
done
echo "setup: $s snapshots of $n files in $(echo "$(date +%s.%N) - $start" | bc) s (both tools)"
first=$(find "$tree" -type f -print -quit)
name=$(basename "$first")
stem=${name%.*}
row() { # row LABEL CMD...
  local label=$1; shift
  /usr/bin/time -f "%e %M" -o "$work/time" "$@" >"$work/out" 2>&1 || true
  read -r wall rss < <(tail -1 "$work/time")
  printf "%-28s %8.2f s %7d MiB  %s lines\n" "$label" "$wall" $((rss / 1024)) "$(wc -l <"$work/out")"
}
row "bakare find (first)" "$bakare" find --repo "$work/bakare.repo" --limit 5 "$stem"
row "bakare find (again)" "$bakare" find --repo "$work/bakare.repo" --limit 5 "$stem"
row "restic find" restic find --repo "$work/restic.repo" "*$stem*"
