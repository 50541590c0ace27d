"""The server: a repository of loaded models behind the HTTP (uvicorn), gRPC (grpcio) and metrics
(prometheus_client) endpoints, started and stopped in one place.

Shutdown (``stop``, or SIGTERM/SIGINT in ``serve_forever``) is graceful: new requests get 503/UNAVAILABLE,
requests already received are run and answered, the listeners close, the workers stop.
"""
from __future__ import annotations

import logging
import signal
import socket
import threading
import time
from dataclasses import dataclass
from typing import Any

from ..errors import KilnError
from .http_service import DEFAULT_MAX_BODY_BYTES
from .metrics import Metrics, cuda_memory
from .repository import Repository
from .service import InferenceService

log = logging.getLogger("kiln.serve")


@dataclass(frozen=True)
class ServerOptions:
    """What ``kiln serve`` takes; ports and addresses spelled and defaulted as tritonserver's flags.
    A port of 0 binds a free port (the bound ports are on the Server).

    Attributes:
        model_repository: the folder of models (one folder per model, versions inside, as Triton lays them out).
        http_port: the HTTP/REST port (8000).
        grpc_port: the gRPC port (8001).
        metrics_port: the Prometheus metrics port (8002).
        http_address: the address the HTTP endpoint binds ("0.0.0.0": every IPv4 interface).
        grpc_address: the address the gRPC endpoint binds.
        metrics_address: the address the metrics endpoint binds.
        allow_http: open the HTTP endpoint.
        allow_grpc: open the gRPC endpoint.
        allow_metrics: open the metrics endpoint.
        device: where models run; None: "cuda" when a GPU is visible, else "cpu".
        max_body_bytes: the largest HTTP request body and gRPC message accepted, in bytes (64 MiB).
        grpc_workers: how many gRPC calls may be in flight at once (each waits on its batch in a thread).
        exit_timeout_s: how long shutdown waits for requests in flight, in seconds.
        plugins: a kiln.plugin.PluginLibrary for models with custom ops, or None.
    """

    model_repository: str
    http_port: int = 8000
    grpc_port: int = 8001
    metrics_port: int = 8002
    http_address: str = "0.0.0.0"
    grpc_address: str = "0.0.0.0"
    metrics_address: str = "0.0.0.0"
    allow_http: bool = True
    allow_grpc: bool = True
    allow_metrics: bool = True
    device: str | None = None
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    grpc_workers: int = 64
    exit_timeout_s: float = 30.0
    plugins: Any = None


class Server:
    """A model repository served over HTTP, gRPC and metrics endpoints: ``start()`` loads the models and opens
    the endpoints, ``stop()`` shuts down gracefully; also a context manager. After ``start``, ``http_port``,
    ``grpc_port`` and ``metrics_port`` are the ports bound (None for an endpoint not opened)."""

    def __init__(self, options: ServerOptions):
        self.options = options
        self.device = options.device or _default_device()
        gpu = cuda_memory if self.device.startswith("cuda") else None
        self.metrics = Metrics(gpu_memory=gpu)
        self.repository = Repository(options.model_repository, self.device, self.metrics, options.plugins)
        self.service = InferenceService(self.repository)
        self.http_port = self.grpc_port = self.metrics_port = None
        self._uvicorn = self._http_thread = self._grpc = self._metrics_httpd = None
        self._stopped = threading.Event()

    # -- lifecycle --------------------------------------------------------------------------------------
    def start(self) -> "Server":
        """Load every model in the repository (one that fails is logged and left UNAVAILABLE), then open the
        endpoints. Returns once all of them accept connections."""
        o = self.options
        try:
            self.repository.load_all()
            if o.allow_http:
                self._start_http()
            if o.allow_grpc:
                from .grpc_service import make_server
                self._grpc, self.grpc_port = make_server(self.service, _join(o.grpc_address, o.grpc_port),
                                                         o.max_body_bytes, o.grpc_workers)
            if o.allow_metrics:
                from prometheus_client import start_http_server
                self._metrics_httpd, _ = start_http_server(o.metrics_port, o.metrics_address,
                                                           registry=self.metrics.registry)
                self.metrics_port = self._metrics_httpd.server_address[1]
        except BaseException:
            self.stop()
            raise
        self.service.started = True
        log.info("serving on %s", self.endpoints())
        return self

    def endpoints(self) -> str:
        """The open endpoints for a log line: "HTTP 0.0.0.0:8000, gRPC 0.0.0.0:8001, metrics 0.0.0.0:8002"."""
        o, parts = self.options, []
        for what, addr, port in (("HTTP", o.http_address, self.http_port), ("gRPC", o.grpc_address, self.grpc_port),
                                 ("metrics", o.metrics_address, self.metrics_port)):
            if port is not None:
                parts.append(f"{what} {addr}:{port}")
        return ", ".join(parts)

    def _start_http(self) -> None:
        import uvicorn
        from .http_service import make_app
        o = self.options
        sock = socket.socket(socket.AF_INET6 if ":" in o.http_address else socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((o.http_address, o.http_port))
        self.http_port = sock.getsockname()[1]
        # h11 and asyncio, named: uvicorn's "auto" would switch to httptools/uvloop wherever another package
        # (Ray, say) installed them, and the server would differ from the one the tests ran.
        config = uvicorn.Config(make_app(self.service, o.max_body_bytes), log_level="warning", access_log=False,
                                timeout_graceful_shutdown=o.exit_timeout_s, lifespan="off", http="h11",
                                loop="asyncio", ws="none")
        self._uvicorn = uvicorn.Server(config)
        self._http_thread = threading.Thread(target=self._uvicorn.run, kwargs={"sockets": [sock]},
                                             name="kiln-http", daemon=True)
        self._http_thread.start()
        while not self._uvicorn.started:  # startup, not a test: uvicorn sets this once it listens
            if not self._http_thread.is_alive():
                raise KilnError(f"the HTTP server on {o.http_address}:{self.http_port} did not start (see the log)")
            time.sleep(0.01)

    def stop(self) -> None:
        """Graceful: stop accepting, answer every request already received, close the endpoints."""
        if self._stopped.is_set():
            return
        self._stopped.set()
        self.service.accepting = False
        if self._uvicorn is not None:
            self._uvicorn.should_exit = True   # uvicorn stops listening and waits for requests in flight
        if self._grpc is not None:
            self._grpc.stop(grace=self.options.exit_timeout_s).wait()
        if self._http_thread is not None:
            self._http_thread.join(self.options.exit_timeout_s + 5)
        self.repository.close()                  # whatever is still queued is answered first
        if self._metrics_httpd is not None:
            self._metrics_httpd.shutdown()
            self._metrics_httpd.server_close()
        log.info("server stopped")

    def serve_forever(self) -> None:
        """Block until SIGTERM or SIGINT (main thread only), then stop gracefully."""
        done = threading.Event()
        previous = {s: signal.signal(s, lambda *_: done.set()) for s in (signal.SIGTERM, signal.SIGINT)}
        try:
            while not done.wait(0.5):
                pass
            log.info("signal received: finishing the requests in flight, then exiting")
        finally:
            self.stop()  # a second signal meanwhile changes nothing: the handlers stay until the end
            for s, handler in previous.items():
                signal.signal(s, handler)

    def __enter__(self) -> "Server":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def _join(address: str, port: int) -> str:
    return f"[{address}]:{port}" if ":" in address else f"{address}:{port}"


def _default_device() -> str:
    import torch
    return "cuda" if torch.cuda.is_available() else "cpu"
