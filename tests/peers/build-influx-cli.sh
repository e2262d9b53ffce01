#!/usr/bin/env bash
# Build InfluxDB 2.x's command-line client (influx) for the dashboard tests
# (`influx apply` of dashboards/influxdb2-template.json) and print its path
# (last line of stdout).
# influx-cli is fetched as a Go module through the module proxy (no
# github.com or dl.influxdata.com needed) and built with the local Go
# toolchain; pure Go, so the binary is static. It is cached in
#   ${TELEGRAF_CACHE:-$HOME/.cache/telegraf-tcpdrop}/influx-cli-VERSION/influx
# Go's own caches (GOMODCACHE, GOCACHE) keep rebuilds fast (~20 s cold).
set -euo pipefail

# The influx-cli commit that the InfluxDB peer (build-influxdb2.sh, v2.9.1)
# itself requires in its go.mod: the client of that server's own API. Its
# date is the pseudo-version's; the tagged releases (v2.7.5) are older.
INFLUX_CLI_VERSION=v2.7.1-0.20250130214939-76d1c4d9b777
INFLUX_CLI_COMMIT=76d1c4d9b777
INFLUX_CLI_DATE=2025-01-30T21:49:39Z

NAME=build-influx-cli CACHED="influx-cli-${INFLUX_CLI_VERSION}/influx"
source "$(dirname "$0")/go-build.sh"
# A static binary.
export GOFLAGS="-buildvcs=false -mod=readonly" CGO_ENABLED=0

log "building influx-cli $INFLUX_CLI_VERSION with $("$GO" env GOVERSION)"
# Built from a copy of the module's sources, not 'go install pkg@version':
# that also asks the proxy for the module's version list (to look for a
# deprecation notice), which is not needed to build one exact version.
module_source github.com/influxdata/influx-cli/v2 "${INFLUX_CLI_VERSION}"

"$GO" build -trimpath \
    -ldflags "-s -w -X main.version=${INFLUX_CLI_VERSION} -X main.commit=${INFLUX_CLI_COMMIT} -X main.date=${INFLUX_CLI_DATE}" \
    -o "$tmp/influx" ./cmd/influx >&2 ||
    die "go build of influx $INFLUX_CLI_VERSION failed (see above)"

# Sanity check: the binary runs and reports the expected version.
ver=$("$tmp/influx" version) || die "built binary does not run"
[[ $ver == *"Influx CLI ${INFLUX_CLI_VERSION} "* ]] || die "unexpected version: $ver"

cache_built "$ver"
