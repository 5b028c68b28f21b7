#!/usr/bin/env bash
# Installs what the tests need (PostgreSQL 15 for the comparison tests, moto's S3 server for
# the S3 object store tests, PyYAML for the workflow test) and runs every test:
# unit tests, integration tests with real processes, and the PostgreSQL comparison.
set -euo pipefail
cd "$(dirname "$0")/.."

# Builds go outside the clone so repeated runs reuse them; a clean run still works.
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/omendb-target}"

have_postgres() {
    command -v psql >/dev/null && command -v initdb >/dev/null && command -v pg_ctl >/dev/null && command -v postgres >/dev/null
}
if ! have_postgres && [ -d /usr/lib/postgresql/15/bin ]; then
    export PATH="/usr/lib/postgresql/15/bin:$PATH"
fi
if ! have_postgres; then
    echo "installing PostgreSQL 15 for the comparison tests" >&2
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql-15 postgresql-client-15 >/dev/null
    export PATH="/usr/lib/postgresql/15/bin:$PATH"
fi
if [ "$(id -u)" = 0 ] && ! id postgres >/dev/null 2>&1; then
    useradd --system --home-dir /var/lib/postgresql --shell /bin/bash postgres
fi

if ! command -v moto_server >/dev/null; then
    echo "installing moto's S3 server for the S3 object store tests" >&2
    python3 -m pip install --quiet 'moto[server]'
    # A user install puts the script in ~/.local/bin; pyenv needs its shims rebuilt.
    export PATH="$HOME/.local/bin:$PATH"
    command -v pyenv >/dev/null && pyenv rehash
    hash -r
fi
if ! command -v moto_server >/dev/null; then
    echo "moto_server is not on PATH after installing moto[server]" >&2
    exit 1
fi

# The branch-per-PR workflow test reads the workflow file with PyYAML (moto brings it).
if ! python3 -c 'import yaml' 2>/dev/null; then
    python3 -m pip install --quiet pyyaml
fi

cargo build --workspace --all-targets --locked
log="$(mktemp)"
trap 'rm -f "$log"' EXIT
set +e
cargo test --workspace --locked -- --test-threads=2 2>&1 | tee "$log"
status=${PIPESTATUS[0]}
set -e
# One closing line for the whole run: cargo's last line is often a doc-test crate with no tests.
awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($(i+1) ~ /^passed/) p += $i; if ($(i+1) ~ /^failed/) f += $i } }
     END { printf "summary: %d passed, %d failed\n", p, f }' "$log"
exit "$status"
