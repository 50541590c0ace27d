"""Kiln models on Ray Serve: each replica loads one model folder of a repository (latest served version)
and answers the KServe v2 HTTP protocol behind Ray's HTTP proxy; Ray's ``@serve.batch`` merges concurrent
requests, with its max batch size taken from the engine's profile (or config.pbtxt) and its wait from
``max_queue_delay_microseconds``. Ray scales replicas (``num_replicas`` or ``autoscaling_config``) and places
them: ``ray_actor_options={"num_gpus": 1}`` gives each replica its own GPU.

    from ray import serve
    from kiln.serve.ray_app import kiln_app
    serve.run(kiln_app("model_repository/tiny_resnet", num_replicas=3), route_prefix="/v2/models/tiny_resnet")

tritonclient's HTTP client and curl then call ``http://HOST:8000`` (Ray's proxy) as they call ``kiln serve``.
Only the HTTP inference path is served here (infer, model metadata, model ready); gRPC and the repository
API belong to ``kiln serve``.
"""
from __future__ import annotations

import asyncio
import dataclasses
import logging
from pathlib import Path

import numpy as np
from ray import serve
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from ..errors import KilnError
from .config import read_settings, select_versions
from .http_service import HEADER_LENGTH, encode_infer, parse_infer
from .metrics import Metrics
from .model import LoadedModel
from .repository import TIMING_CACHE, load_engine
from .status import http_status

log = logging.getLogger("kiln.serve")


@serve.deployment
class KilnModel:
    def __init__(self, model_dir: str, device: str | None = None):
        import torch
        folder = Path(model_dir)
        self.settings = read_settings(folder)
        versions = select_versions(self.settings.version_policy,
                                   [int(p.name) for p in folder.iterdir() if p.name.isdigit() and p.is_dir()])
        if not versions:
            raise KilnError(f"model {folder.name!r}: no version folder to serve in {folder}")
        self.version = str(versions[-1])
        device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        engine, _ = load_engine(folder / self.version, self.settings, device, folder.parent / TIMING_CACHE)
        # Ray batches; the model's own queue runs each merged batch as it comes (no second batching delay).
        self.model = LoadedModel(folder.name, self.version, engine,
                                 dataclasses.replace(self.settings, batching=False),
                                 Metrics().for_model(folder.name, self.version), str(folder))
        self.infer_batch.set_max_batch_size(max(self.model.max_batch_size, 1))
        self.infer_batch.set_batch_wait_timeout_s(self.settings.max_queue_delay_s)

    @serve.batch(max_batch_size=8, batch_wait_timeout_s=0.0)
    async def infer_batch(self, requests: list[tuple]) -> list:
        """Ray hands over up to max_batch_size calls; those with equal shape keys whose rows fit the engine
        are merged into one engine call, the rest run in further calls. Each call gets its outputs or its
        error back, never another's."""
        results: list = [None] * len(requests)
        groups: list[list[int]] = []
        for i, (_, rows, key) in enumerate(requests):
            for g in groups:
                head = requests[g[0]]
                if head[2] == key and sum(requests[j][1] for j in g) + rows <= max(self.model.max_batch_size, 1):
                    g.append(i)
                    break
            else:
                groups.append([i])

        async def run(group: list[int]):
            inputs = {n: np.concatenate([requests[j][0][n] for j in group]) for n in requests[group[0]][0]}
            rows = sum(requests[j][1] for j in group)
            try:
                future = self.model.batcher.submit(inputs, rows, requests[group[0]][2])
                outputs = await asyncio.wrap_future(future)
            except Exception as e:  # noqa: BLE001 - handed to each caller of the group
                for j in group:
                    results[j] = e
                return
            start = 0
            for j in group:
                n = requests[j][1]
                results[j] = {k: v[start:start + n] if self.model.batch_dim else v for k, v in outputs.items()}
                start += n
        await asyncio.gather(*(run(g) for g in groups))
        return results

    async def __call__(self, request: Request) -> Response:
        try:
            path = request.url.path.rstrip("/")
            if request.method == "GET":
                if path.endswith("/ready"):
                    return Response(status_code=200)
                return JSONResponse(self.model.metadata())
            if not path.endswith("/infer"):
                return JSONResponse({"error": f"no route {request.method} {path}"}, status_code=404)
            body = await request.body()
            infer_request, binary_out = parse_infer(body, request.headers.get(HEADER_LENGTH), self.model.name, "")
            rows, key = self.model.check(infer_request)
            outputs = await self.infer_batch((infer_request.inputs, rows, key))
            if isinstance(outputs, Exception):
                raise outputs
            if infer_request.outputs is not None:
                outputs = {n: outputs[n] for n in infer_request.outputs}
            return encode_infer(outputs, infer_request, self.version, binary_out)
        except KilnError as e:
            return JSONResponse({"error": str(e)}, status_code=http_status(e))


def kiln_app(model_dir: str | Path, device: str | None = None, **deployment_options):
    """A bound Ray Serve application for one model folder; ``deployment_options`` go to
    ``KilnModel.options`` (num_replicas, autoscaling_config, ray_actor_options, max_ongoing_requests, ...)."""
    name = Path(model_dir).name
    return KilnModel.options(name=name, **deployment_options).bind(str(Path(model_dir).resolve()), device)
