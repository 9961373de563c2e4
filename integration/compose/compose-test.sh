#!/usr/bin/env bash
# make compose-test: Docker from Debian (installed if missing, dockerd started if not
# running), images built locally, the stack up, the runner's checks, everything down.
# Works with docker-compose v1 (Debian's) and `docker compose` v2.
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
cd "$root/integration/compose"

if ! command -v dockerd >/dev/null || ! command -v docker >/dev/null; then
  apt-get update -q
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q docker.io docker-compose
fi
if ! docker info >/dev/null 2>&1; then
  mkdir -p "$root/target"
  # A dockerd killed with its session leaves pid files that stop a new one from starting.
  if ! pgrep -x dockerd >/dev/null; then
    rm -f /var/run/docker.pid /var/run/docker/containerd/containerd.pid
  fi
  (dockerd > "$root/target/dockerd.log" 2>&1 &)
  for _ in $(seq 60); do docker info >/dev/null 2>&1 && break; sleep 1; done
  docker info >/dev/null 2>&1 || { echo "dockerd did not start:"; tail -20 "$root/target/dockerd.log"; exit 1; }
fi
if docker compose version >/dev/null 2>&1; then
  compose=(docker compose)
elif command -v docker-compose >/dev/null; then
  compose=(docker-compose)
else
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q docker-compose
  compose=(docker-compose)
fi
echo "using: ${compose[*]} ($("${compose[@]}" version 2>/dev/null | head -n 1))"

# The harness checks the wiring, not speed: the debug builds `make test` has already made
# serve (a release build here cost CI minutes). FLOWGUARD_PROFILE=release for real images.
export FLOWGUARD_PROFILE=${FLOWGUARD_PROFILE:-debug}
if [ "$FLOWGUARD_PROFILE" = release ]; then
  cargo build --release -q --workspace --exclude flowguard-filter --bins
else # exactly what `make test` built (its features too), so nothing compiles again
  cargo build -q --workspace --exclude flowguard-filter --bins --tests
fi
bash "$root/integration/compose/build-images.sh"

# The filter's OCI image for Istio, built by Docker from envoy/oci/Dockerfile, inspected:
# one layer, plugin.wasm at its root, byte for byte the filter.
ctx=$(mktemp -d)
cp "$root/target/flowguard.wasm" "$ctx/"
docker build -q -f "$root/envoy/oci/Dockerfile" -t flowguard-local/flowguard-wasm:dev "$ctx" >/dev/null
docker save flowguard-local/flowguard-wasm:dev | tar -x -C "$ctx"
python3 - "$ctx" "$root/target/flowguard.wasm" <<'PY'
import hashlib, json, sys, tarfile, os
ctx, wasm = sys.argv[1], open(sys.argv[2], "rb").read()
manifest = json.load(open(os.path.join(ctx, "manifest.json")))[0]
layers = manifest["Layers"]
assert len(layers) == 1, f"one layer, got {layers}"
with tarfile.open(os.path.join(ctx, layers[0])) as t:
    names = [m.name for m in t.getmembers() if m.isfile()]
    assert names == ["plugin.wasm"], names
    assert t.extractfile("plugin.wasm").read() == wasm
image_id = hashlib.sha256(open(os.path.join(ctx, manifest["Config"]), "rb").read()).hexdigest()
print(f"OCI image: 1 layer, plugin.wasm at the root, image sha256:{image_id}")
PY
rm -rf "$ctx"

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
export ENVOY_IMAGE=flowguard-local/envoy:1.40.0 FLOWGUARD_IMAGE=flowguard-local/flowguard:dev
export FLOWGUARD_WASM=$root/target/flowguard.wasm ENVOY_PORT=$(free_port) ENVOY_ADMIN_PORT=$(free_port)
project=flowguardtest$$
run() { "${compose[@]}" -p "$project" "$@"; }
cleanup() {
  local rc=$?
  if [ $rc -ne 0 ]; then run logs --no-color --tail 60 || true; fi
  run down -v --remove-orphans >/dev/null 2>&1 || true
  exit $rc
}
trap cleanup EXIT

run up -d shop collector envoy
run run --rm runner
