#!/usr/bin/env bash
# Build (once, from upstream Go modules) the binaries the e2e suite needs and expose them in a
# stable directory of symlinks. Versions come from e2e/versions.env only. One group is not Go:
# vllm-parser, a Python venv with vLLM (from PyPI, e2e/vllm-parser-requirements.txt) whose
# `vllm serve` argument parser e2e/runtime/vllm_args.py runs.
#
#   e2e/tools.sh                    build whatever is missing (required + optional groups)
#   e2e/tools.sh GROUP...           only these groups: kubernetes etcd kwok helm llm-d-router
#                                   vllm-parser prometheus-adapter llm-d-inference-sim keda
#   e2e/tools.sh --print-bin-dir    print the symlink dir (builds nothing)
#   e2e/tools.sh --env              print KEY=value lines (DISAGG_E2E_BIN_DIR, ...; builds nothing)
#   e2e/tools.sh --check            exit 0 iff every required binary is present (builds nothing)
#   e2e/tools.sh --retry-failed     retry optional groups whose earlier build failed
#   e2e/tools.sh --keda-crd         print the path of KEDA's ScaledObject CRD YAML (KEDA_VERSION),
#                                   fetched once with `go mod download` (no build)
#   e2e/tools.sh --gaie-crds        print the dir of the Gateway API Inference Extension CRDs
#                                   (GAIE_VERSION: InferencePool, InferenceObjective, ...)
#   e2e/tools.sh --gateway-crds     print the dir of Gateway API's standard CRDs (GATEWAY_API_VERSION)
#
# Layout (nothing is written inside the git work tree):
#   $CACHE = ${DISAGG_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/disagg}
#   $CACHE/bin/<group>/<version>/<binary>   the builds, keyed by version (vllm-parser:
#                                           <VLLM_VERSION>-<hash of its requirements>/venv)
#   $CACHE/current/<binary>                 symlinks to the versions pinned in versions.env
#   $CACHE/src/<group>-<version>/           generated wrapper Go modules
#   $CACHE/logs/<group>-<version>.log       build logs
#   $CACHE/crds/keda-<version>/             KEDA's CRD YAMLs, copied from its Go module
# GOMODCACHE and GOCACHE are left at their defaults so they persist between runs.
#
# Tunables: DISAGG_TOOLS_JOBS (concurrent go builds, default 2), DISAGG_GO_BUILD_P (go build -p,
# default 2). The vllm-parser install (pip: network + disk bound) runs beside the go builds in a
# lane of its own, outside DISAGG_TOOLS_JOBS.
set -euo pipefail

E2E_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=versions.env
source "${E2E_DIR}/versions.env"

CACHE="${DISAGG_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/disagg}"
BIN_ROOT="${CACHE}/bin"
CURRENT="${CACHE}/current"
SRC_ROOT="${CACHE}/src"
LOG_ROOT="${CACHE}/logs"
JOBS="${DISAGG_TOOLS_JOBS:-2}"
GO_P="${DISAGG_GO_BUILD_P:-2}"
VLLM_REQUIREMENTS="${E2E_DIR}/vllm-parser-requirements.txt"

REQUIRED_GROUPS=(kubernetes etcd kwok helm llm-d-router vllm-parser)
OPTIONAL_GROUPS=(prometheus-adapter llm-d-inference-sim keda)

log() { printf '[tools] %s\n' "$*" >&2; }
die() { printf '[tools] ERROR: %s\n' "$*" >&2; exit 1; }

group_version() {
  case "$1" in
    kubernetes) echo "${K8S_VERSION}" ;;
    etcd) echo "${ETCD_VERSION}" ;;
    kwok) echo "${KWOK_VERSION}" ;;
    helm) echo "${HELM_VERSION}" ;;
    prometheus-adapter) echo "${PROMETHEUS_ADAPTER_VERSION}" ;;
    llm-d-inference-sim) echo "${LLMD_INFERENCE_SIM_VERSION}" ;;
    llm-d-router) echo "${LLMD_ROUTER_VERSION}" ;;
    keda) echo "${KEDA_VERSION}" ;;
    vllm-parser) echo "${VLLM_VERSION}-$(sha256sum "${VLLM_REQUIREMENTS}" | cut -c1-12)" ;;
    *) die "unknown tool group: $1" ;;
  esac
}

group_binaries() {
  case "$1" in
    kubernetes) echo "kube-apiserver kube-controller-manager kube-scheduler kubectl" ;;
    etcd) echo "etcd" ;;
    kwok) echo "kwok kwokctl" ;;
    helm) echo "helm" ;;
    prometheus-adapter) echo "prometheus-adapter" ;;
    llm-d-inference-sim) echo "llm-d-inference-sim" ;;
    llm-d-router) echo "epp pd-sidecar" ;;
    keda) echo "keda-operator keda-adapter" ;;
    vllm-parser) echo "vllm-parser-python" ;;
  esac
}

# groups that need no Go toolchain (their own lane, beside the go builds)
is_python() { [[ "$1" == vllm-parser ]]; }

# what a group is built with, for its .complete / .failed marker
toolchain() {
  if is_python "$1"; then echo "python=$(python3 -c 'import platform; print(platform.python_version())')"
  else echo "go=$(go env GOVERSION)"; fi
}

is_optional() { local g; for g in "${OPTIONAL_GROUPS[@]}"; do [[ "$g" == "$1" ]] && return 0; done; return 1; }

group_dir() { echo "${BIN_ROOT}/$1/$(group_version "$1")"; }

group_present() {
  local dir b
  dir="$(group_dir "$1")"
  [[ -f "${dir}/.complete" ]] || return 1
  for b in $(group_binaries "$1"); do [[ -x "${dir}/${b}" ]] || return 1; done
}

# "GoMod"/"Dir" field of `go mod download -json MODULE@VERSION`, without jq.
mod_field() {
  go mod download -json "$2" | sed -n "s/^[[:space:]]*\"$1\": \"\\(.*\\)\",\\{0,1\\}\$/\\1/p"
}

# ---------------------------------------------------------------------------------------------
# builders: each writes its binaries into $1 (an empty staging dir)

# use_wrapper_module SRC: install SRC/go.mod.new as SRC/go.mod (a changed go.mod makes go.sum
# stale), cd into SRC and resolve its go.sum once.
use_wrapper_module() {
  local src="$1"
  if ! cmp -s "${src}/go.mod.new" "${src}/go.mod"; then
    mv "${src}/go.mod.new" "${src}/go.mod"
    rm -f "${src}/go.sum"
  else
    rm -f "${src}/go.mod.new"
  fi
  cd "${src}"
  [[ -s go.sum ]] || go mod tidy
}

build_kubernetes() {
  local out="$1" ver="${K8S_VERSION}" src gomod info major minor patch staging date
  src="${SRC_ROOT}/kubernetes-${ver}"
  mkdir -p "${src}"
  gomod="$(mod_field GoMod "k8s.io/kubernetes@${ver}")"
  info="${gomod%.mod}.info"
  [[ -f "${gomod}" ]] || die "could not download k8s.io/kubernetes@${ver}"
  IFS=. read -r major minor patch <<<"${ver#v}"
  staging="v0.${minor}.${patch}"
  date="$(sed -n 's/.*"Time":"\([^"]*\)".*/\1/p' "${info}")"
  [[ -n "${date}" ]] || date="1970-01-01T00:00:00Z"
  {
    echo "// generated by e2e/tools.sh -- wrapper module to build k8s.io/kubernetes ${ver} commands"
    echo "module disagg.local/e2e/kubernetes-tools"
    echo
    echo "go 1.26.0"
    echo
    echo "require k8s.io/kubernetes ${ver}"
    echo
    echo "// every k8s.io/X => ./staging/... of k8s.io/kubernetes' own go.mod, at ${staging}"
    echo "replace ("
    awk -v v="${staging}" '{ for (i = 2; i < NF; i++) if ($i == "=>" && $(i + 1) ~ /^\.\/staging\//) print "\t" $(i - 1) " => " $(i - 1) " " v }' "${gomod}"
    echo ")"
    echo
    echo "tool ("
    echo "	k8s.io/kubernetes/cmd/kube-apiserver"
    echo "	k8s.io/kubernetes/cmd/kube-controller-manager"
    echo "	k8s.io/kubernetes/cmd/kube-scheduler"
    echo "	k8s.io/kubernetes/cmd/kubectl"
    echo ")"
  } >"${src}/go.mod.new"
  grep -q '=> k8s.io/' "${src}/go.mod.new" || die "no staging replaces found in ${gomod}"
  use_wrapper_module "${src}"
  local pkg ld="-s -w"
  for pkg in k8s.io/client-go/pkg/version k8s.io/component-base/version; do
    ld+=" -X ${pkg}.gitVersion=${ver} -X ${pkg}.gitMajor=${major} -X ${pkg}.gitMinor=${minor}"
    ld+=" -X ${pkg}.gitTreeState=clean -X ${pkg}.buildDate=${date}"
  done
  CGO_ENABLED=0 go build -trimpath -p "${GO_P}" -ldflags "${ld}" -o "${out}/" \
    k8s.io/kubernetes/cmd/kube-apiserver k8s.io/kubernetes/cmd/kube-controller-manager \
    k8s.io/kubernetes/cmd/kube-scheduler k8s.io/kubernetes/cmd/kubectl
}

build_etcd() {
  local out="$1" ver="${ETCD_VERSION}" src gomod
  src="${SRC_ROOT}/etcd-${ver}"
  mkdir -p "${src}"
  gomod="$(mod_field GoMod "go.etcd.io/etcd/server/v3@${ver}")"
  [[ -f "${gomod}" ]] || die "could not download go.etcd.io/etcd/server/v3@${ver}"
  {
    echo "// generated by e2e/tools.sh -- wrapper module to build etcd ${ver}"
    echo "module disagg.local/e2e/etcd-tools"
    echo
    echo "go 1.26.0"
    echo
    echo "require go.etcd.io/etcd/server/v3 ${ver}"
    echo
    echo "// server/v3's go.mod replaces its sibling modules with ../X; pin them to ${ver} instead"
    echo "replace ("
    awk -v v="${ver}" '{ for (i = 2; i < NF; i++) if ($i == "=>" && $(i + 1) ~ /^\.\.\// && $(i - 1) ~ /^go\.etcd\.io\/etcd\//) print "\t" $(i - 1) " => " $(i - 1) " " v }' "${gomod}"
    echo ")"
    echo
    echo "tool go.etcd.io/etcd/server/v3"
  } >"${src}/go.mod.new"
  use_wrapper_module "${src}"
  local ld="-s -w -X go.etcd.io/etcd/api/v3/version.GitSHA=${ver}"
  CGO_ENABLED=0 go build -trimpath -p "${GO_P}" -ldflags "${ld}" -o "${out}/etcd" go.etcd.io/etcd/server/v3
}

build_kwok() {
  local out="$1" ver="${KWOK_VERSION}"
  local ld="-s -w -X sigs.k8s.io/kwok/pkg/consts.Version=${ver#v} -X sigs.k8s.io/kwok/pkg/consts.KubeVersion=${K8S_VERSION#v}"
  GOBIN="${out}" CGO_ENABLED=0 go install -trimpath -p "${GO_P}" -ldflags "${ld}" \
    "sigs.k8s.io/kwok/cmd/kwok@${ver}" "sigs.k8s.io/kwok/cmd/kwokctl@${ver}"
}

build_helm() {
  local out="$1" ver="${HELM_VERSION}" gomod cg cmaj cmin
  # Same ldflags as helm's Makefile: without them `helm version` says v3.22 and
  # .Capabilities.KubeVersion of `helm template` defaults to v1.20.0.
  gomod="$(mod_field GoMod "helm.sh/helm/v3@${ver}")"
  cg="$(awk '$1 == "k8s.io/client-go" { print $2; exit }' "${gomod}")"
  IFS=. read -r cmaj cmin _ <<<"${cg#v}"
  local ld="-s -w -X helm.sh/helm/v3/internal/version.version=${ver} -X helm.sh/helm/v3/internal/version.gitTreeState=clean"
  if [[ -n "${cmin}" ]]; then
    local p
    for p in helm.sh/helm/v3/pkg/lint/rules helm.sh/helm/v3/pkg/chartutil; do
      ld+=" -X ${p}.k8sVersionMajor=$((cmaj + 1)) -X ${p}.k8sVersionMinor=${cmin}"
    done
  fi
  GOBIN="${out}" CGO_ENABLED=0 go install -trimpath -p "${GO_P}" -ldflags "${ld}" "helm.sh/helm/v3/cmd/helm@${ver}"
}

# Wrapper module that requires MODULE@VERSION and builds PKG: unlike `go install PKG@VERSION`
# this does not read MODULE's version list from the proxy (the proxy answers 403 for the
# @v/list of llm-d-inference-sim and prometheus-adapter here, which `go install` needs to check
# for deprecations). MODULE's go.mod must not rely on replace directives.
# build_wrapped OUT_FILE SRC_NAME MODULE VERSION PKG
build_wrapped() {
  local out="$1" name="$2" mod="$3" ver="$4" pkg="$5" src
  src="${SRC_ROOT}/${name}-${ver}"
  mkdir -p "${src}"
  {
    echo "// generated by e2e/tools.sh -- wrapper module to build ${pkg}@${ver}"
    echo "module disagg.local/e2e/${name}-tools"
    echo
    echo "go 1.26.0"
    echo
    echo "require ${mod} ${ver}"
    echo
    echo "tool ${pkg}"
  } >"${src}/go.mod.new"
  use_wrapper_module "${src}"
  CGO_ENABLED=0 go build -trimpath -p "${GO_P}" -ldflags "-s -w" -o "${out}" "${pkg}"
}

build_prometheus-adapter() {
  build_wrapped "$1/prometheus-adapter" prometheus-adapter sigs.k8s.io/prometheus-adapter \
    "${PROMETHEUS_ADAPTER_VERSION}" sigs.k8s.io/prometheus-adapter/cmd/adapter
}

# Pure Go (its Dockerfile builds with CGO_ENABLED=0; ZMQ is github.com/go-zeromq/zmq4): no cgo,
# zmq or tokenizers libraries needed. Run it with --force-dummy-tokenizer (no hub lookups).
build_llm-d-inference-sim() {
  build_wrapped "$1/llm-d-inference-sim" llm-d-inference-sim github.com/llm-d/llm-d-inference-sim \
    "${LLMD_INFERENCE_SIM_VERSION}" github.com/llm-d/llm-d-inference-sim/cmd/llm-d-inference-sim
}

# The llm-d router's epp and pd-sidecar. From the Go module proxy when it serves
# github.com/llm-d/llm-d-router at the pinned version (it answers 403 here); otherwise from a
# prebuilt copy (xz-compressed, built from that tag's source, see its README), accepted only if
# both binaries match the sha256 sums pinned in versions.env.
build_llm-d-router() {
  local out="$1" ver="${LLMD_ROUTER_VERSION}" dir
  if (cd "${out}" && GOFLAGS=-mod=mod go mod download -json "github.com/llm-d/llm-d-router@${ver}" >/dev/null 2>&1); then
    echo "building github.com/llm-d/llm-d-router@${ver} from the module proxy"
    build_wrapped "${out}/epp" llm-d-router-epp github.com/llm-d/llm-d-router "${ver}" \
      github.com/llm-d/llm-d-router/cmd/epp
    build_wrapped "${out}/pd-sidecar" llm-d-router-pd-sidecar github.com/llm-d/llm-d-router "${ver}" \
      github.com/llm-d/llm-d-router/cmd/pd-sidecar
  else
    echo "the module proxy does not serve github.com/llm-d/llm-d-router@${ver}; using a prebuilt copy"
    dir=""
    for candidate in "${DISAGG_LLMD_ROUTER_PREBUILT:-}" "${E2E_DIR}/../../shared/tools/llm-d-router" \
      /work/shared/tools/llm-d-router; do
      if [[ -n "${candidate}" && -f "${candidate}/epp.xz" && -f "${candidate}/pd-sidecar.xz" ]]; then
        dir="${candidate}"
        break
      fi
    done
    [[ -n "${dir}" ]] || die "no prebuilt llm-d router ${ver} found (set DISAGG_LLMD_ROUTER_PREBUILT to a dir with epp.xz and pd-sidecar.xz)"
    echo "prebuilt copy: ${dir}"
    xz -dc "${dir}/epp.xz" >"${out}/epp"
    xz -dc "${dir}/pd-sidecar.xz" >"${out}/pd-sidecar"
    # a prebuilt copy is taken only if it is exactly the build pinned in versions.env
    local got
    got="$(sha256sum "${out}/epp" | cut -d' ' -f1)"
    [[ "${got}" == "${LLMD_ROUTER_EPP_SHA256}" ]] || die "epp sha256 ${got} != pinned ${LLMD_ROUTER_EPP_SHA256}"
    got="$(sha256sum "${out}/pd-sidecar" | cut -d' ' -f1)"
    [[ "${got}" == "${LLMD_ROUTER_PD_SIDECAR_SHA256}" ]] || die "pd-sidecar sha256 ${got} != pinned ${LLMD_ROUTER_PD_SIDECAR_SHA256}"
  fi
  chmod +x "${out}/epp" "${out}/pd-sidecar"
}

# KEDA's operator (ScaledObject controller, scaler loop, gRPC metrics service) and its metrics
# API server (external.metrics.k8s.io, asks the operator over gRPC). Its go.mod pins k8s.io and
# Prometheus modules with replace directives, which a wrapper module would not inherit, so the
# commands are built inside the downloaded module itself (read-only, complete go.sum).
build_keda() {
  local out="$1" ver="${KEDA_VERSION}" dir
  dir="$(cd "${out}" && GOFLAGS=-mod=mod mod_field Dir "github.com/kedacore/keda/v2@${ver}")"
  [[ -f "${dir}/cmd/operator/main.go" ]] || die "could not download github.com/kedacore/keda/v2@${ver}"
  local ld="-s -w -X github.com/kedacore/keda/v2/version.Version=${ver#v} -X github.com/kedacore/keda/v2/version.GitCommit=${ver}"
  (cd "${dir}" && CGO_ENABLED=0 GOFLAGS=-mod=readonly go build -trimpath -p "${GO_P}" -ldflags "${ld}" \
    -o "${out}/keda-operator" ./cmd/operator)
  (cd "${dir}" && CGO_ENABLED=0 GOFLAGS=-mod=readonly go build -trimpath -p "${GO_P}" -ldflags "${ld}" \
    -o "${out}/keda-adapter" ./cmd/adapter)
}

# module_crds NAME MODULE VERSION SUBDIR: copy SUBDIR/*.yaml of a Go module (downloaded once,
# explicit version, no build) to $CACHE/crds/NAME-VERSION and print that dir.
module_crds() {
  local name="$1" mod="$2" ver="$3" sub="$4" dest dir tmp
  dest="${CACHE}/crds/${name}-${ver}"
  if [[ ! -f "${dest}/.complete" ]]; then
    command -v go >/dev/null || die "go is not on PATH (needed to fetch ${mod}@${ver})"
    mkdir -p "${CACHE}/crds"
    dir="$(cd "${CACHE}/crds" && GOFLAGS=-mod=mod mod_field Dir "${mod}@${ver}")"
    compgen -G "${dir}/${sub}/*.yaml" >/dev/null || die "no CRDs in ${mod}@${ver}/${sub} (${dir:-download failed})"
    tmp="$(mktemp -d "${CACHE}/crds/.${name}-${ver}.XXXXXX")"
    cp "${dir}/${sub}"/*.yaml "${tmp}/"
    chmod u+w "${tmp}"/*.yaml
    touch "${tmp}/.complete"
    rm -rf "${dest}"
    mv "${tmp}" "${dest}"
  fi
  echo "${dest}"
}

# KEDA's CRDs live in its Go module (config/crd/bases): `go mod download -json MODULE@VERSION`
# gives the module directory (an explicit version never asks the proxy for the version list).
# Copied under $CACHE so later runs need neither go nor the module cache.
keda_crd() {
  local dest="${CACHE}/crds/keda-${KEDA_VERSION}" file="keda.sh_scaledobjects.yaml" dir tmp
  if [[ ! -f "${dest}/${file}" ]]; then
    command -v go >/dev/null || die "go is not on PATH (needed to fetch github.com/kedacore/keda/v2@${KEDA_VERSION})"
    mkdir -p "${CACHE}/crds"
    # outside any go.mod, so the download does not touch a module of ours
    dir="$(cd "${CACHE}/crds" && GOFLAGS=-mod=mod mod_field Dir "github.com/kedacore/keda/v2@${KEDA_VERSION}")"
    [[ -f "${dir}/config/crd/bases/${file}" ]] || die "no ${file} in github.com/kedacore/keda/v2@${KEDA_VERSION} (${dir:-download failed})"
    tmp="$(mktemp -d "${CACHE}/crds/.keda-${KEDA_VERSION}.XXXXXX")"
    cp "${dir}"/config/crd/bases/*.yaml "${tmp}/"
    chmod u+w "${tmp}"/*.yaml
    rm -rf "${dest}"
    mv "${tmp}" "${dest}"
  fi
  echo "${dest}/${file}"
}

# vLLM's `vllm serve` argument parser, in a venv of the system python3: the pinned wheels with
# --no-deps (vLLM's full dependency set is for running models; see the requirements file), then
# one in-process check that the parser imports, accepts a good argv and refuses a bad one. Only
# `venv/bin/python` is used: the venv is created in the staging dir and renamed with it, which
# leaves the shebangs of its console scripts (pip, vllm, ...) pointing at the staging path.
build_vllm-parser() {
  local out="$1" py
  python3 --version
  python3 -m venv "${out}/venv"
  py="${out}/venv/bin/python"
  echo "pip install --no-deps -r ${VLLM_REQUIREMENTS} ($(wc -l <"${VLLM_REQUIREMENTS}") lines)"
  "${py}" -m pip install --quiet --disable-pip-version-check --no-input --no-deps --no-cache-dir \
    -r "${VLLM_REQUIREMENTS}"
  "${py}" -m pip --disable-pip-version-check list 2>/dev/null | grep -i '^vllm ' || true
  echo "self-check: python -m e2e.runtime.vllm_args --check-self"
  (cd "${E2E_DIR}/.." && PYTHONPATH="${E2E_DIR}/.." "${py}" -m e2e.runtime.vllm_args --check-self)
  # the stable name: current/vllm-parser-python -> this (a venv's python must be started through
  # the venv's own bin/ path, so a plain symlink chain to venv/bin/python would miss the venv)
  cat >"${out}/vllm-parser-python" <<'WRAPPER'
#!/bin/sh
# generated by e2e/tools.sh: the python of the vllm-parser venv next to this file
exec "$(dirname "$(readlink -f "$0")")/venv/bin/python" "$@"
WRAPPER
  chmod +x "${out}/vllm-parser-python"
  du -sh "${out}/venv"
}

# ---------------------------------------------------------------------------------------------

# build_group GROUP -> 0 ok, 1 failed. Output goes to the group's log file.
build_group() {
  local g="$1" ver dir tmp logf start rc
  ver="$(group_version "$g")"
  dir="$(group_dir "$g")"
  logf="${LOG_ROOT}/${g}-${ver}.log"
  tmp="$(mktemp -d "${BIN_ROOT}/.${g}-${ver}.XXXXXX")"
  start=${SECONDS}
  log "building ${g} ${ver} (log: ${logf})"
  rc=0
  # (background + wait, so that set -e stays in force inside the builder)
  ( set -euo pipefail; "build_${g}" "${tmp}" ) >"${logf}" 2>&1 &
  wait $! || rc=$?
  if [[ ${rc} -eq 0 ]]; then
    local b
    for b in $(group_binaries "$g"); do
      [[ -x "${tmp}/${b}" ]] || { echo "missing ${b} after build" >>"${logf}"; rc=1; }
    done
  fi
  if [[ ${rc} -ne 0 ]]; then
    rm -rf "${tmp}"
    mkdir -p "${dir}"
    { toolchain "$g"; echo "date=$(date -u +%FT%TZ)"; } >"${dir}/.failed"
    log "FAILED ${g} ${ver} after $((SECONDS - start))s; last lines of ${logf}:"
    tail -n 25 "${logf}" | sed 's/^/    /' >&2
    return 1
  fi
  echo "built $(date -u +%FT%TZ) with $(toolchain "$g") in $((SECONDS - start))s" >"${tmp}/.complete"
  rm -rf "${dir}"
  mkdir -p "$(dirname "${dir}")"
  mv "${tmp}" "${dir}"
  log "built ${g} ${ver} in $((SECONDS - start))s"
}

link_current() {
  local g b dir
  mkdir -p "${CURRENT}"
  for g in "${REQUIRED_GROUPS[@]}" "${OPTIONAL_GROUPS[@]}"; do
    dir="$(group_dir "$g")"
    for b in $(group_binaries "$g"); do
      if group_present "$g"; then
        ln -sfn "${dir}/${b}" "${CURRENT}/${b}.tmp" && mv -Tf "${CURRENT}/${b}.tmp" "${CURRENT}/${b}"
      else
        rm -f "${CURRENT}/${b}"
      fi
    done
  done
  cp "${E2E_DIR}/versions.env" "${CURRENT}/versions.env.tmp" && mv -f "${CURRENT}/versions.env.tmp" "${CURRENT}/versions.env"
}

print_env() {
  echo "DISAGG_CACHE_DIR=${CACHE}"
  echo "DISAGG_E2E_BIN_DIR=${CURRENT}"
  local g b
  for g in "${REQUIRED_GROUPS[@]}" "${OPTIONAL_GROUPS[@]}"; do
    for b in $(group_binaries "$g"); do
      if [[ -x "${CURRENT}/${b}" ]]; then
        echo "DISAGG_E2E_$(echo "${b}" | tr 'a-z-' 'A-Z_')=${CURRENT}/${b}"
      fi
    done
  done
}

main() {
  local retry_failed=0 groups=() explicit=0 a
  for a in "$@"; do
    case "$a" in
      --print-bin-dir) echo "${CURRENT}"; return 0 ;;
      --env) print_env; return 0 ;;
      --check)
        local g missing=0
        for g in "${REQUIRED_GROUPS[@]}"; do group_present "$g" || { log "missing: ${g} $(group_version "$g")"; missing=1; }; done
        return ${missing} ;;
      --keda-crd) mkdir -p "${CACHE}"; keda_crd; return 0 ;;
      --gaie-crds) mkdir -p "${CACHE}"
        module_crds gaie sigs.k8s.io/gateway-api-inference-extension "${GAIE_VERSION}" config/crd/bases; return 0 ;;
      --gateway-crds) mkdir -p "${CACHE}"
        module_crds gateway-api sigs.k8s.io/gateway-api "${GATEWAY_API_VERSION}" config/crd/standard; return 0 ;;
      --retry-failed) retry_failed=1 ;;
      -h|--help) sed -n '2,29p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; return 0 ;;
      -*) die "unknown option $a" ;;
      *) group_version "$a" >/dev/null; groups+=("$a"); explicit=1 ;;
    esac
  done
  [[ ${#groups[@]} -gt 0 ]] || groups=("${REQUIRED_GROUPS[@]}" "${OPTIONAL_GROUPS[@]}")

  mkdir -p "${BIN_ROOT}" "${SRC_ROOT}" "${LOG_ROOT}" "${CURRENT}"

  # One tools.sh at a time per cache dir (parallel make / test sessions).
  exec 9>"${CACHE}/.tools.lock"
  flock 9

  local todo=() g
  for g in "${groups[@]}"; do
    group_present "$g" && continue
    if [[ -f "$(group_dir "$g")/.failed" ]] && is_optional "$g" && [[ ${explicit} -eq 0 && ${retry_failed} -eq 0 ]] \
       && grep -q "^go=$(go env GOVERSION 2>/dev/null)\$" "$(group_dir "$g")/.failed"; then
      log "skipping optional ${g} $(group_version "$g"): its build failed before (see ${LOG_ROOT}/${g}-$(group_version "$g").log; --retry-failed to retry)"
      continue
    fi
    todo+=("$g")
  done

  local start=${SECONDS} failed_req=() failed_opt=() go_todo=() py_todo=()
  for g in "${todo[@]}"; do if is_python "$g"; then py_todo+=("$g"); else go_todo+=("$g"); fi; done
  if [[ ${#todo[@]} -gt 0 ]]; then
    local -a lanes=() lane_pids=()
    local n=0
    if [[ ${#go_todo[@]} -gt 0 ]]; then
      command -v go >/dev/null || die "go is not on PATH (needed to build: ${go_todo[*]})"
      log "go: $(go env GOVERSION), GOMODCACHE=$(go env GOMODCACHE), GOCACHE=$(go env GOCACHE)"
    fi
    if [[ ${#py_todo[@]} -gt 0 ]]; then
      command -v python3 >/dev/null || die "python3 is not on PATH (needed to build: ${py_todo[*]})"
    fi
    # Up to $JOBS concurrent go builds ("lanes"); kubernetes, the big one, gets a lane of its own.
    if [[ " ${go_todo[*]} " == *" kubernetes "* && ${JOBS} -gt 1 ]]; then
      lanes[0]="kubernetes"
      for g in "${go_todo[@]}"; do
        [[ "$g" == kubernetes ]] && continue
        local l=$(( 1 + n % (JOBS - 1) )); lanes[l]="${lanes[l]:-} ${g}"; n=$((n + 1))
      done
    else
      for g in "${go_todo[@]}"; do local l=$(( n % JOBS )); lanes[l]="${lanes[l]:-} ${g}"; n=$((n + 1)); done
    fi
    # pip mostly downloads and unpacks (network + disk; ~1 CPU-minute, mostly byte-compiling):
    # one extra lane beside the go builds, not counted in $JOBS
    if [[ ${#py_todo[@]} -gt 0 ]]; then lanes+=("${py_todo[*]}"); fi
    local lane
    for lane in "${lanes[@]}"; do
      (
        rc=0
        for g in ${lane}; do build_group "$g" || { echo "$g" >>"${CACHE}/.tools.failed.$$"; rc=1; }; done
        exit ${rc}
      ) &
      lane_pids+=($!)
    done
    for i in "${!lane_pids[@]}"; do wait "${lane_pids[$i]}" || true; done
    if [[ -f "${CACHE}/.tools.failed.$$" ]]; then
      while read -r g; do
        if is_optional "$g" && [[ ${explicit} -eq 0 ]]; then failed_opt+=("$g"); else failed_req+=("$g"); fi
      done <"${CACHE}/.tools.failed.$$"
      rm -f "${CACHE}/.tools.failed.$$"
    fi
    log "build phase took $((SECONDS - start))s"
  fi

  link_current
  for g in "${failed_opt[@]}"; do
    log "WARNING: optional tool ${g} $(group_version "$g") could not be built; continuing without it"
  done
  for g in "${groups[@]}"; do
    if ! is_optional "$g" || [[ ${explicit} -eq 1 ]]; then
      group_present "$g" || failed_req+=("$g")
    fi
  done
  if [[ ${#failed_req[@]} -gt 0 ]]; then
    die "required tool(s) could not be built: $(printf '%s\n' "${failed_req[@]}" | sort -u | tr '\n' ' ')"
  fi
  echo "${CURRENT}"
}

main "$@"
