"""What the server does, independent of the wire: health, metadata, inference, repository control. The HTTP
and gRPC front ends decode a request into these calls and encode what they return; neither holds state."""
from __future__ import annotations

import asyncio
import time
from concurrent.futures import Future

import numpy as np

from .. import __version__
from ..errors import KilnError, RequestTimeoutError, ServerBusyError
from .batching import wait
from .model import InferRequest, LoadedModel
from .repository import Repository
from .status import failure_reason

SERVER_NAME = "kiln"
EXTENSIONS = ["binary_tensor_data", "model_repository", "model_configuration"]


class InferenceService:
    def __init__(self, repository: Repository):
        self.repository = repository
        self.accepting = True       # False once shutdown began: health/ready say so, new requests get 503
        self.started = False        # True once the startup loads are done

    # -- health and metadata ----------------------------------------------------------------------------
    def live(self) -> bool:
        return True

    def ready(self) -> bool:
        return self.started and self.accepting and not self.repository.loading()

    def metadata(self) -> dict:
        return {"name": SERVER_NAME, "version": __version__, "extensions": list(EXTENSIONS)}

    def model(self, name: str, version: str = "") -> LoadedModel:
        return self.repository.get(name, version)

    def model_ready(self, name: str, version: str = "") -> bool:
        try:
            self.repository.get(name, version)
            return True
        except KilnError:
            return False

    # -- inference --------------------------------------------------------------------------------------
    def submit(self, request: InferRequest) -> tuple[LoadedModel, Future, float]:
        """Check a request and queue it: (model, future of its outputs, start time). Raises KilnError."""
        start = time.monotonic()
        if not self.accepting:
            raise ServerBusyError("the server is shutting down; not accepting new requests")
        model = self.repository.get(request.model, request.version)
        try:
            rows, key = model.check(request)
            return model, model.batcher.submit(request.inputs, rows, key), start
        except KilnError as e:
            model.metrics.failed(failure_reason(e), int((time.monotonic() - start) * 1e6))
            raise

    def timeout(self, model: LoadedModel, request: InferRequest) -> float | None:
        return request.timeout_s if request.timeout_s is not None else model.settings.default_timeout_s

    def infer(self, request: InferRequest) -> tuple[str, dict[str, np.ndarray]]:
        """Run one request: (the version that answered, its outputs). Blocks; for thread-based front ends."""
        model, future, start = self.submit(request)
        try:
            outputs = wait(future, self.timeout(model, request), model.label)
        except KilnError as e:
            model.metrics.failed(failure_reason(e), int((time.monotonic() - start) * 1e6))
            raise
        model.metrics.succeeded(int((time.monotonic() - start) * 1e6))
        return model.version, _requested(outputs, request)

    async def infer_async(self, request: InferRequest) -> tuple[str, dict[str, np.ndarray]]:
        """``infer`` without blocking the event loop (for the asyncio front end)."""
        model, future, start = self.submit(request)
        timeout = self.timeout(model, request)
        try:
            try:
                outputs = await asyncio.wait_for(asyncio.shield(asyncio.wrap_future(future)), timeout)
            except asyncio.TimeoutError:
                if future.cancel():  # still queued: withdraw it
                    raise RequestTimeoutError(f"model {model.label}: the request waited {timeout:.3f} s in the "
                                              f"queue without being run (its timeout)") from None
                outputs = await asyncio.wrap_future(future)  # already running: its answer is coming
        except KilnError as e:
            model.metrics.failed(failure_reason(e), int((time.monotonic() - start) * 1e6))
            raise
        model.metrics.succeeded(int((time.monotonic() - start) * 1e6))
        return model.version, _requested(outputs, request)

    # -- repository -------------------------------------------------------------------------------------
    def index(self, ready_only: bool = False) -> list[dict]:
        return self.repository.index(ready_only)

    def load(self, name: str) -> None:
        self.repository.load(name)

    def unload(self, name: str) -> None:
        self.repository.unload(name)


def _requested(outputs: dict[str, np.ndarray], request: InferRequest) -> dict[str, np.ndarray]:
    if request.outputs is None:
        return outputs
    return {name: outputs[name] for name in request.outputs}
