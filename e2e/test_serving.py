"""Requests served through what the operator renders, on pods that really run (e2e/runtime).

The router pod runs the real llm-d endpoint picker and the Envoy stand-in (e2e/runtime/envoy.py),
the decode pod the real llm-d routing sidecar in front of llm-d-inference-sim, the prefill pod
llm-d-inference-sim; all from the rendered args, env, volumes and probes, each pod in its own
network namespace. Requests go to the router Service's ClusterIP as a client in the cluster would.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from typing import Any

import pytest

from e2e.harness import Kubectl, OperatorProcess, wait_for
from e2e.serving import RuntimeProcess, engine_successes, prompt_of, ready_pods, router_address, running_model, send

pytestmark = pytest.mark.e2e
MODEL = "m"
THRESHOLD = 256
"""the router's disaggThreshold for these tests: uncached prompt tokens from which prefill runs remotely"""


def serving_spec(threshold: int = THRESHOLD) -> dict[str, Any]:
    return {
        "model": {"name": "e2e/fake-model"},
        "mode": "disaggregated",
        "prefill": {"replicas": {"min": 1, "max": 1}, "parallelism": {"tensor": 1}},
        "decode": {"replicas": {"min": 1, "max": 1}, "parallelism": {"tensor": 1}},
        "router": {"disaggThreshold": threshold},
    }


def cond(body: dict[str, Any], ctype: str) -> dict[str, Any]:
    return next((c for c in (body.get("status") or {}).get("conditions", []) if c["type"] == ctype), {})


def wait_model(kubectl: Kubectl, namespace: str, status: str, timeout: float = 120) -> dict[str, Any]:
    def probe() -> dict[str, Any] | None:
        body = kubectl.get("disaggregatedmodel", MODEL, namespace)
        return body if body and cond(body, "Ready").get("status") == status else None

    return wait_for(f"model Ready={status}", probe, timeout=timeout)


@pytest.fixture
def served(
    kubectl: Kubectl, operator: OperatorProcess, runtime: RuntimeProcess, namespace: str
) -> Iterator[tuple[str, str]]:
    kubectl.apply(running_model(MODEL, serving_spec()), namespace)
    wait_model(kubectl, namespace, "True", timeout=180)
    url = router_address(kubectl, namespace, MODEL)
    # the picker learns the engine pods from its own watch: wait until it routes
    wait_for("the router to answer", lambda: send(url, "e2e/fake-model", prompt="hi", max_tokens=2).ok, timeout=60)
    return namespace, url


def test_completions_and_chat_are_answered_and_long_prompts_go_through_prefill(
    kubectl: Kubectl, served: tuple[str, str]
) -> None:
    namespace, url = served
    model = "e2e/fake-model"
    before = {r: engine_successes(kubectl, namespace, MODEL, r) for r in ("prefill", "decode")}

    short = send(url, model, prompt=prompt_of(20, seed=1), max_tokens=8)
    assert short.ok, (short.status, short.text, short.error)
    assert short.text
    after_short = {r: engine_successes(kubectl, namespace, MODEL, r) for r in ("prefill", "decode")}
    assert after_short["decode"] == before["decode"] + 1
    assert after_short["prefill"] == before["prefill"], "a short prompt must be served by decode alone"

    long = send(url, model, prompt=prompt_of(4 * THRESHOLD, seed=2), max_tokens=8, chat=True)
    assert long.ok, (long.status, long.text, long.error)
    assert long.text
    after_long = {r: engine_successes(kubectl, namespace, MODEL, r) for r in ("prefill", "decode")}
    assert after_long["prefill"] == after_short["prefill"] + 1, "a prompt over the threshold must be prefilled remotely"
    assert after_long["decode"] == after_short["decode"] + 1

    # ignore_eos (vLLM's sampling extension): exactly 16 tokens, not a random shorter answer
    streamed = send(url, model, prompt=prompt_of(20, seed=3), max_tokens=16, stream=True, ignore_eos=True)
    assert streamed.ok
    assert streamed.ttft is not None
    assert len(streamed.itl) >= 3, "a streamed answer must reach the client token by token"
    plain = send(url, model, prompt=prompt_of(20, seed=4), max_tokens=4, stream=False, chat=True)
    assert plain.ok
    assert '"choices"' in plain.text


def test_threshold_change_reaches_the_running_picker(
    kubectl: Kubectl, runtime: RuntimeProcess, served: tuple[str, str]
) -> None:
    namespace, url = served
    model = "e2e/fake-model"
    prompt_tokens = 4 * THRESHOLD
    before = engine_successes(kubectl, namespace, MODEL, "prefill")
    assert send(url, model, prompt=prompt_of(prompt_tokens, seed=10), max_tokens=4).ok
    assert engine_successes(kubectl, namespace, MODEL, "prefill") == before + 1

    old_routers = {p["metadata"]["name"] for p in ready_pods(kubectl, namespace, "router", MODEL)}
    kubectl.run(
        "patch", "disaggregatedmodel", MODEL, "-n", namespace, "--type=merge",
        "-p", f'{{"spec":{{"router":{{"disaggThreshold":{16 * THRESHOLD}}}}}}}',
    )  # fmt: skip

    def rolled() -> bool:
        pods = ready_pods(kubectl, namespace, "router", MODEL)
        names = {p["metadata"]["name"] for p in pods}
        all_pods = kubectl.items("pods", namespace, f"disagg.dev/model={MODEL},disagg.dev/role=router")
        return bool(names) and not names & old_routers and len(all_pods) == len(pods)

    wait_for("the router to roll to the new config", rolled, timeout=120)
    (new_router,) = ready_pods(kubectl, namespace, "router", MODEL)
    mounted = runtime.pod_dir(namespace, new_router["metadata"]["name"]) / "volumes" / "config" / "config.yaml"
    assert f"nonCachedTokens: {16 * THRESHOLD}" in mounted.read_text()
    wait_for("the new router to answer", lambda: send(url, model, prompt="hi", max_tokens=2).ok, timeout=60)
    middle = engine_successes(kubectl, namespace, MODEL, "prefill")
    assert send(url, model, prompt=prompt_of(prompt_tokens, seed=11), max_tokens=4).ok
    assert engine_successes(kubectl, namespace, MODEL, "prefill") == middle, "now under the threshold"


def test_killed_engine_makes_its_pod_not_ready_and_the_model_not_ready_then_recovers(
    kubectl: Kubectl, runtime: RuntimeProcess, served: tuple[str, str]
) -> None:
    namespace, url = served
    (decode,) = ready_pods(kubectl, namespace, "decode", MODEL)
    name = decode["metadata"]["name"]
    os.kill(runtime.container_pid(namespace, name, "vllm"), signal.SIGKILL)
    killed = time.time()

    def pod_not_ready() -> bool:
        return not ready_pods(kubectl, namespace, "decode", MODEL)

    wait_for("the decode pod to be NotReady", pod_not_ready, timeout=30)
    body = wait_model(kubectl, namespace, "False", timeout=60)
    ready = cond(body, "Ready")
    assert ready["reason"] == "CrashLoopBackOff", ready
    assert name in ready["message"], ready
    assert "container vllm" in ready["message"], ready
    print(f"\nkilled engine -> model Ready=False in {time.time() - killed:.1f}s: {ready['message']}")

    wait_model(kubectl, namespace, "True", timeout=90)
    pod = kubectl.get("pod", name, namespace)
    assert pod is not None, "the pod itself was restarted in place, not replaced"
    status = next(c for c in pod["status"]["containerStatuses"] if c["name"] == "vllm")
    assert status["restartCount"] == 1
    assert status["ready"]
    assert status["lastState"]["terminated"]["exitCode"] == 137
    assert send(url, "e2e/fake-model", prompt="hello again", max_tokens=4).ok
