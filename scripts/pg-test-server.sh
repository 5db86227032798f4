#!/usr/bin/env bash
# A throw-away PostgreSQL server for the test suite, in a temp directory, run as a non-root
# user (PostgreSQL refuses to run as root: as root, the `postgres` user Debian's package makes).
#   scripts/pg-test-server.sh start DIR   # prints `export MAILGATE_TEST_PG=… MAILGATE_TEST_PG_CA=…`
#   scripts/pg-test-server.sh stop DIR
set -euo pipefail
cmd=${1:?start or stop}
dir=${2:?directory}
bin=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1)
if [ -z "$bin" ] || [ ! -x "$bin/postgres" ]; then
    echo "no PostgreSQL server under /usr/lib/postgresql (apt-get install postgresql)" >&2
    exit 1
fi
as_owner() {
    if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi
}
case "$cmd" in
start)
    rm -rf "$dir" && mkdir -p "$dir"
    # TLS for the sslmode tests: a CA, and a server certificate it signs for 127.0.0.1
    # (rustls takes no CA certificate as a server's own).
    openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj "/CN=mailgate test CA" \
        -keyout "$dir/ca.key" -out "$dir/ca.crt" 2>/dev/null
    openssl req -newkey rsa:2048 -nodes -subj /CN=127.0.0.1 \
        -keyout "$dir/server.key" -out "$dir/server.csr" 2>/dev/null
    printf 'subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\n' > "$dir/ext"
    openssl x509 -req -in "$dir/server.csr" -CA "$dir/ca.crt" -CAkey "$dir/ca.key" \
        -CAcreateserial -days 2 -extfile "$dir/ext" -out "$dir/server.crt" 2>/dev/null
    chmod 600 "$dir/server.key" "$dir/ca.key"
    if [ "$(id -u)" = 0 ]; then chown -R postgres: "$dir"; fi
    as_owner "$bin/initdb" -A trust -U mailgate -E UTF8 -D "$dir/data" >/dev/null
    port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
    as_owner "$bin/pg_ctl" -D "$dir/data" -l "$dir/server.log" -w -t 60 start -o \
        "-c listen_addresses=127.0.0.1 -c port=$port -c unix_socket_directories=$dir \
         -c ssl=on -c ssl_cert_file=$dir/server.crt -c ssl_key_file=$dir/server.key \
         -c max_connections=300 -c fsync=on -c synchronous_commit=on" >/dev/null
    echo "export MAILGATE_TEST_PG=postgres://mailgate@127.0.0.1:$port/postgres?sslmode=disable"
    echo "export MAILGATE_TEST_PG_CA=$dir/ca.crt"
    ;;
stop)
    as_owner "$bin/pg_ctl" -D "$dir/data" -m fast -w stop >/dev/null 2>&1 || true
    rm -rf "$dir"
    ;;
*)
    echo "usage: $0 start|stop DIR" >&2
    exit 2
    ;;
esac
