#!/usr/bin/env bash
# Runs every fuzz target for SECONDS each (default 30), starting from the committed seeds.
#
#   fuzz/run.sh [SECONDS]
#
# cargo-fuzz needs nightly-only rustc flags (-Zsanitizer); RUSTC_BOOTSTRAP=1 lets the stable
# toolchain accept them, so no nightly toolchain is required. New corpus entries go to
# fuzz/corpus/<target> (ignored by git); crashes to fuzz/artifacts/<target>. A crash stops the
# run with a non-zero exit; add the crashing input to fuzz/seeds/<target>/ as a regression.
set -euo pipefail

secs="${1:-30}"
here="$(cd "$(dirname "$0")" && pwd)"
cd "$here/.."

if ! command -v cargo-fuzz >/dev/null 2>&1; then
    echo "fuzz/run.sh: installing cargo-fuzz" >&2
    cargo install cargo-fuzz --locked
fi

export RUSTC_BOOTSTRAP=1
targets=(http_request chunked sse jsonrpc config modern jwt rules)
summary=""
log="$(mktemp)"
trap 'rm -f "$log"' EXIT
for t in "${targets[@]}"; do
    # The seeds stay read-only: libFuzzer writes new inputs to the first corpus directory.
    mkdir -p "fuzz/corpus/$t"
    echo "== $t: ${secs}s" >&2
    if ! cargo fuzz run "$t" "fuzz/corpus/$t" "fuzz/seeds/$t" -- -max_total_time="$secs" -max_len=4096 2>"$log"; then
        tail -n 40 "$log" >&2
        echo "fuzz/run.sh: $t FAILED (see fuzz/artifacts/$t)" >&2
        exit 1
    fi
    # libFuzzer's last words: "Done N runs in S second(s)".
    runs="$(grep -o 'Done [0-9]* runs in [0-9]* second' "$log" | tail -n 1 | awk '{print $2}')"
    summary+="$(printf '%-14s %12s execs in %ss, 0 crashes' "$t" "${runs:-?}" "$secs")"$'\n'
done
printf '\nfuzz summary:\n%s' "$summary"
echo "fuzz/run.sh: all targets ran ${secs}s without a crash" >&2
