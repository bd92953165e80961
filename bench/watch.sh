#!/usr/bin/env bash
# What a backup costs with `bakare watch` running, against a walk of every folder, on one tree
# of N small files (root: fanotify filesystem marks; strace for the system call counts).
#
#   bench/watch.sh N [WORK_DIR] [CHANGED]       (e.g. 1000000 and 100000: the cost must not
#                                                grow with N)
#
# Makes the tree once with the project's generator (testkit create --mean-kib 1) and keeps it
# in WORK_DIR. Starts a watcher, makes a first backup, then three times changes CHANGED files
# (default 100: a line appended to each) and backs up, timed; then changes as many again and
# backs up under `strace -c -f` (stat-family calls counted); the same for `backup --walk-all`
# (every folder listed).
# Then the daemon's peak RSS and its CPU over 10 idle seconds, and the time from a file's
# close() to a backup having it (a backup started right after, as a timer would).
# bakare is $BAKARE or target/release/bakare of this checkout.
set -euo pipefail
n=${1:?usage: bench/watch.sh N [WORK_DIR] [CHANGED]}
here=$(cd "$(dirname "$0")" && pwd)
root=$(dirname "$here")
work=${2:-/var/tmp/bakare-watch-$n}
changed=${3:-100}
bakare=${BAKARE:-$root/target/release/bakare}
cargo build --release -q --manifest-path "$root/Cargo.toml" -p bakare-testkit -p bakare-cli
gen=$root/target/release/testkit
export BAKARE_PASSPHRASE=bench BAKARE_CACHE_DIR=$work/cache BAKARE_CONFIG=/dev/null
mkdir -p "$work"
tree=$work/tree
[ -d "$tree" ] || "$gen" create "$tree" --files "$n" --mean-kib 1 >/dev/null
repo=$work/repo
rm -rf "$repo" "$work/cache"
"$bakare" init -q --repo "$repo"
"$bakare" watch "$tree" 2>"$work/watch.log" &
daemon=$!
trap 'kill $daemon 2>/dev/null || true' EXIT
for _ in $(seq 100); do "$bakare" watch --status >/dev/null 2>&1 && break; sleep 0.1; done
files=$work/files
# NUL-separated: the generator makes names with newlines.
find "$tree" -type f -print0 >"$files"
echo "tree: $tree ($(tr -cd '\0' <"$files" | wc -c) files, $(find "$tree" -type d | wc -l) folders), $(nproc) cores"
t0=$(date +%s.%N)
"$bakare" backup -q --repo "$repo" "$tree"
echo "first backup: $(echo "$(date +%s.%N) - $t0" | bc) s"

change() { shuf -z -n "$changed" --random-source=<(yes "$1") "$files" | while IFS= read -r -d '' f; do echo x >>"$f"; done; }
backup() { # backup LABEL ARGS...: wall time, then stat-family calls, each after its own changes
  local label=$1; shift
  local t0 t1
  change "$label-timed"
  t0=$(date +%s.%N)
  "$bakare" backup --json --repo "$repo" "$@" "$tree" | tail -1 >"$work/$label.json"
  t1=$(date +%s.%N)
  local wall
  wall=$(echo "$t1 - $t0" | bc)
  change "$label-traced"
  strace -f -c -o "$work/$label.strace" "$bakare" backup -q --repo "$repo" "$@" "$tree" >/dev/null 2>&1 || true
  local stats
  stats=$(awk '$NF ~ /^(statx|newfstatat|lstat|stat|fstat|fstatat64)$/ {s += $4} END {print s + 0}' "$work/$label.strace")
  printf '%-22s %8.3f s wall  %10d stat calls  %s\n' "$label" "$wall" "$stats" \
    "$(grep -o '"changed_folders":[^,]*' "$work/$label.json")"
}
for round in 1 2 3; do
  backup "watched-$round"
  backup "walk-all-$round" --walk-all
done
rss=$(awk '/VmHWM/ {print $2}' /proc/$daemon/status)
cpu0=$(awk '{print $14 + $15}' /proc/$daemon/stat)
sleep 10
cpu1=$(awk '{print $14 + $15}' /proc/$daemon/stat)
echo "daemon: peak RSS $((rss / 1024)) MiB, CPU while idle $(((cpu1 - cpu0) * 10)) ms per 10 s"
# close() to a backup that has the change, 20 edits.
lat=()
for i in $(seq 20); do
  t0=$(date +%s.%N)
  shuf -z -n 1 --random-source=<(yes "edit$i") "$files" | while IFS= read -r -d '' f; do echo "edit $i" >>"$f"; done
  "$bakare" backup -q --repo "$repo" "$tree"
  lat+=("$(echo "$(date +%s.%N) - $t0" | bc)")
done
printf '%s\n' "${lat[@]}" | sort -n | awk '{a[NR] = $1} END {printf "close() to snapshot, %d edits: p50 %.3f s, p95 %.3f s\n", NR, a[int(NR * 0.5 + 0.5)], a[int(NR * 0.95 + 0.5)]}'
