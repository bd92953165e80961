#!/usr/bin/env bash
# Peak memory at scale: a tree of N small files (the project's testkit) plus B large files of 4 GiB
# (half random, half compressible), backed up and restored under --memory-limit, peak RSS
# from /usr/bin/time -v. The goal: under 160 MiB with --memory-limit 128M, and under the
# default limit (512M) without the option.
#
#   bench/memory.sh [N] [B] [WORK_DIR]      (defaults: 1000000 files, 2 large files, /tmp/bakare-memory)
#
# Needs about 2.5 times the tree's size free in WORK_DIR (source, repository, restore).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(dirname "$here")
n=${1:-1000000}
big=${2:-2}
work=${3:-/tmp/bakare-memory}
bakare=${BAKARE:-$root/target/release/bakare}
export BAKARE_PASSPHRASE=bench
mkdir -p "$work"
tree=$work/tree-$n-$big
if [ ! -f "$tree.done" ]; then
  rm -rf "$tree"
  cargo build --release -q --manifest-path "$root/Cargo.toml" -p bakare-testkit
  "$root/target/release/testkit" create "$tree/small" --files "$n" --mean-kib 1 >/dev/null
  mkdir -p "$tree/large"
  for i in $(seq 1 "$big"); do
    if [ $((i % 2)) = 1 ]; then
      head -c $((4 << 30)) /dev/urandom >"$tree/large/random-$i.bin"
    else
      # `yes` ends on SIGPIPE when head has enough: not a failure.
      { yes "line $i of a compressible large file, with some words that repeat" || true; } | head -c $((4 << 30)) >"$tree/large/text-$i.txt"
    fi
  done
  touch "$tree.done"
fi
echo "tree: $(find "$tree" -type f | wc -l) files, $(du -sh "$tree" | cut -f1)"
peak() { # peak LABEL CMD...: wall seconds and peak RSS
  local label=$1; shift
  sync
  /usr/bin/time -v -o "$work/time" "$@" >"$work/out" 2>&1 || { echo "$label FAILED"; cat "$work/out"; return 1; }
  local rss wall
  rss=$(awk -F': ' '/Maximum resident set size/ {print $2}' "$work/time")
  wall=$(awk -F': ' '/Elapsed \(wall clock\)/ {print $2}' "$work/time")
  printf '%-34s %10s wall %6d MiB peak RSS\n' "$label" "$wall" $((rss / 1024))
}
for limit in 128M default; do
  opt=()
  [ "$limit" = default ] || opt=(--memory-limit "$limit")
  rm -rf "$work/repo" "$work/cache" "$work/restore"
  "$bakare" init -q --repo "$work/repo"
  peak "backup, limit $limit" "$bakare" backup -q "${opt[@]}" --cache-dir "$work/cache" --repo "$work/repo" "$tree"
  peak "no-change backup, limit $limit" "$bakare" backup -q "${opt[@]}" --cache-dir "$work/cache" --repo "$work/repo" "$tree"
  peak "restore, limit $limit" "$bakare" restore -q "${opt[@]}" --cache-dir "$work/cache" --repo "$work/repo" latest --target "$work/restore"
  rm -rf "$work/restore"
done
rm -rf "$work/repo" "$work/cache"
