#!/usr/bin/env bash
# Each sample answers --help and, with its short-duration flag, exits 0 and proves nothing was lost.
set -euo pipefail
for project in samples/JobPipeline samples/ApiGateway; do
  echo "--- $project --help"
  dotnet run --project "$project" -- --help | head -n 3
  echo "--- $project --quick"
  out=$(mktemp)
  dotnet run --project "$project" -- --quick | tee "$out"
  grep -q "^Nothing lost" "$out"
done
dotnet run --project samples/Demo -- --help > /dev/null
