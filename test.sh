#!/usr/bin/env bash
# The test command: builds everything (Release) and runs the whole test suite.
set -euo pipefail
cd "$(dirname "$0")"
dotnet build AllTokens.slnx -c Release -nologo -v q -clp:NoSummary
dotnet test --solution AllTokens.slnx -c Release --no-build "$@"
