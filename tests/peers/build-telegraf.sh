#!/usr/bin/env bash
# Build a small custom Telegraf for the tcpdrop tests and print its path
# (last line of stdout). Only the plugins we need are compiled in:
#   inputs.execd        runs the tcpdrop plugin itself
#   inputs.exec         another input beside it (what it may do: test_deb.py)
#   inputs.statsd       + outputs.influxdb: the peers used by the peer tests
#   outputs.file        writes metrics to a file/stdout for assertions
#   outputs.discard     sink for runs where output does not matter
#   parsers.influx, serializers.influx: line protocol in and out
#   serializers.json    exact tag and field values for assertions
# Telegraf is fetched as a Go module through the module proxy (no github.com
# needed) and built with the local Go toolchain. The binary is cached in
#   ${TELEGRAF_CACHE:-$HOME/.cache/telegraf-tcpdrop}/telegraf-VERSION-TAGHASH/
# Go's own caches (GOMODCACHE, GOCACHE) keep rebuilds fast.
set -euo pipefail

# Newest release the proxy serves whose go.mod accepts Go 1.26
# (v1.40.x needs go >= 1.27).
TELEGRAF_VERSION=v1.39.3
PLUGINS=(inputs.execd inputs.exec inputs.statsd outputs.file outputs.influxdb
         outputs.discard parsers.influx serializers.influx serializers.json)

tags="custom,$(IFS=,; echo "${PLUGINS[*]}")"
hash=$(printf '%s' "$tags" | sha256sum | cut -c1-8)
NAME=build-telegraf CACHED="telegraf-${TELEGRAF_VERSION}-${hash}/telegraf"
source "$(dirname "$0")/go-build.sh"
# A static binary.
export GOFLAGS=-buildvcs=false CGO_ENABLED=0

log "building Telegraf $TELEGRAF_VERSION with $("$GO" env GOVERSION), tags: $tags"
# Telegraf's go.mod has no replace directives, so 'go install pkg@version'
# works straight from the (read-only) module cache; GOBIN picks the target.
GOBIN="$tmp" "$GO" install -trimpath -tags "$tags" \
    -ldflags "-s -w -X github.com/influxdata/telegraf/internal.Version=${TELEGRAF_VERSION#v}" \
    "github.com/influxdata/telegraf/cmd/telegraf@${TELEGRAF_VERSION}" >&2 ||
    die "go install of Telegraf $TELEGRAF_VERSION failed (see above)"

# Sanity check: the binary runs and has all the plugins asked for (some
# plugins pull in a few more, e.g. statsd brings parsers.graphite).
have=$("$tmp/telegraf" plugins) || die "built binary does not run"
for p in "${PLUGINS[@]}"; do
    grep -qx "$p" <<<"$have" || die "plugin $p missing from the built binary"
done

cache_built "$("$tmp/telegraf" --version)"
