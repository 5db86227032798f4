#!/usr/bin/env bash
# Durable submits/s of one site on SQLite, on PostgreSQL with one node, and on PostgreSQL with
# two nodes (127.0.0.2 and 127.0.0.3 over one database), in one run, through `bench store`
# and through real `mailgate serve` processes with `bench mmtp` (docs/scaling.md, "Measured").
#   scripts/bench-cluster.sh [MAILGATE_BINARY]     (default: target/release/mailgate)
# Uses $MAILGATE_TEST_PG (a server where the user may create databases) or starts a throw-away
# server with scripts/pg-test-server.sh. Every load is bounded (--messages, --seconds).
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
bin=$(realpath "${1:-$here/target/release/mailgate}")
messages=${MESSAGES:-20000}
accounts=${ACCOUNTS:-100}
work=$(mktemp -d /tmp/mailgate-bench-cluster.XXXX)
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    if [ -n "${own_pg:-}" ]; then bash "$here/scripts/pg-test-server.sh" stop "$own_pg"; fi
    rm -rf "$work"
}
trap cleanup EXIT
if [ -z "${MAILGATE_TEST_PG:-}" ]; then
    own_pg=$work/pg
    eval "$(bash "$here/scripts/pg-test-server.sh" start "$own_pg")"
fi
server=${MAILGATE_TEST_PG%%\?*}
server=${server%/*}
export RUST_LOG=${RUST_LOG:-warn}
fresh_db() {
    local name="bench_cluster_$(date +%s%N)"
    psql -q "$MAILGATE_TEST_PG" -c "CREATE DATABASE $name" >/dev/null
    echo "$server/$name?sslmode=disable"
}
free_port() {
    python3 -c 'import socket,sys; s=socket.socket(); s.bind((sys.argv[1],0)); print(s.getsockname()[1])' "$1"
}
rate() { python3 -c 'import json,sys; d=json.loads(sys.stdin.read().strip().splitlines()[-1]); print("%.0f/s  p50 %.1f ms  p99 %.1f ms" % (d["ops_per_sec"], d["p50_ms"], d["p99_ms"]))'; }

# A node: config in $work/$name, store URL $2 (empty: SQLite in its data dir), on address $3;
# sets $node to its MMTP address.
start_node() {
    local name=$1 url=$2 ip=$3 dir=$work/$1
    mkdir -p "$dir"
    local port admin
    port=$(free_port "$ip")
    admin=$(free_port "$ip")
    {
        echo "data_dir = \"$dir/data\""
        echo 'domains = ["localhost"]'
        echo "[admin]"; echo "listen = \"$ip:$admin\""
        echo "[mmtp]"; echo "listen = \"$ip:$port\""; echo "tls_listen = \"$ip:0\""
        echo "hashcash_difficulty = 2"; echo "requests_per_sec = 0.0"
        echo "[immp]"; echo "listen = \"$ip:0\""
        echo "[xhmtp]"; echo "listen = \"$ip:0\""
        if [ -n "$url" ]; then echo "[store]"; echo "url = \"$url\""; echo "pool_size = 16"; fi
    } > "$dir/mailgate.toml"
    (cd "$dir" && NO_COLOR=1 exec "$bin" serve --config "$dir/mailgate.toml" >"$dir/log" 2>&1) &
    pids+=($!)
    for _ in $(seq 1 300); do
        if "$bin" health --config "$dir/mailgate.toml" >/dev/null 2>&1; then
            node=$ip:$port
            return
        fi
        sleep 0.1
    done
    echo "node $name did not start:" >&2
    cat "$dir/log" >&2
    exit 1
}
add_accounts() {
    for i in $(seq 0 $((accounts - 1))); do
        echo "pw-bench-$i" | "$bin" user add "(user$i)%(localhost)" --password-stdin \
            --config "$1" >/dev/null 2>&1
    done
}
stop_nodes() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    pids=()
}
mmtp() {
    local connections=$1
    shift
    local targets=()
    for t in "$@"; do targets+=(--target "$t"); done
    "$bin" bench mmtp "${targets[@]}" --to '(user{n})%(localhost)' --spread "$accounts" \
        --connections "$connections" --sources $(((connections + 15) / 16)) \
        --messages "$messages" --difficulty 2 --seconds 120 --json | rate
}

echo "== bench store: $messages submits of 4 KiB, 64 tasks, one mailbox / $accounts mailboxes"
cd "$work"
for spread in 1 "$accounts"; do
    echo "SQLite, $spread mailbox(es):      $("$bin" bench store --messages "$messages" --tasks 64 --accounts "$spread" --json | rate)"
    echo "PostgreSQL, $spread mailbox(es):  $("$bin" bench store --messages "$messages" --tasks 64 --accounts "$spread" --store "$(fresh_db)" --json | rate)"
done
url=$(fresh_db)
"$bin" bench store --messages 1 --accounts "$accounts" --store "$url" --json >/dev/null
a=$work/two-a.json
b=$work/two-b.json
"$bin" bench store --messages $((messages / 2)) --tasks 32 --accounts "$accounts" --store "$url" --json > "$a" &
first=$!
"$bin" bench store --messages $((messages / 2)) --tasks 32 --accounts "$accounts" --store "$url" --json > "$b"
wait "$first"
echo "PostgreSQL, 2 processes × 32 tasks, $accounts mailboxes: $(rate < "$a") + $(rate < "$b")"

# One case: nodes on the addresses given, over one store ($2: its URL; empty: SQLite), the
# load shared out among them.
serve_case() {
    local label=$1 url=$2 connections=$3
    shift 3
    local targets=() i=0
    for ip in "$@"; do
        i=$((i + 1))
        start_node "node$i" "$url" "$ip"
        targets+=("$node")
    done
    add_accounts "$work/node1/mailgate.toml"
    echo "$label $(mmtp "$connections" "${targets[@]}")"
    stop_nodes
    rm -rf "$work"/node*
}
for connections in 16 64; do
    echo "== bench mmtp: $connections connections, $messages SENDs of 4 KiB spread over $accounts mailboxes"
    serve_case "SQLite, 1 node:     " "" "$connections" 127.0.0.2
    serve_case "PostgreSQL, 1 node: " "$(fresh_db)" "$connections" 127.0.0.2
    serve_case "PostgreSQL, 2 nodes:" "$(fresh_db)" "$connections" 127.0.0.2 127.0.0.3
done
