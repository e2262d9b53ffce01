#!/usr/bin/env bash
# Build an InfluxDB 2.x server (influxd) for the tcpdrop peer tests and print
# its path (last line of stdout).
# Everything comes from public package registries, no github.com needed:
#   - influxd's sources are fetched as a Go module through the module proxy;
#   - its Flux query engine needs the Rust library libflux, whose sources ship
#     inside the github.com/influxdata/flux Go module. InfluxData's pkg-config
#     wrapper (github.com/influxdata/pkg-config, pinned in influxdb's go.mod)
#     runs 'cargo build' on them when cgo asks for `pkg-config flux`; the
#     crates come from crates.io;
#   - the UI is left out (no 'assets' build tag: / serves an error, the HTTP
#     API is complete).
# Needs: Go (with cgo: a C compiler), cargo/rustc, the system pkg-config.
# The binary is cached in
#   ${TELEGRAF_CACHE:-$HOME/.cache/telegraf-tcpdrop}/influxdb-VERSION/influxd
# Go's caches (GOMODCACHE, GOCACHE; libflux is built under
# $GOCACHE/pkgconfig) and cargo's registry cache keep rebuilds fast.
# A cold build takes several minutes on 2 cores.
set -euo pipefail

# Newest release the proxy serves whose go.mod accepts Go 1.26.8
# (v2.10.0 needs go >= 1.26.9). Commit and date: the proxy's .info.
INFLUXDB_VERSION=v2.9.1
INFLUXDB_COMMIT=d4fa1941fd4a
INFLUXDB_DATE=2026-05-11T18:30:49Z
# Same tags as upstream's GNUmakefile, minus 'assets' (the UI).
TAGS=sqlite_foreign_keys,sqlite_json

NAME=build-influxdb2 CACHED="influxdb-${INFLUXDB_VERSION}/influxd"
source "$(dirname "$0")/go-build.sh"
CARGO=$(command -v cargo || true)
if [[ -z $CARGO && -x $HOME/.cargo/bin/cargo ]]; then CARGO=$HOME/.cargo/bin/cargo; fi
[[ -n $CARGO ]] || die "cargo (Rust) is needed to build libflux, influxd's Flux engine"
command -v "${CC:-cc}" >/dev/null || die "a C compiler (${CC:-cc}) is needed: influxd uses cgo"
command -v pkg-config >/dev/null || die "the system pkg-config is needed (InfluxData's wrapper falls back to it)"
export CARGO
# The Go tools and the wrapper call 'go' and 'cargo' by name.
export GO PATH="$(dirname "$GO"):$(dirname "$CARGO"):$PATH"

# cgo is required.
export GOFLAGS="-buildvcs=false -mod=readonly" CGO_ENABLED=1

# Flux's rust-toolchain.toml asks rustup for Rust 1.83 plus five
# cross-compile targets. Use the toolchain already installed instead (rustup
# honours RUSTUP_TOOLCHAIN over that file) ...
if [[ -z ${RUSTUP_TOOLCHAIN:-} ]] && command -v rustup >/dev/null; then
    RUSTUP_TOOLCHAIN=$(cd / && rustup show active-toolchain 2>/dev/null | awk 'NR==1{print $1}')
    [[ -n $RUSTUP_TOOLCHAIN ]] && export RUSTUP_TOOLCHAIN
fi
# ... and as libflux's crates say #![deny(warnings)], a lint added to a newer
# compiler could fail the build (Rust 1.95 warns about nothing today): make
# lints warnings.
export RUSTFLAGS="${RUSTFLAGS:+$RUSTFLAGS }--cap-lints warn"

log "building InfluxDB $INFLUXDB_VERSION with $("$GO" env GOVERSION) and $("$CARGO" --version)"

# influxdb's go.mod has a replace directive, so 'go install pkg@version' is
# refused: build from a copy of the module's sources instead.
module_source github.com/influxdata/influxdb/v2 "${INFLUXDB_VERSION}"

"$GO" build -o "$tmp/pkg-config" github.com/influxdata/pkg-config >&2 ||
    die "building InfluxData's pkg-config wrapper failed (see above)"
export PKG_CONFIG="$tmp/pkg-config"
# The wrapper only prints cargo's output through its log, and only on failure.
export PKG_CONFIG_LOG="$tmp/pkg-config.log"

log "compiling libflux (Rust) and influxd (Go + cgo); this takes a while"
if ! "$GO" build -trimpath -tags "$TAGS" \
        -ldflags "-s -w -X main.version=${INFLUXDB_VERSION} -X main.commit=${INFLUXDB_COMMIT} -X main.date=${INFLUXDB_DATE}" \
        -o "$tmp/influxd" ./cmd/influxd >&2; then
    [[ -s $PKG_CONFIG_LOG ]] && { log "pkg-config wrapper log (libflux build):"; tail -n 60 "$PKG_CONFIG_LOG" >&2; }
    die "go build of influxd $INFLUXDB_VERSION failed (see above)"
fi

# Sanity check: the binary runs and reports the expected version.
ver=$("$tmp/influxd" version) || die "built binary does not run"
[[ $ver == *"InfluxDB ${INFLUXDB_VERSION}"* ]] || die "unexpected version: $ver"

cache_built "$ver"
