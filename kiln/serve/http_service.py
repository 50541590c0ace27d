"""The KServe v2 protocol over HTTP/REST (FastAPI routes, served by uvicorn), as Triton implements it,
including the binary-data extension: a body of ``Inference-Header-Content-Length`` bytes of JSON followed by
the raw tensors that the JSON's ``binary_data_size`` parameters measure out, in input order."""
from __future__ import annotations

import json
import logging
import zlib

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response

from ..errors import KilnError, RequestError, RequestTooLargeError
from . import tensors
from .model import InferRequest
from .service import InferenceService
from .status import http_status

log = logging.getLogger("kiln.serve")

HEADER_LENGTH = "Inference-Header-Content-Length"
DEFAULT_MAX_BODY_BYTES = 64 << 20


def make_app(service: InferenceService, max_body_bytes: int = DEFAULT_MAX_BODY_BYTES) -> FastAPI:
    app = FastAPI(title="Kiln inference server (KServe v2)", docs_url=None, redoc_url=None, openapi_url=None)

    @app.exception_handler(KilnError)
    async def kiln_error(_request: Request, e: KilnError):
        return JSONResponse({"error": str(e)}, status_code=http_status(e))

    @app.exception_handler(Exception)
    async def internal_error(_request: Request, e: Exception):  # a bug: logged with its traceback, answered 500
        log.exception("internal error while serving a request")
        return JSONResponse({"error": f"internal error: {type(e).__name__}: {e}"}, status_code=500)

    @app.get("/v2/health/live")
    async def live():
        return Response(status_code=200 if service.live() else 503)

    @app.get("/v2/health/ready")
    async def ready():
        return Response(status_code=200 if service.ready() else 503)

    @app.get("/v2")
    async def server_metadata():
        return service.metadata()

    @app.get("/v2/models/{name}")
    @app.get("/v2/models/{name}/versions/{version}")
    async def model_metadata(name: str, version: str = ""):
        return service.model(name, version).metadata()

    @app.get("/v2/models/{name}/ready")
    @app.get("/v2/models/{name}/versions/{version}/ready")
    async def model_ready(name: str, version: str = ""):
        return Response(status_code=200 if service.model_ready(name, version) else 503)

    @app.get("/v2/models/{name}/config")
    @app.get("/v2/models/{name}/versions/{version}/config")
    async def model_config(name: str, version: str = ""):
        from google.protobuf import json_format
        return json_format.MessageToDict(service.model(name, version).config(), preserving_proto_field_name=True)

    @app.post("/v2/models/{name}/infer")
    @app.post("/v2/models/{name}/versions/{version}/infer")
    async def infer(request: Request, name: str, version: str = ""):
        service.model(name, version)  # an unknown model is the first thing to say, before the body's faults
        body = await _read_body(request, max_body_bytes)
        infer_request, binary_out = parse_infer(body, request.headers.get(HEADER_LENGTH), name, version)
        served_version, outputs = await service.infer_async(infer_request)
        return encode_infer(outputs, infer_request, served_version, binary_out)

    @app.post("/v2/repository/index")
    async def repository_index(request: Request):
        doc = _json_or_empty(await _read_body(request, 1 << 20))
        return service.index(ready_only=bool(doc.get("ready", False)))

    @app.post("/v2/repository/models/{name}/load")
    async def load(name: str):
        import anyio
        await anyio.to_thread.run_sync(service.load, name)  # a build can take seconds: off the event loop
        return {}

    @app.post("/v2/repository/models/{name}/unload")
    async def unload(name: str):
        import anyio
        await anyio.to_thread.run_sync(service.unload, name)
        return {}

    return app


async def _read_body(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise RequestTooLargeError(f"request body of {declared} bytes is over the server's limit of {limit} bytes "
                           f"(kiln serve --http-max-body-bytes)")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise RequestTooLargeError(f"request body is over the server's limit of {limit} bytes "
                               f"(kiln serve --http-max-body-bytes)")
        chunks.append(chunk)
    body = b"".join(chunks)
    encoding = request.headers.get("content-encoding", "").lower()
    if encoding in ("gzip", "deflate"):  # tritonclient's request_compression_algorithm
        d = zlib.decompressobj(wbits=31 if encoding == "gzip" else 15)
        try:
            body = d.decompress(body, limit + 1)
        except zlib.error as e:
            raise RequestError(f"request body is not valid {encoding}: {e}") from None
        if len(body) > limit or d.unconsumed_tail:
            raise RequestTooLargeError(f"decompressed request body is over the server's limit of {limit} bytes")
    elif encoding not in ("", "identity"):
        raise RequestError(f"Content-Encoding {encoding!r} is not supported (gzip, deflate)")
    return body


def _json_or_empty(body: bytes) -> dict:
    if not body.strip():
        return {}
    try:
        doc = json.loads(body)
    except (ValueError, UnicodeDecodeError) as e:
        raise RequestError(f"request body is not valid JSON: {e}") from None
    if not isinstance(doc, dict):
        raise RequestError("request body must be a JSON object")
    return doc


def parse_infer(body: bytes, header_length: str | None, name: str, version: str) -> tuple[InferRequest, set[str]]:
    """The request, and the names of outputs to answer as binary data."""
    if header_length is not None:
        if not header_length.isdigit() or int(header_length) > len(body):
            raise RequestError(f"{HEADER_LENGTH} {header_length!r} must be a byte count within the body "
                               f"({len(body)} bytes)")
        split = int(header_length)
        head, binary = body[:split], memoryview(body)[split:]
    else:
        head, binary = body, memoryview(b"")
    doc = _json_or_empty(head)
    params = _params(doc, "request")
    raw_inputs = doc.get("inputs")
    if not isinstance(raw_inputs, list) or not raw_inputs:
        raise RequestError("request needs 'inputs': a list of {name, shape, datatype, data} objects")
    inputs, offset = {}, 0
    for i, item in enumerate(raw_inputs):
        if not isinstance(item, dict) or not isinstance(item.get("name"), str):
            raise RequestError(f"inputs[{i}] must be an object with a 'name'")
        iname = item["name"]
        for key in ("shape", "datatype"):
            if key not in item:
                raise RequestError(f"input {iname!r} has no {key!r}")
        if iname in inputs:
            raise RequestError(f"input {iname!r} is given twice")
        size = _params(item, f"input {iname!r}").get("binary_data_size")
        if size is not None:
            if not isinstance(size, int) or size < 0 or offset + size > len(binary):
                raise RequestError(f"input {iname!r}: binary_data_size {size!r} runs past the {len(binary)} bytes "
                                   f"of binary data after the JSON header")
            inputs[iname] = tensors.from_bytes(iname, item["datatype"], item["shape"], binary[offset:offset + size])
            offset += size
        elif "data" in item:
            inputs[iname] = tensors.from_json(iname, item["datatype"], item["shape"], item["data"])
        else:
            raise RequestError(f"input {iname!r} has neither 'data' nor a binary_data_size parameter")
    if offset != len(binary):
        raise RequestError(f"{len(binary) - offset} bytes of binary data after the JSON header belong to no input")
    raw_outputs = doc.get("outputs")
    outputs, binary_out = None, set()
    if raw_outputs is not None:
        if not isinstance(raw_outputs, list) or not all(isinstance(o, dict) and isinstance(o.get("name"), str)
                                                        for o in raw_outputs):
            raise RequestError("'outputs' must be a list of objects with a 'name'")
        outputs = tuple(o["name"] for o in raw_outputs)
        binary_out = {o["name"] for o in raw_outputs
                      if _params(o, f"output {o['name']!r}").get("binary_data", False)}
    binary_all = bool(params.get("binary_data_output", False))
    request = InferRequest(model=name, version=version, inputs=inputs, outputs=outputs,
                           timeout_s=_timeout(params), id=str(doc.get("id", "")))
    return request, ({"*"} if binary_all else binary_out)


def _params(doc: dict, what: str) -> dict:
    params = doc.get("parameters", {})
    if not isinstance(params, dict):
        raise RequestError(f"{what}: 'parameters' must be a JSON object")
    return params


def _timeout(params: dict) -> float | None:
    """Triton's per-request 'timeout' parameter, in microseconds."""
    value = params.get("timeout")
    if value is None:
        return None
    if not isinstance(value, int) or value < 0:
        raise RequestError(f"parameter 'timeout' must be a non-negative integer of microseconds, got {value!r}")
    return value / 1e6 if value else None


def encode_infer(outputs: dict, request: InferRequest, version: str, binary_out: set[str]) -> Response:
    head = {"model_name": request.model, "model_version": version, "outputs": []}
    if request.id:
        head["id"] = request.id
    blobs = []
    for oname, array in outputs.items():
        entry = {"name": oname, "datatype": tensors.datatype_of_array(array), "shape": list(array.shape)}
        if "*" in binary_out or oname in binary_out:
            blob = tensors.to_bytes(array)
            entry["parameters"] = {"binary_data_size": len(blob)}
            blobs.append(blob)
        else:
            entry["data"] = tensors.to_json(array)
        head["outputs"].append(entry)
    text = json.dumps(head, allow_nan=True).encode()
    if not blobs:
        return Response(text, media_type="application/json")
    return Response(b"".join([text, *blobs]), media_type="application/octet-stream",
                    headers={HEADER_LENGTH: str(len(text))})
