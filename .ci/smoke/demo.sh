#!/usr/bin/env bash
# The README's main command, shortened: it must exit 0 and prove nothing was lost.
set -euo pipefail
out=$(mktemp)
dotnet run --project samples/Demo -- --quick | tee "$out"
grep -q "Nothing lost" "$out"
