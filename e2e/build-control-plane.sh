#!/usr/bin/env bash
# Build the Kubernetes control plane the e2e suite runs against.
#
# Why: no Docker here (so no kind/k3d) and no release downloads, but the Go module
# proxy is reachable. We build kube-apiserver, kube-controller-manager and
# kube-scheduler from k8s.io/kubernetes, etcd from go.etcd.io/etcd/server/v3 and
# kwok from sigs.k8s.io/kwok, all from source, into a per-version cache directory
# outside the repository. A present, complete directory is reused as is.
#
# Usage: e2e/build-control-plane.sh            # prints the binary directory on the last line
# Env:   MODELKILN_CACHE (default ~/.cache/modelkiln), GO (default: go on PATH, else /usr/local/go/bin/go)
set -euo pipefail

K8S_VERSION=v1.34.4
ETCD_VERSION=v3.6.16
KWOK_VERSION=v0.8.0
HELM_VERSION=v3.22.0  # for charts/modelkiln (tests/chart, e2e/test_e2e_helm.py)

CACHE=${MODELKILN_CACHE:-$HOME/.cache/modelkiln}
OUT=$CACHE/k8s/$K8S_VERSION
GO=${GO:-$(command -v go || echo /usr/local/go/bin/go)}
export GOMODCACHE=${GOMODCACHE:-$CACHE/go/mod}
export GOCACHE=${GOCACHE:-$CACHE/go/build}
export GOFLAGS=-mod=mod
export CGO_ENABLED=0
# kubelet and kube-proxy run the real node of the real_node tests (e2e/real_node.py).
BINARIES=(kube-apiserver kube-controller-manager kube-scheduler kubelet kube-proxy etcd kwok kwokctl helm)

complete() {
  local b
  for b in "${BINARIES[@]}"; do [[ -x $OUT/$b ]] || return 1; done
}

if complete; then
  echo "$OUT"
  exit 0
fi

mkdir -p "$OUT" "$GOMODCACHE" "$GOCACHE"
# One build at a time (the test suites and the benchmarks may all ask at once): wait, then
# reuse what the other one built.
exec 9>"$OUT/.lock"
flock 9
if complete; then
  echo "$OUT"
  exit 0
fi
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
start=$(date +%s)

# --- kube-apiserver, kube-controller-manager, kube-scheduler, kubelet, kube-proxy ---
# k8s.io/kubernetes replaces its staging modules with ./staging/... paths, which
# `go install pkg@version` refuses. A wrapper module pins each staging module to
# the matching published v0.X.Y instead; the list comes from kubernetes' own go.mod.
staging_version=v0.${K8S_VERSION#v1.}
gomod=$("$GO" mod download -json "k8s.io/kubernetes@$K8S_VERSION" | sed -n 's/.*"GoMod": "\(.*\)".*/\1/p')
mkdir -p "$WORK/k8s"
{
  echo "module modelkiln.local/k8sbins"
  echo "go 1.24.0"
  echo "require k8s.io/kubernetes $K8S_VERSION"
  echo "replace ("
  sed -n 's#^[[:space:]]*\(k8s.io/[a-z0-9-]*\) => ./staging/.*#\t\1 => \1 '"$staging_version"'#p' "$gomod"
  echo ")"
} > "$WORK/k8s/go.mod"
cat > "$WORK/k8s/tools.go" <<'GO'
//go:build tools

package tools

import (
	_ "k8s.io/kubernetes/cmd/kube-apiserver"
	_ "k8s.io/kubernetes/cmd/kube-controller-manager"
	_ "k8s.io/kubernetes/cmd/kube-scheduler"
	_ "k8s.io/kubernetes/cmd/kubelet"
	_ "k8s.io/kubernetes/cmd/kube-proxy"
)
GO
minor=${K8S_VERSION#v1.}; minor=${minor%%.*}
ldflags="-s -w \
 -X k8s.io/component-base/version.gitMajor=1 \
 -X k8s.io/component-base/version.gitMinor=$minor \
 -X k8s.io/component-base/version.gitVersion=$K8S_VERSION \
 -X k8s.io/component-base/version.gitTreeState=clean \
 -X k8s.io/client-go/pkg/version.gitMajor=1 \
 -X k8s.io/client-go/pkg/version.gitMinor=$minor \
 -X k8s.io/client-go/pkg/version.gitVersion=$K8S_VERSION \
 -X k8s.io/client-go/pkg/version.gitTreeState=clean"
(
  cd "$WORK/k8s"
  "$GO" mod tidy -e >/dev/null 2>&1 || true
  for b in kube-apiserver kube-controller-manager kube-scheduler kubelet kube-proxy; do
    [[ -x $OUT/$b ]] && continue
    echo "building $b $K8S_VERSION" >&2
    "$GO" build -trimpath -ldflags "$ldflags" -o "$OUT/$b.tmp" "k8s.io/kubernetes/cmd/$b"
    mv "$OUT/$b.tmp" "$OUT/$b"
  done
)

# --- etcd ----------------------------------------------------------------------
# go.etcd.io/etcd/server/v3 has a main package at its root but also replace lines,
# so it too is built through a wrapper module.
if [[ ! -x $OUT/etcd ]]; then
  echo "building etcd $ETCD_VERSION" >&2
  mkdir -p "$WORK/etcd"
  (
    cd "$WORK/etcd"
    printf 'module modelkiln.local/etcdbin\ngo 1.24.0\nrequire go.etcd.io/etcd/server/v3 %s\n' "$ETCD_VERSION" > go.mod
    printf '//go:build tools\n\npackage tools\n\nimport _ "go.etcd.io/etcd/server/v3"\n' > tools.go
    "$GO" mod tidy -e >/dev/null 2>&1 || true
    "$GO" build -trimpath -ldflags "-s -w" -o "$OUT/etcd.tmp" go.etcd.io/etcd/server/v3
    mv "$OUT/etcd.tmp" "$OUT/etcd"
  )
fi

# --- kwok ----------------------------------------------------------------------
for b in kwok kwokctl; do
  [[ -x $OUT/$b ]] && continue
  echo "building $b $KWOK_VERSION" >&2
  GOBIN=$WORK/bin "$GO" install -trimpath -ldflags "-s -w" "sigs.k8s.io/kwok/cmd/$b@$KWOK_VERSION"
  mv "$WORK/bin/$b" "$OUT/$b"
done

# --- helm (charts/modelkiln tests) ----------------------------------------------
# A plain `go install` (helm's module has no replace directives). The ldflags set what `helm
# version` prints and the Kubernetes version that `helm lint`/`helm template` assume: ours.
if [[ ! -x $OUT/helm ]]; then
  echo "building helm $HELM_VERSION" >&2
  helm_ldflags="-s -w -X helm.sh/helm/v3/internal/version.version=$HELM_VERSION"
  for pkg in helm.sh/helm/v3/pkg/chartutil helm.sh/helm/v3/pkg/lint/rules; do
    helm_ldflags+=" -X $pkg.k8sVersionMajor=1 -X $pkg.k8sVersionMinor=$minor"
  done
  GOBIN=$WORK/bin nice -n 10 "$GO" install -trimpath -ldflags "$helm_ldflags" "helm.sh/helm/v3/cmd/helm@$HELM_VERSION"
  mv "$WORK/bin/helm" "$OUT/helm"
fi

echo "control plane built in $(( $(date +%s) - start ))s" >&2
complete
echo "$OUT"
