"""vLLM's own ``vllm serve`` argument checks, as a small server the e2e runtime asks on every engine start.

Importing vLLM takes seconds (torch, transformers, ...), far too long for every container start,
so one long-lived process imports it once (``serve``) and answers over a Unix socket; the client
(``check``) is stdlib only and runs under any Python, e.g. inside an engine container.

Protocol: one request per connection. The client sends one JSON object, ``{"args": [...]}`` (the
arguments after ``vllm serve``: the model first), then a newline (or shuts down its writing
side); the server answers one JSON object and a newline and closes the connection:
``{"ok": true|false, "stage": "...", "error": "..."}`` where ``stage`` is where the check stopped
(``parse``, ``validate``, ``engine_args``, ``kv_cache_dtype``, ``quantization``; ``done`` when
accepted; ``request`` for a malformed request) and ``error`` is vLLM's message.

What is checked, all with vLLM's unmodified code (the server needs the ``vllm-parser`` venv of
e2e/tools.sh; nothing of vLLM is patched or stubbed):

1. the parser as ``vllm serve`` builds it: a top-level ``FlexibleArgumentParser``, its
   subparsers and ``ServeSubcommand.subparser_init``; ``["serve", *args]`` is parsed and
   argparse's error text is kept;
2. ``ServeSubcommand.validate``;
3. ``args.model = args.model_tag`` (as ``ServeSubcommand.cmd`` does) and
   ``AsyncEngineArgs.from_cli_args`` (the engine-args dataclass and its ``__post_init__``);
4. two checks vLLM makes later, in ``create_engine_config``, which needs the model's config and
   cannot run here: the KV-cache dtype through ``vllm.config.CacheConfig(cache_dtype=...)``, and
   the quantization method against ``QUANTIZATION_METHODS`` (and the deprecated ones) of
   ``vllm.model_executor.layers.quantization``, as ``ModelConfig._verify_quantization`` does.
   Whether the platform (a GPU) supports the method is not checked.

Command line (both need the vllm-parser venv's python; PYTHONPATH = the checkout)::

    python -m e2e.runtime.vllm_args --serve SOCKET [--ready-file FILE]
    python -m e2e.runtime.vllm_args --check MODEL [ARG...]   # one-shot, exit 0 accepted / 1 rejected
    python -m e2e.runtime.vllm_args --check-self             # tools.sh: one good and one bad argv
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import socket
import socketserver
import sys
import threading
from typing import Any

# The runtime bind-mounts the socket's directory here inside engine containers.
DEFAULT_SOCKET = "/run/disagg-vllm/parser.sock"
CLIENT_TIMEOUT = 30.0  # a check takes milliseconds; this only bounds a hung server
MAX_REQUEST = 1 << 20

# --check-self: an argv vLLM accepts and one it must refuse
SELF_GOOD = ["example/model", "--dtype=bfloat16", "--tensor-parallel-size=2", "--kv-cache-dtype=fp8"]
SELF_BAD = ["example/model", "--dtype=bf17"]


# ---------------------------------------------------------------------------------------------
# client: stdlib only


def check(args: list[str], socket_path: str = DEFAULT_SOCKET) -> str | None:
    """None when vLLM accepts ``vllm serve ARGS``, else vLLM's message (also when it cannot be asked)."""
    if not os.path.exists(socket_path):
        return (
            f"the vLLM argument parser server is not running (no socket {socket_path}); "
            "start it with `python -m e2e.runtime.vllm_args --serve SOCKET` under the vllm-parser "
            "python of e2e/tools.sh"
        )
    request = json.dumps({"args": [str(arg) for arg in args]}).encode() + b"\n"
    chunks: list[bytes] = []
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
            conn.settimeout(CLIENT_TIMEOUT)
            conn.connect(socket_path)
            conn.sendall(request)
            conn.shutdown(socket.SHUT_WR)
            while chunk := conn.recv(65536):
                chunks.append(chunk)
        reply = json.loads(b"".join(chunks))
    except (OSError, ValueError) as exc:
        return f"the vLLM argument parser server at {socket_path} did not answer: {exc}"
    if reply.get("ok"):
        return None
    return f"{reply.get('error') or 'rejected'} (vLLM {reply.get('stage', '?')} check)"


# ---------------------------------------------------------------------------------------------
# server side: imports vLLM (the vllm-parser venv)


def _quiet_stdout() -> io.TextIOWrapper:
    """Send fd 1 (where vLLM logs by default) to stderr; return a stream on the original stdout."""
    sys.stdout.flush()
    real = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    return real


def _argparse_message(text: str) -> str:
    """The ``error:`` part of argparse's usage + error output."""
    lines = [line for line in text.strip().splitlines() if line.strip()]
    for index, line in enumerate(lines):
        if ": error: " in line:
            return "\n".join([line.split(": error: ", 1)[1], *lines[index + 1 :]])
    return lines[-1] if lines else "argparse exited"


def _exception_message(exc: BaseException) -> str:
    errors = getattr(exc, "errors", None)
    if callable(errors) and type(exc).__name__ == "ValidationError":  # pydantic: keep vLLM's text
        with contextlib.suppress(Exception):
            return "; ".join(str(error.get("msg", error)) for error in errors())
    return f"{type(exc).__name__}: {exc}"


class Checker:
    """vLLM imported once; ``run`` checks one argv (serialised: argparse writes to sys.stderr)."""

    def __init__(self) -> None:
        for key, value in (("VLLM_TARGET_DEVICE", "cpu"), ("VLLM_NO_USAGE_STATS", "1"), ("DO_NOT_TRACK", "1")):
            os.environ.setdefault(key, value)
        from vllm.config import CacheConfig
        from vllm.engine.arg_utils import AsyncEngineArgs
        from vllm.entrypoints.cli.serve import ServeSubcommand
        from vllm.model_executor.layers import quantization
        from vllm.utils.argparse_utils import FlexibleArgumentParser

        self._cache_config = CacheConfig
        self._engine_args = AsyncEngineArgs
        self._serve = ServeSubcommand
        self._quantization = quantization
        self._parser_class = FlexibleArgumentParser
        self._lock = threading.Lock()

    def run(self, args: list[str]) -> dict[str, Any]:
        with self._lock:
            return self._run(args)

    def _run(self, args: list[str]) -> dict[str, Any]:
        # a fresh parser per check, as each `vllm serve` process builds its own
        command = self._serve()
        parser = self._parser_class(prog="vllm", description="vLLM CLI")  # prog: as the `vllm` script
        subparsers = parser.add_subparsers(required=False, dest="subparser")
        command.subparser_init(subparsers).set_defaults(dispatch_function=command.cmd)
        stage = "parse"
        captured = io.StringIO()
        try:
            with contextlib.redirect_stderr(captured), contextlib.redirect_stdout(captured):
                parsed = parser.parse_args(["serve", *args])
            stage = "validate"
            command.validate(parsed)
            stage = "engine_args"
            if getattr(parsed, "model_tag", None) is not None:
                parsed.model = parsed.model_tag
            engine_args = self._engine_args.from_cli_args(parsed)
            stage = "kv_cache_dtype"
            self._cache_config(cache_dtype=engine_args.kv_cache_dtype)
            stage = "quantization"
            error = self._quantization_error(engine_args)
            if error:
                return {"ok": False, "stage": stage, "error": error}
        except SystemExit as exc:
            message = _argparse_message(captured.getvalue()) if exc.code else "exited without an error (--help?)"
            return {"ok": False, "stage": stage, "error": message}
        except Exception as exc:  # vLLM raises ValueError, TypeError, pydantic errors, ...
            return {"ok": False, "stage": stage, "error": _exception_message(exc)}
        finally:
            sys.stderr.write(captured.getvalue())
        return {"ok": True, "stage": "done", "error": ""}

    def _quantization_error(self, engine_args: Any) -> str | None:
        """The name checks of ``ModelConfig._verify_quantization`` that need no model config."""
        method = engine_args.quantization
        if method is None:
            return None
        known = self._quantization.QUANTIZATION_METHODS
        if method not in known:
            return f"Unknown quantization method: {method}. Must be one of {known}."
        deprecated = self._quantization.DEPRECATED_QUANTIZATION_METHODS
        if method in deprecated and not engine_args.allow_deprecated_quantization:
            return (
                f"The quantization method {method} is deprecated and will be removed in future versions "
                "of vLLM. To bypass, set `--allow-deprecated-quantization`."
            )
        return None


class _Handler(socketserver.StreamRequestHandler):
    server: _Server

    def handle(self) -> None:
        try:
            line = self.rfile.readline(MAX_REQUEST)
            request = json.loads(line)
            args = request["args"]
            if not isinstance(args, list) or not all(isinstance(arg, str) for arg in args):
                raise TypeError("args must be a list of strings")
        except (ValueError, KeyError, TypeError) as exc:
            reply: dict[str, Any] = {"ok": False, "stage": "request", "error": f"bad request: {exc}"}
        else:
            reply = self.server.checker.run(args)
            verdict = "ok" if reply["ok"] else f"rejected ({reply['stage']}): {reply['error']}"
            print(f"vllm-args: {' '.join(args)} -> {verdict}", file=sys.stderr, flush=True)
        with contextlib.suppress(OSError):
            self.wfile.write(json.dumps(reply).encode() + b"\n")


class _Server(socketserver.ThreadingUnixStreamServer):
    daemon_threads = True

    def __init__(self, path: str, checker: Checker) -> None:
        self.checker = checker
        super().__init__(path, _Handler)


def serve(socket_path: str, ready_file: str | None = None) -> None:
    """Import vLLM, listen on ``socket_path`` (mode 0666) until SIGTERM / SIGINT."""
    import signal

    real_stdout = _quiet_stdout()
    checker = Checker()
    os.makedirs(os.path.dirname(os.path.abspath(socket_path)), exist_ok=True)
    with contextlib.suppress(FileNotFoundError):
        os.unlink(socket_path)  # a stale socket of an earlier server
    server = _Server(socket_path, checker)
    os.chmod(socket_path, 0o666)  # engine containers may run as another user

    def stop(signum: int, _frame: object) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, stop)
    try:
        if ready_file:
            tmp = f"{ready_file}.tmp"
            with open(tmp, "w") as out:
                out.write(f"{os.getpid()} {socket_path}\n")
            os.replace(tmp, ready_file)
        real_stdout.write(f"vllm-args: listening on {socket_path}\n")
        real_stdout.flush()
        server.serve_forever(poll_interval=0.5)
    except (KeyboardInterrupt, SystemExit):
        pass  # stopped
    finally:
        server.server_close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(socket_path)
        if ready_file:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(ready_file)


def _one_shot(args: list[str]) -> int:
    real_stdout = _quiet_stdout()
    result = Checker().run(args)
    real_stdout.write(json.dumps(result) + "\n")
    return 0 if result["ok"] else 1


def _self_check() -> int:
    real_stdout = _quiet_stdout()
    checker = Checker()
    good, bad = checker.run(SELF_GOOD), checker.run(SELF_BAD)
    real_stdout.write(json.dumps({"accepted": good, "rejected": bad}) + "\n")
    if not good["ok"]:
        print(f"vllm-args: vLLM refused a valid argv {SELF_GOOD}: {good['error']}", file=sys.stderr)
        return 1
    if bad["ok"] or bad["stage"] != "parse":
        print(f"vllm-args: vLLM's parser accepted an invalid argv {SELF_BAD}", file=sys.stderr)
        return 1
    return 0


def main(argv: list[str]) -> int:
    usage = "usage: python -m e2e.runtime.vllm_args --serve SOCKET [--ready-file FILE] | --check ARG... | --check-self"
    if argv[:1] == ["--check"]:
        return _one_shot(argv[1:])
    if argv == ["--check-self"]:
        return _self_check()
    if argv[:1] == ["--serve"] and len(argv) in (2, 4) and (len(argv) == 2 or argv[2] == "--ready-file"):
        serve(argv[1], argv[3] if len(argv) == 4 else None)
        return 0
    print(usage, file=sys.stderr)
    return 2


if __name__ == "__main__":
    code = main(sys.argv[1:])
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)  # skip the interpreter teardown of torch / vLLM (seconds); all output is flushed
