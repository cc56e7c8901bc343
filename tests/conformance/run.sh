#!/usr/bin/env bash
# Runs the conformance suite: google-auth against the gcp-emulator binary, grpcio against the
# token-broker binary (in dev mode). The caller builds both (cargo build -p gcp-emulator
# -p token-broker); this script does not.
#   GCP_EMULATOR_BIN  emulator binary (default <repo>/target/debug/gcp-emulator)
#   TOKEN_BROKER_BIN  broker binary (default <repo>/target/debug/token-broker)
#   PYTHON            interpreter used to create the venv (default python3)
# Extra arguments go to pytest. pytest's exit code is the script's exit code.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
venv="$repo/.venv/conformance"
req="$here/requirements.txt"
stamp="$venv/.requirements.sha256"

if [ ! -x "$venv/bin/python" ]; then
    "${PYTHON:-python3}" -m venv "$venv"
fi

want="$(sha256sum "$req" | cut -d' ' -f1)"
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
    "$venv/bin/python" -m pip install -q --disable-pip-version-check -r "$req"
    echo "$want" > "$stamp"
fi

export GCP_EMULATOR_BIN="${GCP_EMULATOR_BIN:-$repo/target/debug/gcp-emulator}"
export TOKEN_BROKER_BIN="${TOKEN_BROKER_BIN:-$repo/target/debug/token-broker}"
cd "$repo"
exec "$venv/bin/python" -m pytest -q tests/conformance "$@"
