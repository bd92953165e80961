#!/usr/bin/env bash
# Runs every fuzz target for SECONDS each (default 20), starting from the committed seeds.
# New corpus entries go to a scratch folder (or $FUZZ_CORPUS, kept between runs), so the
# checkout stays clean. Prints executions per target; any crash fails the run and leaves its
# input under fuzz/artifacts/ (turn it into a regression test, then fix it).
#
#   bash fuzz/run.sh            # CI: 20 s per target
#   bash fuzz/run.sh 3600       # the long campaign: an hour per target
set -euo pipefail
seconds=${1:-20}
cd "$(dirname "$0")"
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked
scratch=${FUZZ_CORPUS:-$(mktemp -d /tmp/bakare-fuzz.XXXXXX)}
cargo +nightly fuzz build -O
summary=""
for t in $(cargo +nightly fuzz list | grep -v "^make-seeds$"); do
  mkdir -p "$scratch/$t"
  log=$scratch/$t.log
  if ! cargo +nightly fuzz run -O "$t" "$scratch/$t" "corpus/$t" -- \
      -max_total_time="$seconds" -rss_limit_mb=2048 -timeout=10 -print_final_stats=1 >"$log" 2>&1; then
    tail -40 "$log"
    echo "fuzz target $t FAILED (see fuzz/artifacts/$t)"
    exit 1
  fi
  execs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$' || echo '?')
  summary+=$(printf '%-12s %12s executions in %s s\n' "$t" "$execs" "$seconds")$'\n'
done
printf '%s' "$summary"
