#!/usr/bin/env bash
# `bakare mount`: `ls -l` of one folder of N entries and `find` over a snapshot of M files,
# through the mount, cold (just mounted) and warm (again), with the mount's peak RSS.
#
#   bench/mount.sh [N] [M] [WORK_DIR]       (as root, or with fusermount; needs /dev/fuse)
#
# Makes one folder of N empty files and a tree of M files from the project's generator
# (testkit create, --mean-kib 1) once in WORK_DIR, backs both up into a repository there,
# mounts it and times the listings (wall seconds). bakare is $BAKARE or
# target/release/bakare of this checkout; BAKARE_MEMORY_LIMIT=SIZE sets the mount's
# --memory-limit. The peak RSS is counted from once the repository is open (the argon2 key
# derivation takes 64 MiB for an instant before, as in every command).
set -euo pipefail
n=${1:-100000}
m=${2:-200000}
here=$(cd "$(dirname "$0")" && pwd)
root=$(dirname "$here")
work=${3:-/tmp/bakare-mount-$n-$m}
bakare=${BAKARE:-$root/target/release/bakare}
cargo build --release -q --manifest-path "$root/Cargo.toml" -p bakare-testkit -p bakare-cli
gen=$root/target/release/testkit
export BAKARE_PASSPHRASE=bench BAKARE_CACHE_DIR=$work/cache
mkdir -p "$work"
if [ ! -d "$work/flat" ]; then
  mkdir -p "$work/flat"
  (cd "$work/flat" && seq -f 'file-%06g.txt' 1 "$n" | xargs touch)
fi
[ -d "$work/tree" ] || "$gen" create "$work/tree" --files "$m" --mean-kib 1 >/dev/null
if [ ! -d "$work/repo" ]; then
  "$bakare" init --repo "$work/repo" -q
  "$bakare" backup --repo "$work/repo" -q "$work/flat" "$work/tree"
fi
mnt=$work/mnt
mkdir -p "$mnt"
umount "$mnt" 2>/dev/null || true
"$bakare" mount --repo "$work/repo" -q "$mnt" &
pid=$!
trap 'kill -INT $pid 2>/dev/null || true; wait $pid 2>/dev/null || true' EXIT
for _ in $(seq 100); do [ -e "$mnt/snapshots/latest" ] && break; sleep 0.1; done
echo 5 >/proc/$pid/clear_refs # resets VmHWM
latest=$mnt/snapshots/latest
t() { # t LABEL CMD...
  local label=$1 start end
  shift
  start=$(date +%s.%N)
  "$@" >/dev/null
  end=$(date +%s.%N)
  printf '%-12s %6.2f s\n' "$label" "$(echo "$end - $start" | bc)"
}
t ls-l-cold ls -l "$latest$work/flat"
t ls-l-warm ls -l "$latest$work/flat"
t find-cold find "$latest$work/tree" -type f
t find-warm find "$latest$work/tree" -type f
echo "entries: $(ls "$latest$work/flat" | wc -l) in the folder, $(find "$latest$work/tree" -type f | wc -l) files in the tree"
echo "bakare mount peak RSS: $(awk '/VmHWM/ {print int($2/1024)}' /proc/$pid/status) MiB, now $(awk '/VmRSS/ {print int($2/1024)}' /proc/$pid/status) MiB (--memory-limit ${BAKARE_MEMORY_LIMIT:-512M})"
