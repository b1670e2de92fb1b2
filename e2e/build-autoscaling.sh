#!/usr/bin/env bash
# Build the scaling components that clusters already run, for the `autoscaling` e2e tests:
# metrics-server, CoreDNS (the add-on's interceptor and KEDA reach Services by name), KEDA's
# operator and metrics API server, KEDA's HTTP add-on (interceptor and scaler) and Prometheus,
# all from the Go module proxy like the control plane; each Kubernetes program also becomes an
# image (a static binary on scratch, built with buildah) in an OCI archive that the real node's
# containerd imports. The manifests of each project (`config/`, metrics-server's `manifests/`)
# are kept beside them: the tests install those, with our images.
#
# A present, complete directory is reused as is.
# Usage: e2e/build-autoscaling.sh            # prints the directory on the last line
# Env:   MODELKILN_CACHE (default ~/.cache/modelkiln), GO (default: go on PATH, else /usr/local/go/bin/go)
set -euo pipefail

METRICS_SERVER_VERSION=v0.8.0
COREDNS_VERSION=v1.14.7
KEDA_VERSION=v2.21.0
HTTP_ADD_ON_VERSION=v0.15.0
PROMETHEUS_VERSION=v0.316.0  # Prometheus 3.16

CACHE=${MODELKILN_CACHE:-$HOME/.cache/modelkiln}
OUT=$CACHE/autoscaling/ms-$METRICS_SERVER_VERSION.dns-$COREDNS_VERSION.keda-$KEDA_VERSION.http-$HTTP_ADD_ON_VERSION.prom-$PROMETHEUS_VERSION
GO=${GO:-$(command -v go || echo /usr/local/go/bin/go)}
export GOMODCACHE=${GOMODCACHE:-$CACHE/go/mod}
export GOCACHE=${GOCACHE:-$CACHE/go/build}
export GOFLAGS=-mod=mod
export CGO_ENABLED=0
export GOWORK=off  # Prometheus's source has a go.work (its tools); build each module alone
IMAGES=(metrics-server coredns keda keda-adapter interceptor scaler)  # prometheus runs on the host
IMAGE_REPO=localhost/modelkiln-e2e

complete() {
  local b
  for b in "${IMAGES[@]}" prometheus; do [[ -x $OUT/$b ]] || return 1; done
  for b in "${IMAGES[@]}"; do [[ -s $OUT/images/$b.tar ]] || return 1; done
  [[ -d $OUT/config/keda && -d $OUT/config/http-add-on && -d $OUT/config/metrics-server ]]
}

if complete; then
  echo "$OUT"
  exit 0
fi
mkdir -p "$OUT/images" "$OUT/config" "$GOMODCACHE" "$GOCACHE"
exec 9>"$OUT/.lock"  # one build at a time; the second reuses what the first built
flock 9
if complete; then
  echo "$OUT"
  exit 0
fi
WORK=$(mktemp -d)
trap 'chmod -R u+w "$WORK"; rm -rf "$WORK"' EXIT
start=$(date +%s)

# The source of module $1@$2, writable, in $WORK (printed).
module_source() {
  local dir
  dir=$("$GO" mod download -json "$1@$2" | sed -n 's/.*"Dir": "\(.*\)".*/\1/p')
  mkdir -p "$WORK/src"
  cp -r "$dir" "$WORK/src/${1##*/}"
  chmod -R u+w "$WORK/src/${1##*/}"
  echo "$WORK/src/${1##*/}"
}

# go build $3... inside the module source $1, to $OUT/$2.
build_in() {
  local src=$1 name=$2
  shift 2
  [[ -x $OUT/$name ]] && return 0
  echo "building $name" >&2
  (cd "$src" && nice -n 10 "$GO" build -trimpath -ldflags "-s -w" -o "$OUT/$name.tmp" "$@")
  mv "$OUT/$name.tmp" "$OUT/$name"
}

# --- metrics-server: a plain `go install` (no replace lines) --------------------------------
ms=$(module_source sigs.k8s.io/metrics-server $METRICS_SERVER_VERSION)
build_in "$ms" metrics-server ./cmd/metrics-server
rm -rf "$OUT/config/metrics-server" && cp -r "$ms/manifests" "$OUT/config/metrics-server"

# --- CoreDNS -------------------------------------------------------------------------------
dns=$(module_source github.com/coredns/coredns $COREDNS_VERSION)
build_in "$dns" coredns .

# --- KEDA: its go.mod has replace lines, so `go install pkg@version` refuses; build in the source
keda=$(module_source github.com/kedacore/keda/v2 $KEDA_VERSION)
build_in "$keda" keda ./cmd/operator
build_in "$keda" keda-adapter ./cmd/adapter
rm -rf "$OUT/config/keda" && cp -r "$keda/config" "$OUT/config/keda"

# --- KEDA's HTTP add-on: three mains in one module (the operator is only for HTTPScaledObject,
# the older API; the interceptor reads InterceptorRoutes itself)
http=$(module_source github.com/kedacore/http-add-on $HTTP_ADD_ON_VERSION)
build_in "$http" interceptor ./interceptor
build_in "$http" scaler ./scaler
rm -rf "$OUT/config/http-add-on" && cp -r "$http/config" "$OUT/config/http-add-on"

# --- Prometheus: only Kubernetes service discovery (the other SD plugins are most of its size)
prom=$(module_source github.com/prometheus/prometheus $PROMETHEUS_VERSION)
build_in "$prom" prometheus -tags remove_all_sd,enable_kubernetes_sd ./cmd/prometheus

# --- images: each static binary alone on scratch, as a non-root user ---------------------------
cat > "$OUT/images/storage.conf" <<EOF
[storage]
driver = "vfs"
graphroot = "$CACHE/images/storage"
runroot = "$CACHE/images/run"
EOF
export CONTAINERS_STORAGE_CONF=$OUT/images/storage.conf STORAGE_DRIVER=vfs BUILDAH_ISOLATION=chroot
for b in "${IMAGES[@]}"; do
  [[ -s $OUT/images/$b.tar ]] && continue
  ref=$IMAGE_REPO/$b:e2e
  c=$(buildah from scratch)
  buildah copy --quiet "$c" "$OUT/$b" "/$b" >/dev/null
  buildah config --entrypoint "[\"/$b\"]" --user 65532:65532 --env HOME=/tmp "$c"
  buildah commit --quiet --rm "$c" "$ref" >/dev/null
  buildah push --quiet "$ref" "oci-archive:$OUT/images/$b.tar.tmp:$ref" >/dev/null
  buildah rmi "$ref" >/dev/null
  mv "$OUT/images/$b.tar.tmp" "$OUT/images/$b.tar"
done

echo "scaling components built in $(( $(date +%s) - start ))s" >&2
complete
echo "$OUT"
