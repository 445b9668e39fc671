#!/usr/bin/env bash
# Run every cargo-fuzz target for a bounded time (FUZZ_SECONDS each, default 60), starting from
# the checked-in seeds. Crashing inputs land in fuzz/artifacts/<target>/: copy each into
# crates/disk/tests/fuzz_regressions/ so the test suite replays it for good.
set -euo pipefail
cd "$(dirname "$0")/../fuzz"
secs="${FUZZ_SECONDS:-60}"
for target in $(cargo +nightly fuzz list); do
  mkdir -p "corpus/$target"
  cp -n seeds/* "corpus/$target/" 2>/dev/null || true
  echo "fuzz: $target for ${secs}s" >&2
  cargo +nightly fuzz run "$target" "corpus/$target" -- \
    -max_total_time="$secs" -rss_limit_mb=2048 -max_len=1048576 -print_final_stats=0 2>&1 | tail -n 3
done
