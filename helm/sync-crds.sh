#!/usr/bin/env bash
# Copies the generated CRDs (crds/*.yaml) and the example ClusterLoraTrainingTemplates
# (examples/templates/*.yaml) into the chart, so the chart ships exactly what the models
# generate. tests/unit/test_helm_chart.py fails when the copies drift.
# crds/kopf-peering.yaml belongs to the chart itself and is kept.
set -euo pipefail

root="$(cd "$(dirname "$0")/.." && pwd)"
chart="$root/helm/lora-operator"

sync() {  # source-dir dest-dir [keep-file]
  local src="$1" dest="$2" keep="${3:-}"
  mkdir -p "$dest"
  for f in "$dest"/*.yaml; do
    [ -e "$f" ] || continue
    [ "$(basename "$f")" = "$keep" ] && continue
    [ -e "$src/$(basename "$f")" ] || rm -f "$f"
  done
  for f in "$src"/*.yaml; do
    [ -e "$f" ] || continue
    cp "$f" "$dest/"
  done
}

sync "$root/crds" "$chart/crds" kopf-peering.yaml
sync "$root/examples/templates" "$chart/files/cluster-templates"
echo "synced $(ls "$root"/crds/*.yaml 2>/dev/null | wc -l) CRD file(s) and" \
  "$(ls "$root"/examples/templates/*.yaml 2>/dev/null | wc -l) example template(s) into $chart" >&2
