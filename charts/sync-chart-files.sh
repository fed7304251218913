#!/usr/bin/env bash
# Copy the generated files the chart bundles into charts/disagg-operator (make chart-crds):
#   crds/*.yaml                              -> charts/disagg-operator/crds/ (Helm installs them)
#   manifests/prometheus-adapter/rules.yaml  -> charts/disagg-operator/files/prometheus-adapter-rules.yaml
# Each copy gets a one-line "generated" header; tests/delivery/test_chart_files.py checks drift.
# Nothing else lives in the chart's crds/: a file there without a source in crds/ is removed.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
chart="$root/charts/disagg-operator"
header() { printf '# Copied from %s by charts/sync-chart-files.sh (make chart-crds); do not edit.\n' "$1"; }

mkdir -p "$chart/crds" "$chart/files"
for stale in "$chart"/crds/*.yaml; do
  [[ -e "$stale" ]] || continue
  base=$(basename "$stale")
  [[ -e "$root/crds/$base" ]] || rm -f -- "$stale"
done
for src in "$root"/crds/*.yaml; do
  base=$(basename "$src")
  { header "crds/$base"; cat "$src"; } >"$chart/crds/$base.tmp"
  mv "$chart/crds/$base.tmp" "$chart/crds/$base"
done

rules="$root/manifests/prometheus-adapter/rules.yaml"
target="$chart/files/prometheus-adapter-rules.yaml"
if [[ -f "$rules" ]]; then
  { header "manifests/prometheus-adapter/rules.yaml"; cat "$rules"; } >"$target.tmp"
  mv "$target.tmp" "$target"
else
  rm -f -- "$target"
fi
echo "chart files synced into ${chart#"$root"/}" >&2
