#!/usr/bin/env bash
# Makes what the compose stack needs and git must never hold, from a loki
# binary (LOKI; by default built from this checkout with go):
#
#   DIR/auth/                  the identities: a Loki data dir's auth/ (0700),
#                              with every seed, admin.nk and client.nk too
#   DIR/nats/loki-auth.conf    `loki auth export`: every identity's rights, for
#                              the three nats-server nodes (no secret)
#   DIR/secrets/COMPONENT.nk   a copy of each component's seed, the one file
#                              its container mounts (read-only)
#   DIR/secrets/cluster.conf   the cluster's route credential and routes
#
# DIR is this directory unless given. secrets/ is 0700 and its files 0444, so
# the containers' own user (65532) can read what is mounted for it while
# other users of the host cannot reach the directory. Running it again keeps
# the identities and the route password, and re-exports: do that after every
# `loki auth add`, `add-device` or `revoke --data-dir DIR`, then reload the
# servers (docker compose kill -s HUP nats-1 nats-2 nats-3).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
dir=${1:-$here}
mkdir -p "$dir/nats"
dir=$(cd "$dir" && pwd)

loki=${LOKI:-}
if [ -z "$loki" ]; then
  command -v go >/dev/null || { echo "setup.sh: set LOKI to a loki binary, or install Go to build one" >&2; exit 1; }
  bin=$(mktemp -d)
  trap 'rm -rf "$bin"' EXIT
  (cd "$here/.." && CGO_ENABLED=0 go build -o "$bin/loki" ./cmd/loki)
  loki=$bin/loki
fi

# Creates the built-in identities on first use; `loki auth` never talks to a
# server here (no `loki up` holds DIR).
"$loki" auth export --data-dir "$dir" -o "$dir/nats/loki-auth.conf"
chmod 0644 "$dir/nats/loki-auth.conf"

install -d -m 0700 "$dir/secrets"
for c in loki hel fenrir jormungandr jotunheim gateway auth; do
  install -m 0444 "$dir/auth/$c.nk" "$dir/secrets/$c.nk"
done

if [ ! -s "$dir/secrets/cluster.conf" ]; then
  pass=$(head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n')
  umask 0222
  cat >"$dir/secrets/cluster.conf" <<CONF
# The route credential of the compose cluster, made by setup.sh. A secret.
authorization {
  user: "route"
  password: "$pass"
}
routes: [
  "nats-route://route:$pass@nats-1:6222"
  "nats-route://route:$pass@nats-2:6222"
  "nats-route://route:$pass@nats-3:6222"
]
CONF
fi

echo "setup.sh: identities in $dir/auth, exported to $dir/nats/loki-auth.conf, component seeds in $dir/secrets"
