"""Live re-planning on real traffic: requests through the router -> the engines' own ``vllm:*``
histograms -> Prometheus -> the operator's re-planner -> the HPA floors.

The model is an 8B preset on H100s, planned for 1 request/s of 8,000-token prompts (one prefill
and one decode pod). The simulated prefill GPU is set close to what the planner predicts for that
prompt (10 ms + 40 us per token, about 330 ms against a predicted ~430 ms), so the latency
correction stays near 1 and what moves the floor is the load: a closed loop of long prompts drives
the observed rate far past the plan and the prefill floor rises; a single client brings it back
down, one replica per interval. Nothing in the test sets an engine metric or a replica count.
"""

from __future__ import annotations

import itertools
import time
from typing import Any

import pytest

from e2e.harness import Kubectl, OperatorProcess, wait_for
from e2e.metrics import MetricsStack
from e2e.serving import Load, RuntimeProcess, running_model, serve_floors

pytestmark = pytest.mark.e2e
MODEL = "rp"
SERVED_MODEL = "e2e/llama-8b"
PROMPT_TOKENS = 8000
OUTPUT_TOKENS = 20
INTERVAL_SECONDS = 15


def replan_model() -> dict[str, Any]:
    return running_model(
        MODEL,
        {
            "model": {"name": SERVED_MODEL, "preset": "llama-3.1-8b"},
            "mode": "disaggregated",
            "accelerator": {"type": "h100-sxm"},
            "workload": {
                "inputTokens": {"mean": PROMPT_TOKENS},
                "outputTokens": {"mean": OUTPUT_TOKENS},
                "requestRate": 1,
            },
            "slo": {"ttft": "1s", "itl": "50ms"},
            "prefill": {
                "replicas": {"min": 1, "max": 4},
                "parallelism": {"tensor": 1},
                "args": ["--max-num-seqs=64"],
                "env": [{"name": "DISAGG_SIM_ARGS", "value": "--prefill-overhead=10ms --prefill-time-per-token=40us"}],
            },
            "decode": {
                "replicas": {"min": 1, "max": 3},
                "parallelism": {"tensor": 1},
                "args": ["--max-num-seqs=64"],
                "env": [{"name": "DISAGG_SIM_ARGS", "value": "--kv-cache-transfer-time-per-token=5us"}],
            },
            "router": {"disaggThreshold": 256},
            "autoscaling": {"engine": "hpa", "scaleDownStabilization": "10s"},
            "planner": {"replan": {"enabled": True, "interval": f"{INTERVAL_SECONDS}s"}},
        },
    )


def replan_status(kubectl: Kubectl, namespace: str) -> dict[str, Any]:
    body = kubectl.get("disaggregatedmodel", MODEL, namespace)
    assert body is not None
    return dict((body.get("status") or {}).get("replan") or {})


def hpa_floor(kubectl: Kubectl, namespace: str, role: str) -> int:
    hpa = kubectl.get("hpa", f"{MODEL}-{role}", namespace)
    assert hpa is not None, f"HPA {MODEL}-{role} missing"
    return int(hpa["spec"]["minReplicas"])


def test_replan_reads_real_traffic_and_moves_the_floor_with_the_load(
    kubectl: Kubectl,
    scaling_operator: OperatorProcess,
    runtime: RuntimeProcess,
    metrics_stack: MetricsStack,
    namespace: str,
) -> None:
    kubectl.apply(replan_model(), namespace)
    url = serve_floors(kubectl, metrics_stack, namespace, MODEL, SERVED_MODEL, {"prefill": 1, "decode": 1, "router": 1})
    body = kubectl.get("disaggregatedmodel", MODEL, namespace)
    assert body is not None
    plan = body["status"]["plan"]
    assert plan["source"] == "planner", plan
    assert hpa_floor(kubectl, namespace, "prefill") == 1, "the spec's workload plans one prefill pod"

    # -- heavy: long prompts from a closed loop, many times the planned rate ----------------------
    started = time.time()
    with Load(url, SERVED_MODEL, concurrency=8, prompt_tokens=PROMPT_TOKENS, max_tokens=OUTPUT_TOKENS) as load:

        def raised() -> dict[str, Any] | None:
            record = replan_status(kubectl, namespace)
            rate = (record.get("observed") or {}).get("requestRate") or 0
            return record if rate > 2 and (record.get("prefillFloor") or 0) >= 2 else None

        record = wait_for("the prefill floor to rise with the load", raised, timeout=6 * INTERVAL_SECONDS + 60)
        summary = load.summary()
    assert not load.failures(), load.failures()[:3]
    observed = record["observed"]
    client_rate = summary["ok"] / max(time.time() - started, 1)
    print(f"heavy: client {summary} ({client_rate:.1f} req/s); replan {record}")
    # what the engines served, as Prometheus saw it: prompts of ~8,000 tokens, 20-token answers
    assert 0.8 * PROMPT_TOKENS <= observed["inputTokens"] <= 1.2 * PROMPT_TOKENS, observed
    assert observed["outputTokens"] == pytest.approx(OUTPUT_TOKENS, rel=0.1), observed
    # TTFT counts the remote prefill (~330 ms simulated), not only the decode pod's KV transfer
    assert observed["ttftMs"] >= 300, observed
    assert observed["itlMs"] > 0, observed
    floor = int(record["prefillFloor"])
    wait_for(
        f"the prefill HPA's minReplicas to follow the floor ({floor})",
        lambda: hpa_floor(kubectl, namespace, "prefill") >= 2 or None,
        timeout=30,
    )

    # -- light: one client; the floor comes down one replica per interval -------------------------
    seen: list[tuple[int, str]] = []
    # longer answers slow the single client to ~1 request/s, the rate the spec planned for
    with Load(url, SERVED_MODEL, concurrency=1, prompt_tokens=PROMPT_TOKENS, max_tokens=3 * OUTPUT_TOKENS) as light:

        def lowered() -> bool | None:
            current = replan_status(kubectl, namespace)
            entry = (int(current.get("prefillFloor") or 0), str(current.get("decision") or ""))
            if not seen or seen[-1] != entry:
                seen.append(entry)
            return entry[0] == 1 or None

        wait_for("the prefill floor to come back to 1", lowered, timeout=(floor + 3) * INTERVAL_SECONDS + 60)
    assert not light.failures(), light.failures()[:3]
    print(f"light: floors and decisions seen {seen}")
    floors = [f for f, _ in seen]
    # never more than one replica down per decision
    assert all(b >= a - 1 for a, b in itertools.pairwise(floors)), seen
    assert any("prefill floor 2 -> 1" in decision for _, decision in seen), seen
    wait_for("the prefill HPA's minReplicas at 1", lambda: hpa_floor(kubectl, namespace, "prefill") == 1, timeout=30)
