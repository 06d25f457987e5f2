#!/usr/bin/env bash
# Builds the pinned Dapr runtime (daprd, the scheduler and sentry, v1.18.3) from the Go module proxy into a
# cache outside the repository, and reuses that build while its inputs are unchanged.
#
#   tools/dapr/install.sh          build if needed, then print the bin directory on the last line
#   tools/dapr/install.sh --print  print the bin directory of a finished build, or fail
#
# Environment:
#   TASK_API_CACHE   cache root (default: $XDG_CACHE_HOME/task-api or ~/.cache/task-api)
#
# Why a copy of dapr's source: cmd/daprd with `-tags allcomponents` registers the Pulsar pub/sub,
# whose forked dependencies (github.com/twmb/pulsar-client-go, github.com/iskorotkov/avro) are not
# served by the module proxy. Go refuses overlays inside the module cache, so the build copies the
# dapr module (verified by go.sum) next to the binaries, drops that one registration file and builds
# every other official component unchanged.
set -euo pipefail

readonly DAPR_VERSION=1.18.3
readonly MIN_GO=1.26.6
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
cache_root=${TASK_API_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/task-api}
build_dir="$cache_root/dapr-$DAPR_VERSION"
bin_dir="$build_dir/bin"

say() { printf '[dapr-install] %s\n' "$*" >&2; }
die() { printf '[dapr-install] error: %s\n' "$*" >&2; exit 1; }

# The build is reused while go.mod, go.sum and this script are byte-identical.
inputs_hash() {
  cat "$here/go.mod" "$here/go.sum" "$here/install.sh" | sha256sum | cut -d' ' -f1
}

build_is_current() {
  [ -x "$bin_dir/daprd" ] && [ -x "$bin_dir/scheduler" ] && [ -x "$bin_dir/sentry" ] &&
    [ "$(cat "$build_dir/inputs.sha256" 2>/dev/null)" = "$(inputs_hash)" ] &&
    [ "$("$bin_dir/daprd" --version 2>/dev/null)" = "$DAPR_VERSION" ]
}

if [ "${1:-}" = "--print" ]; then
  build_is_current || die "no current Dapr $DAPR_VERSION build in $build_dir; run tools/dapr/install.sh"
  echo "$bin_dir"
  exit 0
fi

if build_is_current; then
  say "daprd, scheduler and sentry $DAPR_VERSION already built in $bin_dir"
  echo "$bin_dir"
  exit 0
fi

command -v go >/dev/null 2>&1 || die "Go >= $MIN_GO is required to build daprd (https://go.dev/dl); 'go' is not on PATH"
go_version=$(go env GOVERSION 2>/dev/null | sed 's/^go//')
if [ "$(printf '%s\n%s\n' "$MIN_GO" "$go_version" | sort -V | head -n1)" != "$MIN_GO" ]; then
  die "Go >= $MIN_GO is required to build dapr v$DAPR_VERSION, found go$go_version"
fi

phase_started=0
phase() { phase_started=$(date +%s); say "$1 ..."; }
done_phase() { say "  done in $(( $(date +%s) - phase_started ))s"; }

total_started=$(date +%s)
mkdir -p "$build_dir"

# Module downloads are checked against the committed go.sum; no checksum database is consulted.
export GOFLAGS=-mod=readonly
export GOTOOLCHAIN=local

phase "fetching the github.com/dapr/dapr@v$DAPR_VERSION source"
dapr_dir=$(cd "$here" && go mod download -json "github.com/dapr/dapr@v$DAPR_VERSION" |
  sed -n 's/^[[:space:]]*"Dir": "\(.*\)",\{0,1\}$/\1/p')
[ -d "$dapr_dir" ] || die "could not download github.com/dapr/dapr@v$DAPR_VERSION"
done_phase

phase "preparing the build tree in $build_dir"
src="$build_dir/src/dapr"
rm -rf "$build_dir/src"
mkdir -p "$build_dir/src"
cp -r "$dapr_dir" "$src"
chmod -R u+w "$src"
rm "$src/cmd/daprd/components/pubsub_pulsar.go"
cp "$here/go.mod" "$build_dir/build.go.mod"
cp "$here/go.sum" "$build_dir/build.go.sum"
printf '\nreplace github.com/dapr/dapr => %s\n' "$src" >>"$build_dir/build.go.mod"
done_phase

ldflags="-s -w -X github.com/dapr/dapr/pkg/buildinfo.version=$DAPR_VERSION"
mkdir -p "$bin_dir.new"
phase "compiling daprd with all components but Pulsar (first run downloads ~4 GB of modules and takes about 5 minutes on 2 cores)"
(cd "$here" && go build -modfile "$build_dir/build.go.mod" -tags allcomponents -trimpath \
  -ldflags "$ldflags" -o "$bin_dir.new/daprd" github.com/dapr/dapr/cmd/daprd)
done_phase

phase "compiling scheduler"
(cd "$here" && go build -modfile "$build_dir/build.go.mod" -trimpath \
  -ldflags "$ldflags" -o "$bin_dir.new/scheduler" github.com/dapr/dapr/cmd/scheduler)
done_phase

# Sentry issues the mTLS identities access-control policies check; the tests run it locally.
phase "compiling sentry"
(cd "$here" && go build -modfile "$build_dir/build.go.mod" -trimpath \
  -ldflags "$ldflags" -o "$bin_dir.new/sentry" github.com/dapr/dapr/cmd/sentry)
done_phase

built_version=$("$bin_dir.new/daprd" --version)
[ "$built_version" = "$DAPR_VERSION" ] || die "built daprd reports version '$built_version', expected $DAPR_VERSION"

rm -rf "$bin_dir"
mv "$bin_dir.new" "$bin_dir"
inputs_hash >"$build_dir/inputs.sha256"
say "daprd, scheduler and sentry $DAPR_VERSION ready in $bin_dir ($(( $(date +%s) - total_started ))s)"
echo "$bin_dir"
