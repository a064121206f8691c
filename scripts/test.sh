#!/usr/bin/env bash
# The whole test suite, with what it needs on the machine: redis-server and nginx, which
# the Redis backplane and proxy tests start on loopback ports of their own choosing.
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

# nginx, for the proxy tests (tests/proxy.rs), which start their own on loopback ports.
# Debian's package would start a system nginx on port 80: policy-rc.d stops that.
if ! command -v nginx >/dev/null && [ ! -x /usr/sbin/nginx ]; then
    if [ "$(id -u)" -ne 0 ]; then
        echo "the proxy tests need nginx: install Debian's nginx-light package" >&2
        exit 1
    fi
    policy=/usr/sbin/policy-rc.d
    made_policy=
    if [ ! -e "$policy" ]; then
        printf '#!/bin/sh\nexit 101\n' >"$policy" && chmod +x "$policy" && made_policy=1
    fi
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nginx-light >/dev/null
    [ -z "$made_policy" ] || rm -f "$policy"
fi
FANOUT_NGINX=${FANOUT_NGINX:-$(command -v nginx || echo /usr/sbin/nginx)}
export FANOUT_NGINX

exec cargo test --all-features "$@"
