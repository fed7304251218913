"""The upstream releases the operator renders for: the one place their versions are pinned.

Everything the render writes for another project (flags, plugin names, config apiVersions,
metric names) is for exactly these releases and is proven against their real programs by the
test suite (``e2e/test_router_programs.py`` runs llm-d's ``epp`` and ``pd-sidecar``). The e2e
tool chain builds or unpacks the same llm-d release (``LLMD_ROUTER_VERSION`` in
``e2e/versions.env``; a unit test keeps the two equal).
"""

from __future__ import annotations

LLMD_ROUTER_VERSION = "v0.10.0"
"""llm-d router release (github.com/llm-d/llm-d-router): the endpoint picker and the P/D sidecar."""

ENVOY_VERSION = "v1.33.2"
"""Envoy release of the router pod's HTTP front (ext_proc to the endpoint picker)."""

VLLM_VERSION = "0.33.0"
"""vLLM release whose flags and metric names the render and the queries use."""

LLMD_ROUTER_IMAGE = f"ghcr.io/llm-d/llm-d-router-endpoint-picker:{LLMD_ROUTER_VERSION}"
LLMD_SIDECAR_IMAGE = f"ghcr.io/llm-d/llm-d-router-disagg-sidecar:{LLMD_ROUTER_VERSION}"
ENVOY_IMAGE = f"docker.io/envoyproxy/envoy:distroless-{ENVOY_VERSION}"
VLLM_IMAGE = f"docker.io/vllm/vllm-openai:v{VLLM_VERSION}"
