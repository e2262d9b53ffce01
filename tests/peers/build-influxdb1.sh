#!/usr/bin/env bash
# Build an InfluxDB 1.8 server (influxd) for the tcpdrop peer tests and print
# its path (last line of stdout).
# 1.8 is the first 1.x with the 2.x compatibility API: /api/v2/write takes
# bucket "db/rp" (or "db" for the default retention policy) and, with HTTP
# auth disabled, any "Authorization: Token user:password".
# influxd is fetched as a Go module through the module proxy (no github.com
# or dl.influxdata.com needed) and built with the local Go toolchain. Flux
# 0.65 (pinned by influxdb 1.8) is pure Go, so no Rust and no cgo: the binary
# is static. The binary is cached in
#   ${TELEGRAF_CACHE:-$HOME/.cache/telegraf-tcpdrop}/influxdb-VERSION/influxd
# Go's own caches (GOMODCACHE, GOCACHE) keep rebuilds fast.
set -euo pipefail

# The last 1.8 release (the proxy serves it though its version list only
# shows v1.8.0 and v1.8.3). Its go.mod says go 1.13 and builds unchanged
# with Go 1.26. The proxy's .info has no commit: this is the one the released
# binary reports ('InfluxDB v1.8.10 (git: 1.8 688e697c51fd)').
INFLUXDB_VERSION=v1.8.10
INFLUXDB_BRANCH=1.8
INFLUXDB_COMMIT=688e697c51fd

NAME=build-influxdb1 CACHED="influxdb-${INFLUXDB_VERSION}/influxd"
source "$(dirname "$0")/go-build.sh"
# A static binary.
export GOFLAGS=-buildvcs=false CGO_ENABLED=0

log "building InfluxDB $INFLUXDB_VERSION with $("$GO" env GOVERSION)"
# influxdb 1.8's go.mod has no replace directives, so 'go install pkg@version'
# works straight from the (read-only) module cache; GOBIN picks the target.
# main.version is printed as "v<version>", hence no leading v.
GOBIN="$tmp" "$GO" install -trimpath \
    -ldflags "-s -w -X main.version=${INFLUXDB_VERSION#v} -X main.branch=${INFLUXDB_BRANCH} -X main.commit=${INFLUXDB_COMMIT}" \
    "github.com/influxdata/influxdb/cmd/influxd@${INFLUXDB_VERSION}" >&2 ||
    die "go install of influxd $INFLUXDB_VERSION failed (see above)"

# Sanity check: the binary runs and reports the expected version.
ver=$("$tmp/influxd" version) || die "built binary does not run"
[[ $ver == *"InfluxDB ${INFLUXDB_VERSION} "* ]] || die "unexpected version: $ver"

cache_built "$ver"
