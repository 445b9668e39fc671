#!/usr/bin/env bash
# berth's full test suite: formatting, lints, unit and integration tests (against real qemu-img),
# and a bounded fuzzing run of every fuzz target. This is what CI runs (.ci/run).
set -euo pipefail
cd "$(dirname "$0")/.."

./scripts/setup.sh

echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy"
cargo clippy --workspace --all-targets --quiet -- -D warnings
echo "== cargo test"
cargo test --workspace --quiet 2>&1
echo "== end-to-end tests again, through berth daemon (a subset, unchanged)"
BERTH_E2E_THROUGH_DAEMON=1 cargo test --quiet -p berth-cli --test e2e_container -- \
  exit_status_hostname_and_isolation memory_limit_oom_kills_inside_only \
  kept_container_lists_and_deletes_clean bad_limits_are_refused_before_anything_is_made \
  exec_joins_a_running_command_container 2>&1
BERTH_E2E_THROUGH_DAEMON=1 cargo test --quiet -p berth-cli --test e2e_system_container -- \
  system_container_boots_systemd_with_its_own_identity 2>&1
BERTH_E2E_THROUGH_DAEMON=1 cargo test --quiet -p berth-cli --test e2e_vm -- \
  the_missions_cloud_config_as_written_serves_nginx 2>&1
echo "== fuzz (bounded)"
FUZZ_SECONDS="${FUZZ_SECONDS:-20}" ./scripts/fuzz.sh
