#!/usr/bin/env bash
# Builds the local Kubernetes control plane the deployment test runs against, from pinned versions,
# into a cache outside the repository, and reuses that build while its inputs are unchanged:
#
#   kube-apiserver, kube-controller-manager, kube-scheduler, kubectl   Kubernetes 1.33.13 (go.mod here)
#   kwok                                                               fake nodes (kwok/go.mod)
#   injector, operator                                                 Dapr 1.18.3 (dapr/go.mod)
#   etcd                                                               Debian's etcd-server package
#
# Beside bin/, dapr-crds and kwok-stages link to Dapr's CRDs and kwok's stages in the module cache.
#
# Dapr's sentry comes from tools/dapr/install.sh, which builds it with daprd.
#
#   tools/kubernetes/install.sh          build if needed, then print the bin directory on the last line
#   tools/kubernetes/install.sh --print  print the bin directory of a finished build, or fail
#
# Environment:
#   TASK_API_CACHE   cache root (default: $XDG_CACHE_HOME/task-api or ~/.cache/task-api)
#
# Why a wrapper module for Kubernetes: k8s.io/kubernetes replaces its staging modules with
# directories of its own repository, and Go honours replaces only in the main module; go.mod here
# repeats them with the published releases (see its header).
set -euo pipefail

readonly KUBERNETES_VERSION=1.33.13
readonly DAPR_VERSION=1.18.3
readonly MIN_GO=1.26.0
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
dapr_module="$here/dapr"
cache_root=${TASK_API_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/task-api}
build_dir="$cache_root/kubernetes-$KUBERNETES_VERSION"
bin_dir="$build_dir/bin"
readonly PROGRAMS=(kube-apiserver kube-controller-manager kube-scheduler kubectl kwok injector operator etcd)

say() { printf '[kubernetes-install] %s\n' "$*" >&2; }
die() { printf '[kubernetes-install] error: %s\n' "$*" >&2; exit 1; }

# The build is reused while every module file, the stubs and this script are byte-identical.
inputs_hash() {
  cat "$here/install.sh" "$here/go.mod" "$here/go.sum" "$here/kwok/go.mod" "$here/kwok/go.sum" \
    "$here"/stubs/*/go.mod "$dapr_module/go.mod" "$dapr_module/go.sum" | sha256sum | cut -d' ' -f1
}

build_is_current() {
  local program
  for program in "${PROGRAMS[@]}"; do
    [ -x "$bin_dir/$program" ] || return 1
  done
  [ -f "$build_dir/dapr-crds/components.yaml" ] && [ -f "$build_dir/kwok-stages/pod/fast/pod-ready.yaml" ] &&
    [ "$(cat "$build_dir/inputs.sha256" 2>/dev/null)" = "$(inputs_hash)" ] &&
    [ "$("$bin_dir/kubectl" version --client 2>/dev/null | sed -n 's/^Client Version: //p')" = "v$KUBERNETES_VERSION" ]
}

if [ "${1:-}" = "--print" ]; then
  build_is_current || die "no current Kubernetes $KUBERNETES_VERSION control plane in $build_dir; run tools/kubernetes/install.sh"
  echo "$bin_dir"
  exit 0
fi

if build_is_current; then
  say "Kubernetes $KUBERNETES_VERSION, kwok, Dapr $DAPR_VERSION injector and operator, etcd already in $bin_dir"
  echo "$bin_dir"
  exit 0
fi

command -v go >/dev/null 2>&1 || die "Go >= $MIN_GO is required (https://go.dev/dl); 'go' is not on PATH"
go_version=$(go env GOVERSION 2>/dev/null | sed 's/^go//')
if [ "$(printf '%s\n%s\n' "$MIN_GO" "$go_version" | sort -V | head -n1)" != "$MIN_GO" ]; then
  die "Go >= $MIN_GO is required to build kwok and Kubernetes $KUBERNETES_VERSION, found go$go_version"
fi
command -v apt-get >/dev/null 2>&1 || die "apt-get is required to fetch Debian's etcd-server package"

phase_started=0
phase() { phase_started=$(date +%s); say "$1 ..."; }
done_phase() { say "  done in $(( $(date +%s) - phase_started ))s"; }

total_started=$(date +%s)
mkdir -p "$build_dir"
rm -rf "$bin_dir.new"
mkdir -p "$bin_dir.new"

# Module downloads are checked against the committed go.sum files; nothing is rewritten.
export GOFLAGS=-mod=readonly
export GOTOOLCHAIN=local

# The package is unpacked, not installed: installing it would also start a system-wide etcd.
phase "fetching Debian's etcd-server package"
deb_dir="$build_dir/etcd-deb"
rm -rf "$deb_dir"
mkdir -p "$deb_dir"
if ! (cd "$deb_dir" && apt-get download -qq etcd-server >/dev/null 2>&1); then
  [ "$(id -u)" = 0 ] || die "apt-get download etcd-server failed; run 'apt-get update' as root and retry"
  apt-get update -qq >/dev/null
  (cd "$deb_dir" && apt-get download -qq etcd-server >/dev/null) || die "apt-get download etcd-server failed"
fi
dpkg-deb -x "$deb_dir"/etcd-server_*.deb "$deb_dir/root"
cp "$deb_dir/root/usr/bin/etcd" "$bin_dir.new/etcd"
say "  etcd $("$bin_dir.new/etcd" --version | sed -n 's/^etcd Version: //p')"
done_phase

k8s_ldflags="-s -w"
for pkg in k8s.io/client-go/pkg/version k8s.io/component-base/version; do
  k8s_ldflags+=" -X $pkg.gitVersion=v$KUBERNETES_VERSION -X $pkg.gitMajor=${KUBERNETES_VERSION%%.*}"
  k8s_ldflags+=" -X $pkg.gitMinor=$(echo "$KUBERNETES_VERSION" | cut -d. -f2) -X $pkg.gitTreeState=clean"
done
phase "compiling kube-apiserver, kube-controller-manager, kube-scheduler and kubectl $KUBERNETES_VERSION (the first run downloads ~1 GB of modules)"
# The build tags of the Kubernetes release build.
(cd "$here" && go build -trimpath -tags selinux,notest -ldflags "$k8s_ldflags" -o "$bin_dir.new/" \
  k8s.io/kubernetes/cmd/kube-apiserver k8s.io/kubernetes/cmd/kube-controller-manager \
  k8s.io/kubernetes/cmd/kube-scheduler k8s.io/kubernetes/cmd/kubectl)
done_phase

phase "compiling kwok"
(cd "$here/kwok" && go build -trimpath -ldflags "-s -w" -o "$bin_dir.new/" sigs.k8s.io/kwok/cmd/kwok)
done_phase

# Neither imports the components that make tools/dapr/install.sh copy the dapr source, so they
# build straight from the module; -trimpath as there, so compiled packages are shared with it.
phase "compiling the Dapr $DAPR_VERSION injector and operator"
(cd "$dapr_module" && go build -trimpath -ldflags "-s -w -X github.com/dapr/dapr/pkg/buildinfo.version=$DAPR_VERSION" \
  -o "$bin_dir.new/" github.com/dapr/dapr/cmd/injector github.com/dapr/dapr/cmd/operator)
done_phase

# Dapr's own CRDs, read where the pinned module keeps them (its chart).
dapr_dir=$(cd "$dapr_module" && go mod download -json "github.com/dapr/dapr@v$DAPR_VERSION" |
  sed -n 's/^[[:space:]]*"Dir": "\(.*\)",\{0,1\}$/\1/p')
[ -f "$dapr_dir/charts/dapr/crds/components.yaml" ] || die "no Dapr CRDs in the github.com/dapr/dapr@v$DAPR_VERSION module"
ln -sfn "$dapr_dir/charts/dapr/crds" "$build_dir/dapr-crds"
# kwok's own stages (what it does to nodes and pods), which the kwok binary takes as --config.
kwok_dir=$(cd "$here/kwok" && go mod download -json sigs.k8s.io/kwok |
  sed -n 's/^[[:space:]]*"Dir": "\(.*\)",\{0,1\}$/\1/p')
[ -f "$kwok_dir/kustomize/stage/pod/fast/pod-ready.yaml" ] || die "no kwok stages in the sigs.k8s.io/kwok module"
ln -sfn "$kwok_dir/kustomize/stage" "$build_dir/kwok-stages"

built=$("$bin_dir.new/kubectl" version --client | sed -n 's/^Client Version: //p')
[ "$built" = "v$KUBERNETES_VERSION" ] || die "built kubectl reports version '$built', expected v$KUBERNETES_VERSION"

rm -rf "$bin_dir"
mv "$bin_dir.new" "$bin_dir"
inputs_hash >"$build_dir/inputs.sha256"
say "control plane ready in $bin_dir ($(( $(date +%s) - total_started ))s)"
echo "$bin_dir"
