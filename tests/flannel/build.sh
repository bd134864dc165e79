#!/usr/bin/env bash
# Builds the real Flannel the migration and mixed-cluster tests run beside
# felt, from Go modules pinned here, never shipped:
#
#   flanneld   github.com/flannel-io/flannel v0.28.10 (this directory's go.mod)
#   flannel    Flannel's CNI plugin, from github.com/containernetworking/plugins
#              v0.9.1 (cni/go.mod): the last release that carried it; its
#              successor github.com/flannel-io/cni-plugin is not served by the
#              Go module proxy this machine reaches. It reads the same subnet
#              file and delegates to `bridge` + `host-local` as the new one does.
#
# One replace in go.mod: flanneld links every cloud backend, and the Tencent
# VPC SDK version it pins (v1.3.188) is not served by the proxy; v1.0.1000
# is, and compiles. The tencentvpc backend is never used here (the tests run
# the vxlan backend only).
#
# flanneld needs cgo (its udp backend's C proxy on amd64). The binaries go
# to a cache outside the repository, keyed by both go.mod/go.sum and this
# script, so a machine builds them once:
#
#   ${FELT_FLANNEL_CACHE:-/var/cache/felt/flannel}/<key>/{flanneld,flannel}
#
# Cold, on 2 cores: 209 s from empty Go module and build caches (264 MB of
# modules, 708 MB of build cache); 125 s when the control plane's build
# (tests/k8s) has warmed them; the plugin, 1 s.
# Prints that directory on stdout (progress on stderr).
set -euo pipefail
cd "$(dirname "$0")"

cache=${FELT_FLANNEL_CACHE:-/var/cache/felt/flannel}
key=$(cat go.mod go.sum cni/go.mod cni/go.sum build.sh | sha256sum | cut -c1-16)
out="$cache/$key"
if [ -x "$out/flanneld" ] && [ -x "$out/flannel" ]; then
  echo "flanneld and the flannel CNI plugin cached in $out" >&2
  echo "$out"
  exit 0
fi

command -v go >/dev/null || { echo "tests/flannel/build.sh needs Go (1.26 or newer)" >&2; exit 1; }
command -v gcc >/dev/null || { echo "tests/flannel/build.sh needs gcc (flanneld links C through cgo)" >&2; exit 1; }
echo "building flanneld and the flannel CNI plugin ($(go version)) into $out; cold, this takes minutes" >&2
start=$(date +%s)
tmp="$out.tmp.$$"
rm -rf "$tmp"
mkdir -p "$tmp"
trap 'rm -rf "$tmp"' EXIT
version=$(go list -m -f '{{.Version}}' github.com/flannel-io/flannel)
CGO_ENABLED=1 go build -mod=readonly -trimpath \
  -ldflags="-s -w -X github.com/flannel-io/flannel/pkg/version.Version=$version" \
  -o "$tmp/flanneld" github.com/flannel-io/flannel
(cd cni && CGO_ENABLED=0 go build -mod=readonly -trimpath -ldflags='-s -w' \
  -o "$tmp/flannel" github.com/containernetworking/plugins/plugins/meta/flannel)
rm -rf "$out"
mv "$tmp" "$out"
trap - EXIT
echo "built in $(( $(date +%s) - start )) s: flanneld $("$out/flanneld" --version 2>&1)" >&2
echo "$out"
