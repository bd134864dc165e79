#!/usr/bin/env bash
# Builds felt's image (deploy/Containerfile): felt linked statically against
# glibc (+crt-static; no musl target is needed), stripped, in an image FROM
# scratch. Nothing is pulled. Needs podman (Debian's 4.3 works) and binutils.
#
#   deploy/build-image.sh [TAG]      TAG defaults to felt:<workspace version>
#
# Leaves the image in podman's storage, and an OCI archive beside the binary
# (target/image/felt-<version>.oci.tar) to load elsewhere. Then it runs the
# image once (`felt --version`, no network) to prove it starts.
# FELT_PODMAN_ROOT=DIR keeps podman's storage in DIR instead of the system's.
set -euo pipefail
cd "$(dirname "$0")/.."

version=$(sed -n 's/^version = "\(.*\)"$/\1/p' Cargo.toml | head -n 1)
tag=${1:-felt:$version}
target_dir=${CARGO_TARGET_DIR:-target}
triple=x86_64-unknown-linux-gnu

podman=(podman)
if [ -n "${FELT_PODMAN_ROOT:-}" ]; then
  podman+=(--root "$FELT_PODMAN_ROOT/root" --runroot "$FELT_PODMAN_ROOT/run" --storage-driver vfs)
fi

echo "--- building a static felt (release, +crt-static)"
RUSTFLAGS="-C target-feature=+crt-static" cargo build --release --locked --target "$triple" -p felt --bin felt

context="$target_dir/image"
rm -rf "$context"
mkdir -p "$context"
cp "$target_dir/$triple/release/felt" "$context/felt"
strip "$context/felt"
if readelf --program-headers "$context/felt" | grep -q INTERP; then
  echo "felt is not static: it names a dynamic loader" >&2
  exit 1
fi

echo "--- podman build $tag"
"${podman[@]}" build --quiet --file deploy/Containerfile --tag "$tag" "$context" >/dev/null
"${podman[@]}" save --quiet --format oci-archive --output "$context/felt-$version.oci.tar" "$tag"

echo "--- running it once"
# The container's limits must fit under the host's: runc cannot raise them.
ran=$("${podman[@]}" run --rm --network none --ulimit nofile=1024:1024 --ulimit nproc=1024:1024 "$tag" --version)
echo "$ran"
[ "$ran" = "felt $version" ] || { echo "the image printed '$ran', want 'felt $version'" >&2; exit 1; }

binary_bytes=$(stat --format %s "$context/felt")
image_bytes=$("${podman[@]}" image inspect --format '{{.Size}}' "$tag")
echo "image $tag: $image_bytes bytes; the binary (static, stripped): $binary_bytes bytes"
echo "OCI archive: $context/felt-$version.oci.tar"
