#!/usr/bin/env bash
# Durable SMTP accepts/s of mailgate's MX listener and of Postfix (Debian's package) on the same
# machine, with the same load generator (`mailgate bench smtp`: pipelined transactions over
# concurrent connections, 4 KiB bodies; a 250 after the dot is a message on disk — Postfix fsyncs
# its queue file before it answers, mailgate commits its store). docs/protocols/smtp.md,
# "Measured", holds the figures.
#   sudo scripts/bench-smtp.sh [MAILGATE_BINARY]      (default: target/release/mailgate)
# Needs root (Postfix's master runs as root). Every load is bounded (--messages, --seconds).
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
bin=$(realpath "${1:-$here/target/release/mailgate}")
messages=${MESSAGES:-20000}
seconds=${SECONDS_MAX:-30}
connections=${CONNECTIONS:-"16 64"}
work=$(mktemp -d /tmp/mailgate-bench-smtp.XXXX)
chmod 755 "$work"
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    /usr/sbin/postfix -c "$work/postfix/conf" stop >/dev/null 2>&1 || true
    wait 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT
export RUST_LOG=${RUST_LOG:-warn}
free_port() {
    python3 -c 'import socket,sys; s=socket.socket(); s.bind((sys.argv[1],0)); print(s.getsockname()[1])' "$1"
}
rate() { python3 -c 'import json,sys; d=json.loads(sys.stdin.read().strip().splitlines()[-1]); print("%6.0f/s  p50 %5.1f ms  p99 %6.1f ms  (%d messages)" % (d["ops_per_sec"], d["p50_ms"], d["p99_ms"], d["ops"]))'; }
bench() {
    "$bin" bench smtp --target "$1" --to "$2" --connections "$3" --messages "$messages" \
        --seconds "$seconds" --size 4096 --json | rate
}

# Postfix on 127.0.0.9: mail for legacy.test into one maildir, as the interoperability tests do.
pf=$work/postfix
mkdir -p "$pf"/{conf,queue,data,mail}
pf_ip=127.0.0.9
pf_port=$(free_port $pf_ip)
cat > "$pf/conf/main.cf" <<EOF
compatibility_level = 3.6
queue_directory = $pf/queue
data_directory = $pf/data
mail_owner = postfix
myhostname = mx.legacy.test
mydestination =
inet_interfaces = loopback-only
inet_protocols = ipv4
mynetworks = 127.0.0.0/8
virtual_mailbox_domains = legacy.test
virtual_mailbox_base = $pf/mail
virtual_mailbox_maps = static:maildir/
virtual_uid_maps = static:$(id -u postfix)
virtual_gid_maps = static:$(id -g postfix)
virtual_minimum_uid = 1
alias_maps =
alias_database =
notify_classes =
maillog_file = $pf/maillog
maillog_file_prefixes = $pf
smtpd_client_connection_count_limit = 0
message_size_limit = 20480000
EOF
sed "s|^smtp      inet.*|$pf_ip:$pf_port inet n - n - - smtpd|" /etc/postfix/master.cf > "$pf/conf/master.cf"
chown postfix "$pf/data" "$pf/mail"
/usr/sbin/postfix -c "$pf/conf" start >/dev/null 2>&1
for _ in $(seq 1 100); do
    (exec 3<>"/dev/tcp/$pf_ip/$pf_port") 2>/dev/null && break
    sleep 0.1
done

# mailgate on 127.0.0.10, SQLite with its defaults, one account.
mg=$work/mailgate
mkdir -p "$mg"
mg_ip=127.0.0.10
mg_port=$(free_port $mg_ip)
{
    echo "data_dir = \"$mg/data\""
    echo 'domains = ["a.test"]'
    echo "[limits]"; echo "max_connections_per_ip = 256"; echo "max_connections_per_prefix = 256"
    echo "[admin]"; echo "listen = \"$mg_ip:$(free_port $mg_ip)\""
    echo "[mmtp]"; echo "listen = \"$mg_ip:0\""; echo "tls_listen = \"$mg_ip:0\""
    echo "[immp]"; echo "listen = \"$mg_ip:0\""
    echo "[xhmtp]"; echo "listen = \"$mg_ip:0\""
    echo "[smtp]"; echo "listen = \"$mg_ip:$mg_port\""
    echo 'submission_listen = "127.0.0.10:0"'; echo 'submissions_listen = "127.0.0.10:0"'
    echo "verify_senders = false"
    echo "[tmtp]"; echo "listen = \"$mg_ip:0\""
    echo "[dns]"; echo 'servers = ["127.0.0.1:9"]'
} > "$mg/mailgate.toml"
echo 'pw-sink' | "$bin" user add sink@a.test --password-stdin --config "$mg/mailgate.toml" >/dev/null
(cd "$mg" && NO_COLOR=1 exec "$bin" serve --config "$mg/mailgate.toml" >"$mg/log" 2>&1) &
pids+=($!)
for _ in $(seq 1 300); do
    "$bin" health --config "$mg/mailgate.toml" >/dev/null 2>&1 && break
    sleep 0.1
done

echo "== durable SMTP accepts, 4 KiB bodies, $(nproc) cores ($(/usr/sbin/postconf -d mail_version 2>/dev/null))"
for c in $connections; do
    echo "-- $c connections"
    printf 'postfix   '; bench "$pf_ip:$pf_port" sink@legacy.test "$c"
    printf 'mailgate  '; bench "$mg_ip:$mg_port" sink@a.test "$c"
done
