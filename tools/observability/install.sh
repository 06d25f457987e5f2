#!/usr/bin/env bash
# Builds the pinned observability backends from the Go module proxy into a cache outside the
# repository, and reuses that build while its inputs are unchanged:
#   jaeger      Jaeger v2 all-in-one (module github.com/jaegertracing/jaeger v1.75.0, cmd/jaeger):
#               OTLP receivers, in-memory storage, the query API
#   prometheus  Prometheus (module github.com/prometheus/prometheus v0.316.0, release 3.16.0)
#   promtool    its rule checker and rule unit-test runner
#
#   tools/observability/install.sh          build if needed, then print the bin directory last
#   tools/observability/install.sh --print  print the bin directory of a current build, or fail
#
# Environment:
#   TASK_API_CACHE   cache root (default: $XDG_CACHE_HOME/task-api or ~/.cache/task-api)
#
# Only the three commands are compiled (no tests, -trimpath, stripped). The web UIs are not part
# of the Go modules (their built assets are made by separate JavaScript builds), so Jaeger serves
# a placeholder page and Prometheus only its API at the UI addresses; the query APIs are complete.
set -euo pipefail

readonly JAEGER_MODULE_VERSION=v1.75.0
readonly PROMETHEUS_MODULE_VERSION=v0.316.0
readonly PROMETHEUS_RELEASE=3.16.0
readonly MIN_GO=1.26.7
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
cache_root=${TASK_API_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/task-api}
build_dir="$cache_root/observability-jaeger-${JAEGER_MODULE_VERSION#v}-prometheus-$PROMETHEUS_RELEASE"
bin_dir="$build_dir/bin"

say() { printf '[observability-install] %s\n' "$*" >&2; }
die() { printf '[observability-install] error: %s\n' "$*" >&2; exit 1; }

# The build is reused while both go.mod/go.sum pairs and this script are byte-identical.
inputs_hash() {
  cat "$here/jaeger/go.mod" "$here/jaeger/go.sum" "$here/prometheus/go.mod" \
    "$here/prometheus/go.sum" "$here/install.sh" | sha256sum | cut -d' ' -f1
}

build_is_current() {
  [ -x "$bin_dir/jaeger" ] && [ -x "$bin_dir/prometheus" ] && [ -x "$bin_dir/promtool" ] &&
    [ "$(cat "$build_dir/inputs.sha256" 2>/dev/null)" = "$(inputs_hash)" ]
}

if [ "${1:-}" = "--print" ]; then
  build_is_current || die "no current build of Jaeger and Prometheus in $build_dir; run tools/observability/install.sh"
  echo "$bin_dir"
  exit 0
fi
[ $# -eq 0 ] || die "unknown argument $1 (use --print, or no argument)"

if build_is_current; then
  say "jaeger, prometheus and promtool already built in $bin_dir"
  echo "$bin_dir"
  exit 0
fi

command -v go >/dev/null 2>&1 || die "Go >= $MIN_GO is required to build Jaeger and Prometheus; 'go' is not on PATH"
go_version=$(go env GOVERSION 2>/dev/null | sed 's/^go//')
if [ "$(printf '%s\n%s\n' "$MIN_GO" "$go_version" | sort -V | head -n1)" != "$MIN_GO" ]; then
  die "Go >= $MIN_GO is required to build Prometheus $PROMETHEUS_RELEASE, found go$go_version"
fi

# Module downloads are checked against the committed go.sum files; nothing rewrites them.
export GOFLAGS=-mod=readonly
export GOTOOLCHAIN=local

phase_started=0
phase() { phase_started=$(date +%s); say "$1 ..."; }
done_phase() { say "  done in $(( $(date +%s) - phase_started ))s"; }

total_started=$(date +%s)
rm -rf "$bin_dir.new"
mkdir -p "$bin_dir.new"

jaeger_version_flag="-X github.com/jaegertracing/jaeger/internal/version.latestVersion=$JAEGER_MODULE_VERSION"
phase "compiling jaeger (module $JAEGER_MODULE_VERSION; a first run downloads its modules)"
(cd "$here/jaeger" && go build -trimpath -ldflags "-s -w $jaeger_version_flag" \
  -o "$bin_dir.new/jaeger" github.com/jaegertracing/jaeger/cmd/jaeger) ||
  die "building jaeger failed (see the output above)"
done_phase

prometheus_version_flag="-X github.com/prometheus/common/version.Version=$PROMETHEUS_RELEASE"
# remove_all_sd leaves out the cloud and cluster service discoveries (Kubernetes, AWS, Azure, GCE,
# ...) and their client libraries; the static and file discovery devstack uses stay in.
for command in prometheus promtool; do
  phase "compiling $command $PROMETHEUS_RELEASE"
  (cd "$here/prometheus" && go build -trimpath -tags remove_all_sd \
    -ldflags "-s -w $prometheus_version_flag" \
    -o "$bin_dir.new/$command" "github.com/prometheus/prometheus/cmd/$command") ||
    die "building $command failed (see the output above)"
  done_phase
done

reported=$("$bin_dir.new/promtool" --version 2>&1 | head -n1)
case "$reported" in
  *"version $PROMETHEUS_RELEASE"*) ;;
  *) die "built promtool reports '$reported', expected version $PROMETHEUS_RELEASE" ;;
esac
"$bin_dir.new/jaeger" --help >/dev/null 2>&1 || die "the built jaeger does not run ('jaeger --help' failed)"

rm -rf "$bin_dir"
mv "$bin_dir.new" "$bin_dir"
inputs_hash >"$build_dir/inputs.sha256"
say "jaeger, prometheus and promtool ready in $bin_dir ($(( $(date +%s) - total_started ))s)"
echo "$bin_dir"
