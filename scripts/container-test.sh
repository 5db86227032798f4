#!/usr/bin/env bash
# The container, proven: build the image, run it with a named volume, wait until healthy, add
# an account, send and read through MMTP, IMMP and XHMTP from the host, restart and find
# everything again, check the user and file modes, a partial config file, the logs, `docker
# stop`; then measure the image's size and a cached rebuild after a one-line change.
#   scripts/container-test.sh            (exit 0: passed; 1: failed; 3: no Docker engine here)
# Where the public base images cannot be pulled (no registry), it makes them offline:
# debian:bookworm-slim with debootstrap, and a builder (rust:1-bookworm) = that base +
# build-essential + this machine's Rust toolchain + this machine's extra CA certificates (for a
# TLS-intercepting proxy; the builder only, never the shipped image). Needs root for that.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
image=${IMAGE:-mailgate:container-test}
cache=${CONTAINER_CACHE:-/var/cache/mailgate-container-test}
work=$(mktemp -d /tmp/mailgate-container-test.XXXX)
name=mgct-$$
volume=mgct-data-$$
started_dockerd=
# The Dockerfile needs BuildKit: the buildx plugin, or a Docker client that has it built in
# (Debian's docker.io 20.10, /usr/bin/docker, with DOCKER_BUILDKIT=1).
build() {
    if docker buildx version >/dev/null 2>&1; then
        DOCKER_BUILDKIT=1 docker build "$@"
    else
        DOCKER_BUILDKIT=1 /usr/bin/docker build "$@"
    fi
}
say() { echo "== $*"; }
fail() { echo "FAILED: $*" >&2; exit 1; }
cleanup() {
    docker rm -f "$name" "$name-partial" >/dev/null 2>&1 || true
    docker volume rm -f "$volume" "$volume-partial" >/dev/null 2>&1 || true
    # Never remove a tree with /proc still mounted in it (a run stopped inside the chroot).
    umount "$work/builder/proc" 2>/dev/null || true
    mountpoint -q "$work/builder/proc" 2>/dev/null || rm -rf "$work"
    if [ -n "$started_dockerd" ]; then kill "$started_dockerd" 2>/dev/null || true; fi
}
trap cleanup EXIT

# --- a Docker engine -------------------------------------------------------------------------
if ! docker info >/dev/null 2>&1; then
    if [ "$(id -u)" = 0 ] && command -v dockerd >/dev/null; then
        say "starting dockerd"
        dockerd >"$work/dockerd.log" 2>&1 &
        started_dockerd=$!
        for _ in $(seq 1 60); do docker info >/dev/null 2>&1 && break; sleep 0.5; done
    fi
    if ! docker info >/dev/null 2>&1; then
        echo "no Docker engine: $(command -v dockerd >/dev/null && echo 'dockerd would not start' || echo 'dockerd is not installed') (see $work/dockerd.log)" >&2
        tail -5 "$work/dockerd.log" 2>/dev/null >&2 || true
        exit 3
    fi
fi

# --- base images: pulled, or made here ------------------------------------------------------
rootfs() {
    if [ ! -f "$cache/rootfs/.done" ]; then
        say "debootstrap --variant=minbase bookworm (no registry reachable)"
        rm -rf "$cache/rootfs"
        mkdir -p "$cache"
        debootstrap --variant=minbase bookworm "$cache/rootfs" http://deb.debian.org/debian >"$work/debootstrap.log" 2>&1 \
            || { tail -20 "$work/debootstrap.log"; fail "debootstrap"; }
        # What debian:bookworm-slim leaves out too: package lists, docs, man pages, locales.
        rm -rf "$cache/rootfs/var/cache/apt/archives/"*.deb "$cache/rootfs/var/lib/apt/lists/"* \
            "$cache/rootfs/usr/share/doc" "$cache/rootfs/usr/share/man" "$cache/rootfs/usr/share/info" \
            "$cache/rootfs/usr/share/locale/"*
        # As in the official slim image: apt keeps no package caches in image layers.
        printf '%s\n' \
            'DPkg::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/*.bin || true"; };' \
            'APT::Update::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/*.bin || true"; };' \
            'Dir::Cache::pkgcache ""; Dir::Cache::srcpkgcache "";' \
            >"$cache/rootfs/etc/apt/apt.conf.d/docker-clean"
        touch "$cache/rootfs/.done"
    fi
}
if ! docker image inspect debian:bookworm-slim >/dev/null 2>&1 \
    && ! timeout 60 docker pull debian:bookworm-slim >/dev/null 2>&1; then
    rootfs
    say "importing the offline base as debian:bookworm-slim"
    tar -C "$cache/rootfs" --exclude=./.done -c . | docker import - debian:bookworm-slim >/dev/null
fi
if ! docker image inspect rust:1-bookworm >/dev/null 2>&1 \
    && ! timeout 60 docker pull rust:1-bookworm >/dev/null 2>&1; then
    rootfs
    say "making the builder rust:1-bookworm: base + build-essential + this machine's toolchain"
    b=$work/builder
    cp -a "$cache/rootfs" "$b"
    rm -f "$b/.done"
    # This machine's extra CAs (a TLS-intercepting proxy): in the builder only.
    mkdir -p "$b/usr/local/share/ca-certificates"
    cp /usr/local/share/ca-certificates/*.crt "$b/usr/local/share/ca-certificates/" 2>/dev/null || true
    mount --bind /proc "$b/proc"
    chroot "$b" sh -c 'apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
        --no-install-recommends build-essential ca-certificates >/dev/null \
        && update-ca-certificates >/dev/null && apt-get clean && rm -rf /var/lib/apt/lists/*' \
        >"$work/builder.log" 2>&1 || { umount "$b/proc"; tail -20 "$work/builder.log"; fail "builder packages"; }
    umount "$b/proc"
    toolchain=$(dirname "$(dirname "$(rustup which rustc 2>/dev/null || command -v rustc)")")
    mkdir -p "$b/usr/local/rust" "$b/usr/local/cargo/bin"
    cp -a "$toolchain/bin" "$toolchain/lib" "$b/usr/local/rust/"
    tar -C "$b" -c . | docker import \
        -c 'ENV PATH=/usr/local/cargo/bin:/usr/local/rust/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
        -c 'ENV CARGO_HOME=/usr/local/cargo' - rust:1-bookworm >/dev/null
fi

# --- build ----------------------------------------------------------------------------------
# The build context is the tracked files (uncommitted changes included) as `git archive` writes
# them: every file and directory with one time, as in a checkout an operator edits — so the
# one-line change below is the only thing newer than the first build, and it stays there.
src=$work/src
mkdir -p "$src"
rev=$(cd "$here" && git stash create)
(cd "$here" && git archive "${rev:-HEAD}") | tar -x -C "$src"
say "docker build"
t0=$(date +%s)
build --progress=plain -t "$image" "$src" >"$work/build.log" 2>&1 || { tail -40 "$work/build.log"; fail "docker build"; }
echo "first build: $(( $(date +%s) - t0 )) s"
size=$(docker image inspect -f '{{.Size}}' "$image")
echo "image size: $(( size / 1000000 )) MB"
[ "$size" -le 110000000 ] || fail "the image is larger than 110 MB"

# --- run ------------------------------------------------------------------------------------
wait_healthy() {
    for _ in $(seq 1 120); do
        case $(docker inspect -f '{{.State.Health.Status}}' "$1" 2>/dev/null) in
            healthy) return 0 ;;
        esac
        sleep 1
    done
    docker logs "$1" 2>&1 | tail -20
    fail "$1 never became healthy"
}
docker run -d --name "$name" -v "$volume:/var/lib/mailgate" \
    -p 127.0.0.1::8025 -p 127.0.0.1::8026 -p 127.0.0.1::1025 -p 127.0.0.1::8080 "$image" >/dev/null
wait_healthy "$name"
say "healthy"
port() { docker port "$name" "$1/tcp" | head -1 | sed 's/.*://'; }
# The host's client: the image's own binary (same Debian), and the certificate it generated.
docker cp "$name:/usr/local/bin/mailgate" "$work/mailgate" >/dev/null
docker cp "$name:/var/lib/mailgate/tls/cert.pem" "$work/cert.pem" >/dev/null
mg() { NO_COLOR=1 "$work/mailgate" "$@"; }
echo 's3cret' | docker exec -i "$name" mailgate user add alice@localhost --password-stdin >/dev/null
echo 's3cret' | docker exec -i "$name" mailgate user add bob@localhost --password-stdin >/dev/null
common=(--ca "$work/cert.pem" --tls-name localhost)
echo 's3cret' | mg send --server "127.0.0.1:$(port 8026)" --tls "${common[@]}" --login alice@localhost --to bob@localhost --subject 'over MMTP' >/dev/null
echo 's3cret' | mg send --protocol immp --server "127.0.0.1:$(port 1025)" "${common[@]}" --login alice@localhost --to bob@localhost --subject 'over IMMP' >/dev/null
echo 's3cret' | mg send --protocol xhmtp --server "127.0.0.1:$(port 8080)" --login alice@localhost --to bob@localhost --subject 'over XHMTP' >/dev/null
read_inbox() {
    echo 's3cret' | mg receive --protocol immp --server "127.0.0.1:$(port 1025)" "${common[@]}" --login bob@localhost
}
inbox=$(read_inbox)
for s in 'over MMTP' 'over IMMP' 'over XHMTP'; do
    grep -q "\"subject\":\"$s\"" <<<"$inbox" || fail "bob's INBOX lacks '$s': $inbox"
done
feed=$(echo 's3cret' | mg receive --protocol xhmtp --server "127.0.0.1:$(port 8080)" --login bob@localhost)
[ "$(grep -c . <<<"$feed")" = 3 ] || fail "the XHMTP feed: $feed"
say "sent and read through MMTP, IMMP and XHMTP from the host"

# User and file modes.
[ "$(docker exec "$name" id -u)" != 0 ] || fail "runs as root"
modes=$(docker exec "$name" stat -c '%a %n' /var/lib/mailgate /var/lib/mailgate/mailgate.db /var/lib/mailgate/tls/key.pem)
echo "$modes"
grep -q '^700 /var/lib/mailgate$' <<<"$modes" || fail "data directory mode"
grep -q '^600 /var/lib/mailgate/mailgate.db$' <<<"$modes" || fail "database mode"
grep -q '^600 /var/lib/mailgate/tls/key.pem$' <<<"$modes" || fail "key mode"
# None of this machine's extra CAs (the builder's) is trusted by the image.
# (Outputs are read whole before grep -q looks at them: with pipefail, a writer cut off by grep's
# early exit would fail the pipeline, or pass a check that should fail.)
bundle=$(docker run --rm --entrypoint cat "$image" /etc/ssl/certs/ca-certificates.crt | tr -d '\n')
for ca in /usr/local/share/ca-certificates/*.crt; do
    [ -e "$ca" ] || continue
    pem=$(sed -n '/BEGIN CERT/,/END CERT/p' "$ca" | grep -v CERTIFICATE | tr -d '\n' | cut -c1-64)
    if grep -qF "$pem" <<<"$bundle"; then
        fail "the builder's extra CA $ca is in the image's trust store"
    fi
done
docker run --rm --entrypoint sh "$image" -c 'test -s /etc/ssl/certs/ca-certificates.crt' \
    || fail "the image has no CA bundle"

# Logs: no colour codes, each listener once.
logs=$(docker logs "$name" 2>&1)
if grep -q $'\e\[' <<<"$logs"; then fail "ANSI codes in docker logs"; fi
[ "$(grep -c 'mmtp.listen listening on' <<<"$logs")" = 1 ] || fail "listening lines: $logs"

# Restart: everything again.
docker restart "$name" >/dev/null
wait_healthy "$name"
inbox=$(read_inbox)
[ "$(grep -c '"subject"' <<<"$inbox")" = 3 ] || fail "after the restart: $inbox"
users=$(docker exec "$name" mailgate user list)
grep -q alice@localhost <<<"$users" || fail "alice after the restart: $users"
say "restarted: accounts and mail are there"

# docker stop: SIGTERM, exit 0, well before the 10 s SIGKILL.
t0=$(date +%s%N)
docker stop "$name" >/dev/null
took=$(( ($(date +%s%N) - t0) / 1000000 ))
code=$(docker inspect -f '{{.State.ExitCode}}' "$name")
echo "docker stop: exit $code in $took ms"
[ "$code" = 0 ] || fail "exit code $code"
[ "$took" -lt 9000 ] || fail "docker stop took $took ms"

# A partial config file (only domains, and the admin listener moved): container defaults stay,
# the health check follows the admin listener.
printf 'domains = ["example.org"]\n[admin]\nlisten = "0.0.0.0:9125"\n' >"$work/partial.toml"
chmod 644 "$work/partial.toml"
docker run -d --name "$name-partial" -v "$volume-partial:/var/lib/mailgate" \
    -v "$work/partial.toml:/etc/mailgate/mailgate.toml:ro" "$image" >/dev/null
wait_healthy "$name-partial"
partial_logs=$(docker logs "$name-partial" 2>&1)
grep -q 'mmtp.listen listening on 0.0.0.0:8025' <<<"$partial_logs" || fail "partial config listeners"
say "a partial config keeps the container defaults"

# A cached rebuild after a one-line change. The first build above may have come whole from
# Docker's layer cache (the same sources as an earlier run), which leaves cargo's cache mount
# at whatever tree was compiled last; a first change brings the mount to this tree (not
# measured: its time depends on what ran before), the second is the one-line change measured.
echo "// bring cargo's cache to this tree, $(date +%s%N)" >>"$src/gateway/src/main.rs"
build --progress=plain -t "$image" "$src" >"$work/prime.log" 2>&1 || { tail -40 "$work/prime.log"; fail "rebuild"; }
echo "// a one-line change, $(date +%s%N)" >>"$src/gateway/src/main.rs"
t0=$(date +%s)
build --progress=plain -t "$image" "$src" >"$work/rebuild.log" 2>&1 || { tail -40 "$work/rebuild.log"; fail "rebuild"; }
echo "cached rebuild after a one-line change in gateway/src/main.rs: $(( $(date +%s) - t0 )) s"
say "passed"
