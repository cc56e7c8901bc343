#!/usr/bin/env bash
# Runs the conformance suite: google-auth against the gcp-emulator binary, grpcio against the
# token-broker binary (in dev mode), and real Google clients (google-auth, Node's
# google-auth-library, gcloud) against the broker's metadata sidecar. The caller builds the
# binaries (cargo build -p gcp-emulator -p token-broker -p broker-client --bins); this script
# does not.
#   GCP_EMULATOR_BIN  emulator binary (default <repo>/target/debug/gcp-emulator)
#   TOKEN_BROKER_BIN  broker binary (default <repo>/target/debug/token-broker)
#   TOKENCTL_BIN      tokenctl binary (default: next to TOKEN_BROKER_BIN)
#   PYTHON            interpreter used to create the venv (default python3)
# It installs the Node client's packages (node/package-lock.json, `npm ci`) when npm is on the
# PATH and the lock file changed; without npm the Node test is skipped.
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

node_dir="$here/node"
node_stamp="$node_dir/node_modules/.package-lock.sha256"
if command -v npm >/dev/null 2>&1; then
    want="$(sha256sum "$node_dir/package-lock.json" | cut -d' ' -f1)"
    if [ ! -f "$node_stamp" ] || [ "$(cat "$node_stamp")" != "$want" ]; then
        (cd "$node_dir" && npm ci --no-audit --no-fund --loglevel=error)
        echo "$want" > "$node_stamp"
    fi
else
    echo "run.sh: npm is not on the PATH; the Node google-auth-library test will be skipped" >&2
fi

export GCP_EMULATOR_BIN="${GCP_EMULATOR_BIN:-$repo/target/debug/gcp-emulator}"
export TOKEN_BROKER_BIN="${TOKEN_BROKER_BIN:-$repo/target/debug/token-broker}"
export TOKENCTL_BIN="${TOKENCTL_BIN:-$(dirname "$TOKEN_BROKER_BIN")/tokenctl}"
cd "$repo"
exec "$venv/bin/python" -m pytest -q tests/conformance "$@"
