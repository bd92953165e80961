#!/usr/bin/env bash
# No-change backup cost: bakare against a bare parallel stat walk and against restic, borg and
# bupstash, all in one run on one tree of N small files.
#
#   bench/nochange.sh N [WORK_DIR]          (TOOLS="bakare restic borg bupstash" to choose)
#
# Makes the tree once with the project's generator (testkit create) (--mean-kib 1) and keeps it in WORK_DIR.
# For each tool: init, first backup, then a no-change backup with cold caches (drop_caches, as
# root) and one warm. The walk rows are `bakare debug stat-walk`: the same parallel walker
# lstat-ing every entry, touching no repository. Prints wall seconds and peak RSS
# (/usr/bin/time), then ratios. restic and borg from Debian's packages, bupstash from crates.io
# (see README.md). bakare is $BAKARE or target/release/bakare of this checkout.
set -euo pipefail
n=${1:?usage: bench/nochange.sh N [WORK_DIR]}
here=$(cd "$(dirname "$0")" && pwd)
root=$(dirname "$here")
work=${2:-/tmp/bakare-nochange-$n}
tools=${TOOLS:-"bakare restic borg bupstash"}
bakare=${BAKARE:-$root/target/release/bakare}
cargo build --release -q --manifest-path "$root/Cargo.toml" -p bakare-testkit
gen=$root/target/release/testkit
export RESTIC_PASSWORD=bench BORG_PASSPHRASE=bench BAKARE_PASSPHRASE=bench
export BORG_UNKNOWN_UNENCRYPTED_REPO_ACCESS_IS_OK=yes BORG_RELOCATED_REPO_ACCESS_IS_OK=yes
mkdir -p "$work"
tree=$work/tree
results=$work/results
: >"$results"
[ -d "$tree" ] || "$gen" create "$tree" --files "$n" --mean-kib 1 >/dev/null

# Cold steps: write back, let the (virtual) disk settle after big writes such as a first
# backup, then drop the page cache. The same for every tool.
drop() { sync; sleep "${SETTLE_SECS:-10}"; sync; echo 3 >/proc/sys/vm/drop_caches 2>/dev/null || true; }

row() { # row TOOL STEP CMD...
  local tool=$1 step=$2 status=ok; shift 2
  /usr/bin/time -f '%e %M' -o "$work/time" "$@" >"$work/$tool.$step.log" 2>&1 || status="FAILED($?)"
  local wall rss
  read -r wall rss <"$work/time" || { wall=0; rss=0; }
  printf '%-9s %-15s %9.2f s %7d MiB  %s\n' "$tool" "$step" "$wall" $((rss / 1024)) "$status"
  echo "$tool $step $wall $rss" >>"$results"
}

nochange() { # nochange TOOL CMD...
  local tool=$1; shift
  drop
  row "$tool" nochange-cold "$@"
  row "$tool" nochange-warm "$@"
}

echo "tree: $tree ($(find "$tree" -type f | wc -l) files, $(du -sm "$tree" | cut -f1) MiB), $(nproc) cores"
drop
row walk cold "$bakare" debug stat-walk "$tree"
row walk warm "$bakare" debug stat-walk "$tree"
for tool in $tools; do
  repo=$work/$tool.repo
  rm -rf "$repo" "$work/$tool.cache"
  case $tool in
  bakare)
    export BAKARE_CACHE_DIR=$work/bakare.cache
    "$bakare" init --repo "$repo" >/dev/null
    row bakare first "$bakare" backup --repo "$repo" "$tree"
    nochange bakare "$bakare" backup --repo "$repo" "$tree" ;;
  restic)
    restic init --repo "$repo" >/dev/null
    row restic first restic backup --repo "$repo" "$tree"
    nochange restic restic backup --repo "$repo" "$tree" ;;
  borg)
    borg init --encryption=repokey-blake2 "$repo" >/dev/null 2>&1
    row borg first borg create "$repo::a0" "$tree"
    drop; row borg nochange-cold borg create "$repo::a1" "$tree"
    row borg nochange-warm borg create "$repo::a2" "$tree" ;;
  bupstash)
    bs=${BUPSTASH:-bupstash}
    export BUPSTASH_REPOSITORY=$repo BUPSTASH_KEY=$work/bupstash.key
    rm -f "$work/bupstash.key" "$work/bupstash.sendlog"
    "$bs" init >/dev/null
    "$bs" new-key -o "$BUPSTASH_KEY" >/dev/null
    row bupstash first "$bs" put --send-log "$work/bupstash.sendlog" "$tree"
    nochange bupstash "$bs" put --send-log "$work/bupstash.sendlog" "$tree"
    unset BUPSTASH_REPOSITORY BUPSTASH_KEY ;;
  esac
  rm -rf "$repo"
done

python3 - "$results" <<'PY'
import sys
rows = {}
for line in open(sys.argv[1]):
    tool, step, wall, rss = line.split()
    rows[(tool, step)] = (float(wall), int(rss) // 1024)
def get(t, s):
    return rows.get((t, s), (None, None))[0]
print()
for temp in ("warm", "cold"):
    b = get("bakare", f"nochange-{temp}")
    if not b:
        continue
    w = get("walk", temp)
    line = [f"{temp}: bakare no-change {b:.2f} s = {b / w:.2f}x the bare walk ({w:.2f} s)" if w else ""]
    for peer in ("restic", "borg", "bupstash"):
        p = get(peer, f"nochange-{temp}")
        if p:
            line.append(f"{peer} {p:.2f} s ({p / b:.1f}x bakare's time)")
    print("; ".join(x for x in line if x))
r = rows.get(("bakare", "nochange-warm"))
if r:
    print(f"bakare peak RSS in the no-change backup: {r[1]} MiB")
PY
