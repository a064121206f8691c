#!/usr/bin/env bash
# The whole test suite, with what it needs on the machine: redis-server, which the Redis
# backplane tests start on loopback ports of their own choosing.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v redis-server >/dev/null; then
    if [ "$(id -u)" -ne 0 ]; then
        echo "the Redis tests need redis-server: install Debian's redis-server package" >&2
        exit 1
    fi
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server >/dev/null
fi

exec cargo test --all-features "$@"
