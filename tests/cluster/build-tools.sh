#!/usr/bin/env bash
# Builds the test ground's binaries from Go modules into a cache folder outside the clone,
# keyed by the pinned versions, so a fresh clone on the same machine reuses them.
# A binary already present is not rebuilt. Usage: build-tools.sh [BIN_DIR]
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
source "$here/versions.env"

bin="${1:-${LORA_TOOLS_DIR:-$HOME/.cache/lora-operator/tools/k8s-$K8S_VERSION-etcd-$ETCD_VERSION-kwok-$KWOK_VERSION-helm-$HELM_VERSION-minio-${MINIO_VERSION: -12}}}"
mkdir -p "$bin"
export CGO_ENABLED=0

have() { [ -x "$bin/$1" ]; }
log() { printf '[build-tools] %s\n' "$*" >&2; }

build_kubernetes() {
  local stamp="-s -w"
  for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    stamp="$stamp -X $pkg.gitVersion=$K8S_VERSION -X $pkg.gitMajor=1 -X $pkg.gitMinor=34 -X $pkg.gitTreeState=clean"
  done
  for cmd in kube-apiserver kube-controller-manager kube-scheduler kubectl; do
    have "$cmd" && continue
    log "building $cmd $K8S_VERSION"
    (cd "$here/gotools/kubernetes" && go build -trimpath -ldflags "$stamp" -o "$bin/$cmd" "k8s.io/kubernetes/cmd/$cmd")
  done
}

build_etcd() {
  have etcd && return
  log "building etcd $ETCD_VERSION"
  (cd "$here/gotools/etcd" && go build -trimpath -ldflags "-s -w" -o "$bin/etcd" go.etcd.io/etcd/server/v3)
}

build_promtool() {  # the cache folder is not keyed by its version: a stamp file records it
  have promtool && [ "$(cat "$bin/promtool.version" 2>/dev/null)" = "$PROMETHEUS_VERSION" ] && return
  log "building promtool $PROMETHEUS_VERSION"
  (cd "$here/gotools/prometheus" && go build -trimpath -ldflags "-s -w" -o "$bin/promtool" \
    github.com/prometheus/prometheus/cmd/promtool)
  echo "$PROMETHEUS_VERSION" > "$bin/promtool.version"
}

build_kueue() {  # like promtool: a stamp file records the version instead of the folder name
  have kueue && [ "$(cat "$bin/kueue.version" 2>/dev/null)" = "$KUEUE_VERSION" ] && return
  log "building kueue $KUEUE_VERSION"
  GOBIN="$bin" go install -trimpath -ldflags "-s -w" "sigs.k8s.io/kueue/cmd/kueue@$KUEUE_VERSION"
  echo "$KUEUE_VERSION" > "$bin/kueue.version"
}

go_install() {  # name module-path version
  have "$1" && return
  log "building $1 $3"
  GOBIN="$bin" go install -trimpath -ldflags "-s -w" "$2@$3"
}

kwok_node_stages() {  # kwok's own node stages from its module, for controlplane.kwok_config
  [ -s "$bin/kwok-node-stages.yaml" ] && return
  log "copying kwok $KWOK_VERSION node stages"
  local dir
  dir="$(cd / && go mod download -json "sigs.k8s.io/kwok@$KWOK_VERSION" | sed -n 's/^\t"Dir": "\(.*\)",$/\1/p')"
  { cat "$dir/kustomize/stage/node/fast/node-initialize.yaml"; echo "---"
    cat "$dir/kustomize/stage/node/heartbeat-with-lease/node-heartbeat-with-lease.yaml"; } > "$bin/kwok-node-stages.yaml"
}

start=$(date +%s)
build_etcd
go_install kwok sigs.k8s.io/kwok/cmd/kwok "$KWOK_VERSION"
kwok_node_stages
go_install helm helm.sh/helm/v3/cmd/helm "$HELM_VERSION"
go_install minio github.com/minio/minio "$MINIO_VERSION"
build_kubernetes
build_promtool
build_kueue
log "tools ready in $bin ($(( $(date +%s) - start ))s)"
echo "$bin"
