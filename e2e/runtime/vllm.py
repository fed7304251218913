"""``vllm serve`` played by llm-d-inference-sim: ``python -m e2e.runtime.vllm serve MODEL [ARGS]``.

The arguments the operator rendered are first checked by vLLM's own parser (``vllm_args``), so a
flag or value real vLLM would refuse fails the container here too; then they are translated to
the simulator's flags. Kept as they are (the simulator has the same flag): ``--port``,
``--served-model-name``, ``--max-num-seqs``, ``--max-model-len``, ``--block-size``,
``--data-parallel-size``. The model becomes ``--model``. Dropped, because they only shape how a
GPU runs the model: tensor parallelism, dtype, quantization, KV-cache dtype, the KV-transfer
connector (the simulator serves the P/D protocol, ``kv_transfer_params``, without one),
shutdown timeout. How fast the simulated GPU is comes from ``DISAGG_SIM_ARGS`` in the container's
env (simulator flags, e.g. ``--time-to-first-token=20ms``), so a test sets it through the
model's ``engine.env``, and from the defaults below.
"""

from __future__ import annotations

import os
import shlex
import socket
import sys

from e2e.runtime import vllm_args

SIM = "/usr/local/bin/llm-d-inference-sim"
SAME_FLAGS = {"port", "served-model-name", "max-num-seqs", "max-model-len", "block-size", "data-parallel-size"}
DEFAULTS = [
    "--force-dummy-tokenizer",  # never look a tokenizer up on a model hub
    "--max-model-len=32768",  # vLLM takes the checkpoint's context length; the simulator's default is 1024
    "--enable-kvcache",
    "--kv-cache-size=1024",
    # prefill time grows with the prompt (overhead + per token), as on a GPU; no fixed TTFT
    "--prefill-overhead=10ms",
    "--prefill-time-per-token=100us",
    "--inter-token-latency=8ms",
    "--kv-cache-transfer-time-per-token=20us",
]


def translate(args: list[str]) -> list[str]:
    """vLLM serve args (after ``serve``) -> simulator args."""
    out: list[str] = []
    model: str | None = None
    index = 0
    while index < len(args):
        arg = args[index]
        index += 1
        if not arg.startswith("-"):
            if model is None:
                model = arg
            continue
        name, has_value, value = arg[2:].partition("=")
        if not has_value and index < len(args) and not args[index].startswith("-"):
            value, index = args[index], index + 1
        if name == "model":
            model = value
        elif name in SAME_FLAGS:
            out.append(f"--{name}={value}")
    if model is None:
        raise SystemExit("vllm serve: no model given")
    return [f"--model={model}", *out]


def own_address() -> str:
    """The pod IP, as the simulator's KV-cache events need it (``POD_IP``); vLLM finds it the same way."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.connect(("10.96.0.1", 443))  # no packet is sent: this only picks the route's source address
        return str(probe.getsockname()[0])


def main(argv: list[str]) -> int:
    if not argv or argv[0] != "serve":
        print(f"vllm: only `vllm serve` is played here, not {argv[:1]}", file=sys.stderr)
        return 2
    error = vllm_args.check(argv[1:])
    if error:
        print(f"vllm: {error}", file=sys.stderr, flush=True)
        return 2
    # later flags win: the defaults, then what the operator rendered, then the test's speed knobs
    sim_args = [*DEFAULTS, *translate(argv[1:]), *shlex.split(os.environ.get("DISAGG_SIM_ARGS", ""))]
    env = {**os.environ, "POD_IP": os.environ.get("POD_IP") or own_address()}
    print(f"vllm serve -> llm-d-inference-sim {' '.join(sim_args)}", file=sys.stderr, flush=True)
    os.execve(SIM, [SIM, *sim_args], env)
    return 0  # not reached


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
