#!/usr/bin/env bash
# Builds the real control plane the tests run felt against: kube-apiserver,
# kube-controller-manager (the lab runs only its garbage collector, which
# deletes a FeltNode whose Node is gone) and a kubectl of the same release (k8s.io/kubernetes, staging modules
# pinned through `replace`; the machine's kubectl may be more than one minor
# version older, outside kubectl's supported skew) and etcd
# (go.etcd.io/etcd/server/v3), from the Go module in this directory, never
# shipped. The binaries go to a cache outside the repository, keyed by
# go.mod and go.sum, so a machine builds them once:
#
#   ${FELT_K8S_CACHE:-/var/cache/felt/k8s}/<key>/{kube-apiserver,kube-controller-manager,kubectl,etcd}
#
# (<key>: a hash of go.mod, go.sum and this script.) Cold, on 2 cores: 572 s.
#
# Prints that directory on stdout (progress and the cold build time on stderr).
# Go's own build cache (GOCACHE) and module cache are the machine's defaults.
set -euo pipefail
cd "$(dirname "$0")"

cache=${FELT_K8S_CACHE:-/var/cache/felt/k8s}
key=$(cat go.mod go.sum build.sh | sha256sum | cut -c1-16)
out="$cache/$key"
if [ -x "$out/kube-apiserver" ] && [ -x "$out/kube-controller-manager" ] && [ -x "$out/kubectl" ] && [ -x "$out/etcd" ]; then
  echo "control plane binaries cached in $out" >&2
  echo "$out"
  exit 0
fi

command -v go >/dev/null || { echo "tests/k8s/build.sh needs Go (1.24 or newer)" >&2; exit 1; }
echo "building kube-apiserver, kube-controller-manager, kubectl and etcd ($(go version)) into $out; cold, this takes minutes" >&2
start=$(date +%s)
tmp="$out.tmp.$$"
rm -rf "$tmp"
mkdir -p "$tmp"
trap 'rm -rf "$tmp"' EXIT
export CGO_ENABLED=0
# The version go.mod pins, stamped as the release build does (else /version says v0.0.0-master).
k8s=$(go list -m -f '{{.Version}}' k8s.io/kubernetes)
minor=$(echo "$k8s" | cut -d. -f2)
stamp="-X k8s.io/component-base/version.gitVersion=$k8s -X k8s.io/component-base/version.gitMajor=1"
stamp="$stamp -X k8s.io/component-base/version.gitMinor=$minor -X k8s.io/component-base/version.gitTreeState=clean"
go build -mod=readonly -trimpath -ldflags="-s -w $stamp" -o "$tmp/kube-apiserver" k8s.io/kubernetes/cmd/kube-apiserver
go build -mod=readonly -trimpath -ldflags="-s -w $stamp" -o "$tmp/kube-controller-manager" k8s.io/kubernetes/cmd/kube-controller-manager
go build -mod=readonly -trimpath -ldflags="-s -w $stamp" -o "$tmp/kubectl" k8s.io/kubernetes/cmd/kubectl
go build -mod=readonly -trimpath -ldflags='-s -w' -o "$tmp/etcd" go.etcd.io/etcd/server/v3
rm -rf "$out"
mv "$tmp" "$out"
trap - EXIT
echo "built in $(( $(date +%s) - start )) s: $("$out/kube-apiserver" --version), kubectl $("$out/kubectl" version --client | head -n 1), etcd $("$out/etcd" --version | head -n 1)" >&2
echo "$out"
