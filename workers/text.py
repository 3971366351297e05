"""Text worker: the upstream ``mlx_lm.server`` engine, served on the worker's Unix socket.

``mlx_lm.server`` already does the hard parts (continuous batching, prompt caching, chat templates,
tool calls, reasoning, logprobs, SSE), so this module runs its ``ModelProvider``,
``ResponseGenerator`` and ``APIHandler`` as they are and only fixes what a worker needs
(see shared notes, "mlx_lm.server"):

* torch is hidden before mlx_lm is imported (0.7 s instead of 1.9 s, ~90 MB instead of ~580 MB);
* HTTP is served on a Unix socket with a listen backlog of 1024 (the stock TCP server's backlog
  of 5 resets connections when 16 clients arrive together);
* "ready" means the weights are loaded and one real ``max_tokens=1`` chat request went through
  the socket (the stock server answers /health before its model is loaded);
* requests can never load other weights: every request is served by the model of
  ``--model-path`` whatever its ``model``, ``adapters`` or ``draft_model`` say, and image parts
  must be ``data:`` URLs (the engine would fetch http(s) URLs);
* errors use the OpenAI body ``{"error": {"message", "type", "param", "code"}}``;
* SIGTERM stops accepting, stops the generation thread and exits 0 within a bound; a stream cut
  this way ends without ``data: [DONE]``, which is how clients tell truncation from completion.

Endpoints: ``POST /v1/chat/completions`` (and ``/chat/completions``), ``POST /v1/completions``,
``GET /v1/models``, ``GET /health``. Responses are HTTP/1.0 with ``Connection: close``.
"""

from __future__ import annotations

import argparse
import http.client
import json
import logging
import os
import select
import signal
import socket
import socketserver
import sys
import threading
import time
from types import ModuleType
from typing import Any

from mlx_serve_workers.common import (
    STARTED_AT,
    StatusChannel,
    WorkerArgs,
    error_body,
    fail_and_exit,
    hide_torch,
    memory_report,
    parse_args,
    unlink_stale_socket,
    watch_parent,
)
from mlx_serve_workers.options import resolve

# The options table (workers/options.py) uses mlx_lm.server's own defaults: an option left out
# of models.yaml keeps the engine's default.
# Bounds the engine does not check itself (0 concurrency or step size hangs the first request).
_RANGES: dict[str, tuple[float | None, float | None]] = {
    "max_tokens": (1, None), "decode_concurrency": (1, None), "prompt_concurrency": (1, None),
    "prefill_step_size": (1, None), "num_draft_tokens": (1, None), "prompt_cache_size": (0, None),
    "prompt_cache_bytes": (0, None), "quantized_kv_start": (0, None), "top_k": (0, None),
    "kv_bits": (1, 8), "kv_group_size": (1, None), "temperature": (0, None), "top_p": (0, 1), "min_p": (0, 1),
}

# Options whose mlx_lm.server flag is not simply --<name-with-dashes>.
_FLAGS = {"temperature": "--temp"}

SHUTDOWN_TIMEOUT_S = 5.0  # after SIGTERM, exit no later than this even if the engine is stuck
WARMUP_TIMEOUT_S = 300.0  # the first request may compile kernels (Metal, CUDA)
SERVE_POLL_S = 0.05  # serve_forever's shutdown poll interval (the default 0.5 s slows SIGTERM)

log = logging.getLogger("mlx_serve_workers.text")


def check_options(options: dict[str, Any]) -> None:
    """Raise ValueError naming the first unknown, mistyped or out-of-range option."""
    resolve("text", options)
    for name, value in options.items():
        low, high = _RANGES.get(name, (None, None))
        if value is None:
            continue
        if (low is not None and value < low) or (high is not None and value > high):
            bounds = f"at least {low}" if high is None else f"between {low} and {high}"
            raise ValueError(f"option {name!r} must be {bounds}, got {value!r}")


def engine_argv(model_path: str, options: dict[str, Any]) -> list[str]:
    """The ``mlx_lm.server`` command line equivalent to ``--model-path`` and the options."""
    # WARNING: at INFO the engine logs prompt progress and cache stats for every request.
    argv = ["--model", model_path, "--log-level", "WARNING"]
    for name, value in options.items():
        if value is None:
            continue
        flag = _FLAGS.get(name, "--" + name.replace("_", "-"))
        if isinstance(value, bool):
            if value:
                argv.append(flag)  # store_true flags
        elif isinstance(value, dict):
            argv += [flag, json.dumps(value)]
        else:
            argv += [flag, str(value)]
    return argv


class _Captured(Exception):
    def __init__(self, cli_args: argparse.Namespace) -> None:
        super().__init__("captured")
        self.cli_args = cli_args


def engine_args(lm: ModuleType, argv: list[str]) -> argparse.Namespace:
    """Parse ``argv`` with mlx_lm.server's own parser, by running its ``main()`` up to ``run()``.

    The parser is local to ``main()``, and ModelProvider/ResponseGenerator read many attributes
    of the namespace (new releases add more). A hand-built namespace would break on the first
    new attribute; the real parser always has every default, type and converter (JSON for
    chat_template_args, sizes for prompt_cache_bytes). ``main()`` also sets up logging and, on
    Apple silicon, the wired memory limit, exactly as the stock server does. ``run`` is replaced
    for the call so that nothing is served, and a missing capture is an error, never a fallback.
    """
    def capture(host: str, port: int, model_provider: Any, *args: Any, **kwargs: Any) -> None:
        raise _Captured(model_provider.cli_args)

    saved_run, saved_argv = lm.run, sys.argv
    lm.run, sys.argv = capture, ["mlx_lm.server", *argv]
    # stderr is not redirected: main()'s logging.basicConfig binds the engine's log handler
    # to whatever sys.stderr is now. argparse prints its complaint there (the worker log).
    try:
        lm.main()
    except _Captured as captured:
        return captured.cli_args
    except SystemExit:
        raise ValueError(f"mlx_lm.server rejected its arguments {argv} (see the log above)") from None
    finally:
        lm.run, sys.argv = saved_run, saved_argv
    raise RuntimeError("mlx_lm.server.main() returned without calling run(); "
                       "this mlx-lm version is not supported by workers/text.py")


class UnixHTTPServer(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    """``ThreadingHTTPServer`` on a Unix socket (the stock server is TCP only)."""

    daemon_threads = True
    block_on_close = False
    request_queue_size = 1024  # the default 5 resets connections under a burst of clients
    stopping = False

    def server_bind(self) -> None:
        super().server_bind()
        # HTTPServer.server_bind sets these from a (host, port) address, which AF_UNIX lacks.
        self.server_name = "localhost"
        self.server_port = 0

    def handle_error(self, request: Any, client_address: Any) -> None:
        exc = sys.exc_info()[1]
        # A client that hangs up mid-stream, or a stream cut by shutdown, is not worth a traceback.
        if isinstance(exc, (BrokenPipeError, ConnectionResetError)) or self.stopping:
            return
        super().handle_error(request, client_address)


class _ErrorWriter:
    """The handler's ``wfile``: rewrites the engine's error responses into OpenAI error bodies.

    mlx_lm.server answers errors with ``{"error": "<text>"}`` (or plain ``Not Found``), and
    reports every failure of the generation step, bad input included, as 404. The handler
    defers the status line and headers of an error (``_set_completion_headers`` with a code
    >= 400) and this writer turns the body that follows into the right status and body.
    """

    def __init__(self, handler: Any, raw: Any) -> None:
        self._handler = handler
        self._raw = raw

    def write(self, data: bytes) -> int:
        if self._handler.pending_error is None:
            return self._raw.write(data)
        self._handler.send_openai_error(data)
        return len(data)

    def flush(self) -> None:
        self._raw.flush()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._raw, name)


def _error_message(data: bytes) -> str:
    text = data.decode("utf-8", "replace")
    try:
        body = json.loads(text)
    except ValueError:
        return text
    if isinstance(body, dict) and isinstance(body.get("error"), str):
        return body["error"]
    return text


def _check_stop(stop: Any) -> None:
    # The engine tokenizes stop words in its generation thread, where a non-string kills it.
    if stop is None or isinstance(stop, str):
        return
    if not isinstance(stop, list) or not all(isinstance(s, str) for s in stop):
        raise ValueError("stop must be a string or a list of strings")


def _check_images(messages: Any) -> None:
    # The engine downloads http(s) image URLs; a worker must not reach out (or read files).
    if not isinstance(messages, list):
        return
    for message in messages:
        content = message.get("content") if isinstance(message, dict) else None
        if not isinstance(content, list):
            continue
        for part in content:
            if not isinstance(part, dict) or part.get("type") not in ("image_url", "input_image", "image"):
                continue
            url = part.get("image_url", part.get("image"))
            url = url.get("url") if isinstance(url, dict) else url
            if not isinstance(url, str) or not url.startswith("data:"):
                raise ValueError("image parts must carry a data: URL; this server does not fetch URLs or read files")


def _peer_closed(conn: socket.socket) -> bool:
    """True once the client has hung up (readable with nothing to read: an HTTP/1.0 client
    sends nothing after its request)."""
    try:
        readable, _, _ = select.select([conn], [], [], 0)
        return bool(readable) and conn.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) == b""
    except (BlockingIOError, InterruptedError):
        return False
    except OSError:
        return True


class _DisconnectAware:
    """The engine's ResponseGenerator as one handler sees it: stops a request whose client left.

    A stream notices a departed client when its next write fails, but a non-streaming request
    only writes at the end, so it would keep decoding up to max_tokens for nobody. Raising
    here makes ``handle_completion`` run its ``ctx.stop()``, which drops the request from the
    batch.
    """

    CHECK_EVERY = 8  # tokens between checks (a select() costs microseconds)

    def __init__(self, generator: Any, conn: socket.socket) -> None:
        self._generator = generator
        self._conn = conn

    def generate(self, request: Any, args: Any, progress_callback: Any = None) -> tuple[Any, Any]:
        ctx, responses = self._generator.generate(request, args, progress_callback=progress_callback)
        return ctx, self._watch(responses)

    def _watch(self, responses: Any) -> Any:
        for i, response in enumerate(responses, 1):
            if i % self.CHECK_EVERY == 0 and _peer_closed(self._conn):
                raise ConnectionResetError("client disconnected")
            yield response

    def __getattr__(self, name: str) -> Any:
        return getattr(self._generator, name)


def _vocab_size(model: Any) -> int | None:
    """Rows of the model's logits (mlx_lm models keep their config as ``model.args``)."""
    size = getattr(getattr(model, "args", None), "vocab_size", None)
    return size if isinstance(size, int) else None


def make_handler_class(lm: ModuleType, served_name: str, vocab_size: int | None,
                       max_tokens_cap: int | None) -> type:
    """An ``APIHandler`` subclass pinned to the loaded model, with OpenAI errors and our /health."""

    completion_paths = ("/v1/completions", "/v1/chat/completions", "/chat/completions")
    in_flight = [0]
    in_flight_lock = threading.Lock()

    class Handler(lm.APIHandler):
        pending_error: int | None = None

        def setup(self) -> None:
            super().setup()
            self.wfile = _ErrorWriter(self, self.wfile)
            self.response_generator = _DisconnectAware(self.response_generator, self.connection)

        def address_string(self) -> str:
            return "unix"  # client_address is '' on AF_UNIX; the default would raise

        def log_request(self, code: Any = "-", size: Any = "-") -> None:
            pass  # the router logs requests; the engine logs its own warnings and errors

        # ----- errors

        def _set_completion_headers(self, status_code: int = 200) -> None:
            if status_code >= 400:
                self.pending_error = status_code  # sent with its body by send_openai_error
                return
            super()._set_completion_headers(status_code)

        def end_headers(self) -> None:
            if self.pending_error is None:
                super().end_headers()

        def send_openai_error(self, data: bytes) -> None:
            status, self.pending_error = self.pending_error or 500, None
            message = _error_message(data)
            if status == 404 and self.command == "POST" and self.path in completion_paths:
                # The engine reports any failure of the generation step as 404: the request
                # was bad (template, content, prompt) unless the generation thread is gone.
                status = 503 if "generation thread died" in message else 400
            if status == 404:
                body = error_body(f"{self.command} {self.path}: not found", "not_found_error", code="not_found")
            elif status >= 500:
                body = error_body(message, "server_error", code="engine_unavailable" if status == 503 else None)
            else:
                body = error_body(message, "invalid_request_error")
            payload = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            self._set_cors_headers()
            self.end_headers()
            self.wfile.write(payload)
            self.wfile.flush()

        # ----- requests

        def validate_model_parameters(self) -> None:
            # Pin the model: whatever the request names, the loaded weights serve it (the
            # provider below is pinned too). The response echoes the served model's name.
            self.requested_model = served_name
            self.requested_draft_model = "default_model"
            self.adapter = None
            super().validate_model_parameters()
            if max_tokens_cap is not None and self.max_tokens > max_tokens_cap:
                self.max_tokens = max_tokens_cap
            _check_stop(self.body.get("stop"))
            if self.stream_options is not None:
                # The engine reads stream_options["include_usage"] after the last token: a missing
                # key (OpenAI makes it optional) or a non-object would cut the stream short.
                if not isinstance(self.stream_options, dict):
                    raise ValueError("stream_options must be an object such as {\"include_usage\": true}")
                self.stream_options = {"include_usage": False, **self.stream_options}
            # Out-of-range ids wrap around on CPU and are undefined behaviour on a GPU.
            if self.logit_bias and vocab_size and not all(0 <= t < vocab_size for t in self.logit_bias):
                raise ValueError(f"logit_bias token ids must be in [0, {vocab_size})")
            if self.seed is not None and not 0 <= self.seed < 2**64:
                raise ValueError("seed must be in [0, 2**64)")  # mx.random.seed takes a uint64
            if self.path != "/v1/completions":
                _check_images(self.body.get("messages"))

        def handle_completion(self, request: Any, stop_words: list[str]) -> None:
            try:
                super().handle_completion(request, stop_words)
            except (BrokenPipeError, ConnectionResetError):
                raise
            except Exception as exc:
                if getattr(self.server, "stopping", False):
                    raise  # shutdown cut it: end the stream without [DONE] and say nothing
                log.exception("request failed during generation")
                message = f"generation failed: {type(exc).__name__}: {exc}"
                if getattr(self, "_headers_buffer", None):
                    # Non-streaming: the 200 status line is still buffered, so it can become an error.
                    self._headers_buffer = []
                    self.pending_error = 500
                    self.send_openai_error(json.dumps({"error": message}).encode())
                elif self.stream:
                    # Headers are out; OpenAI streams report a late error as an event. No [DONE].
                    body = error_body(message, "server_error")
                    self.wfile.write(f"data: {json.dumps(body)}\n\n".encode())

        def do_POST(self) -> None:
            with in_flight_lock:
                in_flight[0] += 1
            try:
                super().do_POST()
            finally:
                with in_flight_lock:
                    in_flight[0] -= 1

        def do_GET(self) -> None:
            if self.path == "/health":
                self._send_json(*self._health())
            elif self.path.rstrip("/") == "/v1/models" or self.path.startswith("/v1/models/"):
                # Only the loaded model can be served; the stock answer lists the HF cache
                # (and sends an empty body when that cache directory does not exist).
                self._send_json(200, {"object": "list", "data": [
                    {"id": served_name, "object": "model", "created": self.created, "owned_by": "mlx-serve"}]})
            else:
                super().do_GET()

        def _health(self) -> tuple[int, dict[str, Any]]:
            if not self.response_generator.is_healthy:
                return 503, {"status": "unavailable", "memory": memory_report(),
                             "error": "generation thread died"}
            return 200, {"status": "ok", "memory": memory_report(), "model": served_name,
                         "requests_in_flight": in_flight[0]}

        def _send_json(self, status: int, body: dict[str, Any]) -> None:
            payload = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

    return Handler


def make_generator_class(lm: ModuleType) -> type:
    """A ``ResponseGenerator`` that keeps the exception that killed its generation thread."""

    class Generator(lm.ResponseGenerator):
        error: BaseException | None = None

        def _generate(self) -> None:
            try:
                super()._generate()
            except BaseException as exc:
                self.error = exc  # the stock thread only logs it; start failures quote it
                raise

        def _tokenize(self, tokenizer: Any, request: Any, args: Any) -> Any:
            # An empty prompt ("" with a tokenizer that adds no BOS) makes the batch generator raise
            # inside the generation thread, which kills the worker. Raised here, it fails only this
            # request: the engine hands tokenize errors to the request's queue (a 400).
            result = super()._tokenize(tokenizer, request, args)
            if len(result[0]) == 0:
                raise ValueError("the prompt is empty (it has no tokens): send some text")
            return result

    return Generator


def make_provider_class(lm: ModuleType) -> type:
    """A ``ModelProvider`` that only ever holds the ``--model`` weights."""

    class PinnedModelProvider(lm.ModelProvider):
        def load(self, model_path: Any = None, adapter_path: Any = None, draft_model_path: Any = None) -> Any:
            # The stock provider loads any path or Hub repo a request names (and drops the
            # loaded model first); here every request maps to the configured model.
            return super().load("default_model", None, "default_model")

    return PinnedModelProvider


class _UnixHTTPConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self._path = path

    def connect(self) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(self.timeout)
        self.sock.connect(self._path)


def warm_up(socket_path: str) -> None:
    """One real chat request through the socket: proves template, generation and HTTP work."""
    conn = _UnixHTTPConnection(socket_path, timeout=WARMUP_TIMEOUT_S)
    try:
        body = json.dumps({"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 1})
        conn.request("POST", "/v1/chat/completions", body=body, headers={"Content-Type": "application/json"})
        response = conn.getresponse()
        data = response.read()
    finally:
        conn.close()
    if response.status != 200:
        raise RuntimeError(f"warm-up request failed with HTTP {response.status}: {_error_message(data)}")
    if not json.loads(data).get("choices"):
        raise RuntimeError(f"warm-up request returned no choices: {data[:500]!r}")


def _exit(socket_path: str, code: int) -> None:
    unlink_stale_socket(socket_path)
    sys.stderr.flush()
    os._exit(code)


def _watchdog(socket_path: str, seconds: float) -> None:
    def _run() -> None:
        time.sleep(seconds)
        print(f"text worker: shutdown took over {seconds:.0f}s, exiting anyway", file=sys.stderr, flush=True)
        _exit(socket_path, 0)

    threading.Thread(target=_run, name="shutdown-watchdog", daemon=True).start()


def main() -> None:
    args: WorkerArgs = parse_args("text")
    status = StatusChannel(args.status_fd)
    watch_parent(on_exit=lambda: unlink_stale_socket(args.socket))
    hide_torch()
    timings: dict[str, float] = {}
    try:
        check_options(args.options)
        if not os.path.isdir(args.model_path):
            # mlx_lm would take a missing path for a Hugging Face repo id and try to download it.
            raise FileNotFoundError(f"model directory not found: {args.model_path}")
        started = time.monotonic()
        import mlx_lm.server as lm

        timings["import_s"] = round(time.monotonic() - started, 3)
        cli_args = engine_args(lm, engine_argv(args.model_path, args.options))

        # Load here rather than in the generation thread (whose own load_default() is then a
        # no-op): a broken model fails start with its real error instead of a dead thread.
        started = time.monotonic()
        provider = make_provider_class(lm)(cli_args)
        provider.load_default()
        timings["load_s"] = round(time.monotonic() - started, 3)

        generator = make_generator_class(lm)(provider, lm.LRUPromptCache(cli_args.prompt_cache_size))
        handler_class = make_handler_class(lm, args.name, _vocab_size(provider.model),
                                           args.options.get("max_tokens"))
        fingerprint = lm.get_system_fingerprint()
        unlink_stale_socket(args.socket)
        httpd = UnixHTTPServer(args.socket, lambda *a, **kw: handler_class(
            generator, *a, system_fingerprint=fingerprint, **kw))
    except BaseException as exc:  # noqa: BLE001 - SystemExit from a library is a failed start too
        unlink_stale_socket(args.socket)
        fail_and_exit(status, exc)
        return

    stop_requested = threading.Event()

    def shutdown() -> None:
        # Bounded: the watchdog exits even if a prefill step or a join hangs.
        _watchdog(args.socket, SHUTDOWN_TIMEOUT_S)
        httpd.stopping = True
        httpd.shutdown()
        generator.stop_and_join()
        # os._exit, not sys.exit: interpreter teardown with a stream in flight aborts in C++
        # ("terminate called without an active exception"). Handler threads still waiting on
        # the stopped engine die here, so their streams end without [DONE].
        _exit(args.socket, 0)

    def on_signal(signum: int, frame: Any) -> None:
        if not stop_requested.is_set():
            stop_requested.set()
            threading.Thread(target=shutdown, name="shutdown", daemon=True).start()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": SERVE_POLL_S},
                     name="http", daemon=True).start()

    try:
        started = time.monotonic()
        warm_up(args.socket)
        timings["warmup_s"] = round(time.monotonic() - started, 3)
    except BaseException:  # noqa: BLE001
        if stop_requested.is_set():
            threading.Event().wait()  # SIGTERM during warm-up: the shutdown thread exits
        if generator.error is not None:
            exc = RuntimeError(f"generation thread died: {type(generator.error).__name__}: {generator.error}")
        unlink_stale_socket(args.socket)
        fail_and_exit(status, exc)
        return
    timings["total_s"] = round(time.monotonic() - STARTED_AT, 3)
    status.ready(timings)

    # A dead generation thread would leave a process that answers 503 forever; exit instead
    # so that the router sees the worker die and can start it again.
    while not stop_requested.wait(1.0):
        if not generator.generation_available():
            print(f"text worker: generation thread died ({generator.error!r}), exiting", file=sys.stderr, flush=True)
            _exit(args.socket, 1)
    while True:  # the shutdown thread ends the process
        time.sleep(60)


if __name__ == "__main__":
    main()
