#!/usr/bin/env bash
# Make sure a `prometheus` binary is on PATH for the scaling e2e tests (e2e/metrics.py).
# Idempotent: does nothing when prometheus is already there; otherwise installs Debian's
# `prometheus` package (2.42 on bookworm), running `apt-get update` only when the package is
# not known to apt yet. Needs root (or passwordless sudo) only when it has to install.
# The Debian package enables a system service; we stop and disable it again: the tests run
# their own private instance on a free loopback port and the system one would only compete.
set -euo pipefail

log() { printf '[ensure-prometheus] %s\n' "$*" >&2; }

if command -v prometheus >/dev/null 2>&1; then
  exit 0
fi

SUDO=()
if [[ "$(id -u)" -ne 0 ]]; then
  command -v sudo >/dev/null 2>&1 || { log "ERROR: prometheus is missing and we are not root (no sudo)"; exit 1; }
  SUDO=(sudo -n)
fi
export DEBIAN_FRONTEND=noninteractive

if ! apt-cache policy prometheus 2>/dev/null | grep -q 'Candidate: [0-9]'; then
  log "apt-get update (prometheus is not in the package lists yet)"
  "${SUDO[@]}" apt-get update -q >&2
fi
log "installing Debian's prometheus"
# policy-rc.d 101 keeps the package's post-install from starting the system service.
policy=/usr/sbin/policy-rc.d
created_policy=0
if [[ ! -e "${policy}" ]]; then
  printf '#!/bin/sh\nexit 101\n' | "${SUDO[@]}" tee "${policy}" >/dev/null
  "${SUDO[@]}" chmod +x "${policy}"
  created_policy=1
fi
rc=0
"${SUDO[@]}" apt-get install -y -q --no-install-recommends prometheus >&2 || rc=$?
if [[ ${created_policy} -eq 1 ]]; then "${SUDO[@]}" rm -f "${policy}"; fi
[[ ${rc} -eq 0 ]] || { log "ERROR: apt-get install prometheus failed (${rc})"; exit "${rc}"; }
if command -v systemctl >/dev/null 2>&1 && [[ -d /run/systemd/system ]]; then
  "${SUDO[@]}" systemctl disable --now prometheus >/dev/null 2>&1 || true
fi
command -v prometheus >/dev/null 2>&1 || { log "ERROR: prometheus still not on PATH"; exit 1; }
log "$(prometheus --version 2>&1 | head -n 1)"
