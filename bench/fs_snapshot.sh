#!/usr/bin/env bash
# `--fs-snapshot btrfs` against the live tree: the cost of a no-change backup read from a
# fresh btrfs snapshot, right after one of the live tree, on N small files.
#
#   bench/fs_snapshot.sh N [ROUNDS] [WORK_DIR]           (as root; needs mkfs.btrfs, btrfs)
#   COLD=1 bench/fs_snapshot.sh N [ROUNDS]               (page cache dropped before each run)
#
# Makes a btrfs file system on a loop device over a sparse image in WORK_DIR, a subvolume
# holding a tree of N files from the project's generator (testkit create, --mean-kib 1), one
# first backup of it, then ROUNDS pairs of no-change backups, warm: one of the live tree,
# then one with --fs-snapshot btrfs (a new snapshot each time), in alternation. Prints wall
# seconds, peak RSS and files read of every run, the medians and their ratio. bakare is
# $BAKARE or target/release/bakare of this checkout.
set -euo pipefail
n=${1:?usage: bench/fs_snapshot.sh N [ROUNDS] [WORK_DIR]}
rounds=${2:-5}
here=$(cd "$(dirname "$0")" && pwd)
root=$(dirname "$here")
work=${3:-/tmp/bakare-fs-snapshot-$n}
bakare=${BAKARE:-$root/target/release/bakare}
cargo build --release -q --manifest-path "$root/Cargo.toml" -p bakare-testkit -p bakare-cli
gen=$root/target/release/testkit
export BAKARE_PASSPHRASE=bench BAKARE_CACHE_DIR=$work/cache
mkdir -p "$work"
mnt=$work/mnt
img=$work/btrfs.img
cleanup() { umount "$mnt" 2>/dev/null || true; [ -n "${dev:-}" ] && losetup -d "$dev" 2>/dev/null || true; }
trap cleanup EXIT
umount "$mnt" 2>/dev/null || true
rm -f "$img"
truncate -s $(( (n / 1000 + 1) * 40 + 1024 ))M "$img"
dev=$(losetup -f --show "$img")
mkfs.btrfs -q "$dev"
mkdir -p "$mnt"
mount "$dev" "$mnt"
btrfs subvolume create "$mnt/vol" >/dev/null
"$gen" create "$mnt/vol/tree" --files "$n" --mean-kib 1 >/dev/null
# Old enough for the memo to trust every file (a file changed in the last moments is read again).
find "$mnt/vol" -type f -exec touch -m -d '1 hour ago' {} +
repo=$work/repo
rm -rf "$repo" "$work/cache"
"$bakare" init --repo "$repo" -q
echo "tree: $n files in a btrfs subvolume on $dev, $(nproc) cores"
# The first snapshot run also makes the subvolume's (kept) .bakare-fs-snapshots folder.
"$bakare" backup --repo "$repo" -q --fs-snapshot btrfs "$mnt/vol"
"$bakare" backup --repo "$repo" -q "$mnt/vol"
results=$work/results
: >"$results"
run() { # run NAME ARGS...
  local name=$1; shift
  if [ -n "${COLD:-}" ]; then sync; echo 3 >/proc/sys/vm/drop_caches; fi
  /usr/bin/time -f '%e %M' -o "$work/time" "$bakare" --json backup --repo "$repo" "$@" "$mnt/vol" >"$work/out" 2>"$work/err"
  local wall rss read
  read -r wall rss <"$work/time"
  read=$(python3 -c 'import json,sys; print([json.loads(l) for l in open(sys.argv[1]) if l.startswith("{")][-1]["files_read"])' "$work/out")
  printf '%-9s %7.2f s %6d MiB  %s files read\n' "$name" "$wall" $((rss / 1024)) "$read"
  echo "$name $wall $rss $read" >>"$results"
}
for _ in $(seq "$rounds"); do
  run live
  run snapshot --fs-snapshot btrfs
done
python3 - "$results" <<'PY'
import statistics, sys
rows = {}
for line in open(sys.argv[1]):
    name, wall, rss, read = line.split()
    rows.setdefault(name, []).append((float(wall), int(rss) // 1024, int(read)))
live = statistics.median(w for w, _, _ in rows["live"])
snap = statistics.median(w for w, _, _ in rows["snapshot"])
print(f"\nmedian no-change backup: live {live:.2f} s, from a fresh btrfs snapshot {snap:.2f} s: {snap / live:.2f}x")
print(f"files read from the snapshot: {max(r for _, _, r in rows['snapshot'])} at most; "
      f"peak RSS {max(m for _, m, _ in rows['snapshot'])} MiB")
PY
