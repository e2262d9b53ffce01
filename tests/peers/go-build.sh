# The start every build-*.sh here shares, sourced after it sets NAME (for its
# messages) and CACHED (its binary's path in the cache). Gives die, log, $bin,
# $GO and a scratch dir $tmp; a binary already cached is printed and that is all.
die() { echo "$NAME: error: $*" >&2; exit 1; }
log() { echo "$NAME: $*" >&2; }

bin="${TELEGRAF_CACHE:-${HOME:?is not set (set HOME or TELEGRAF_CACHE)}/.cache/telegraf-tcpdrop}/$CACHED"
if [[ -x $bin ]]; then echo "$bin"; exit 0; fi

GO=$(command -v go || true)
if [[ -z $GO && -x /usr/local/go/bin/go ]]; then GO=/usr/local/go/bin/go; fi
[[ -n $GO ]] || die "Go is needed to build ${bin##*/} (no 'go' on PATH or in /usr/local/go/bin)"
# Exactly this toolchain (no download of another), module mode, no workspace.
export GOTOOLCHAIN=local GO111MODULE=on GOWORK=off

mkdir -p "$(dirname "$bin")"
tmp=$(mktemp -d "$(dirname "$bin")/.build.XXXXXX")
trap 'chmod -R u+w "$tmp" 2>/dev/null; rm -rf "$tmp"' EXIT

start=$SECONDS
# The last step: the binary built in $tmp goes into the cache, its path to stdout.
cache_built() {
    mv -f "$tmp/${bin##*/}" "$bin"
    log "built in $((SECONDS - start))s: $1"
    echo "$bin"
}

# The sources of module@version, through the module proxy, copied writable to
# $tmp/src, which becomes the working directory. For a module whose go.mod has
# a replace directive (refused by 'go install pkg@version'), or to build one
# exact version without asking the proxy for the module's version list.
module_source() {
    local moddir
    moddir=$(cd "$tmp" && "$GO" mod download -json "$1@$2" |
             sed -n 's/^[[:space:]]*"Dir": "\(.*\)",\{0,1\}$/\1/p') ||
        die "could not download $1@$2"
    [[ -n $moddir && -f $moddir/go.mod ]] || die "module download gave no source directory"
    cp -R "$moddir" "$tmp/src"
    chmod -R u+w "$tmp/src"
    cd "$tmp/src"
}
