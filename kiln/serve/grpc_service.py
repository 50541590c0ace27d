"""The KServe v2 protocol over gRPC: Triton's ``inference.GRPCInferenceService``, with the request and
response messages and service stubs generated from Triton's own .proto files that the tritonclient package
ships (tritonclient.grpc.service_pb2*), served by grpcio. Errors abort the call with the status from status.py
and Kiln's message; the server keeps serving."""
from __future__ import annotations

import functools
import logging
from concurrent import futures

import grpc
from tritonclient.grpc import service_pb2 as pb
from tritonclient.grpc import service_pb2_grpc as pb_grpc

from ..errors import KilnError, RequestError
from . import tensors
from .model import InferRequest
from .service import InferenceService
from .status import grpc_code

log = logging.getLogger("kiln.serve")

_NO_DEADLINE_S = 10 * 365 * 86400

# Typed 'contents' fields of InferTensorContents, for inputs not sent as raw bytes.
_CONTENTS_FIELD = {"BOOL": "bool_contents", "INT8": "int_contents", "INT16": "int_contents", "INT32": "int_contents",
                   "INT64": "int64_contents", "UINT8": "uint_contents", "UINT16": "uint_contents",
                   "UINT32": "uint_contents", "UINT64": "uint64_contents", "FP32": "fp32_contents",
                   "FP64": "fp64_contents"}


def _answer_errors(method):
    """Abort the call with the error's status and message; a bug is logged and answered INTERNAL."""
    @functools.wraps(method)
    def wrapper(self, request, context):
        try:
            return method(self, request, context)
        except KilnError as e:
            context.abort(grpc_code(e), str(e))
        except Exception as e:  # noqa: BLE001 - a bug: logged with its traceback, answered INTERNAL
            log.exception("internal error while serving a gRPC request")
            context.abort(grpc.StatusCode.INTERNAL, f"internal error: {type(e).__name__}: {e}")
    return wrapper


class InferenceServicer(pb_grpc.GRPCInferenceServiceServicer):
    def __init__(self, service: InferenceService):
        self.service = service

    @_answer_errors
    def ServerLive(self, request, context):
        return pb.ServerLiveResponse(live=self.service.live())

    @_answer_errors
    def ServerReady(self, request, context):
        return pb.ServerReadyResponse(ready=self.service.ready())

    @_answer_errors
    def ServerMetadata(self, request, context):
        return pb.ServerMetadataResponse(**self.service.metadata())

    @_answer_errors
    def ModelReady(self, request, context):
        return pb.ModelReadyResponse(ready=self.service.model_ready(request.name, request.version))

    @_answer_errors
    def ModelMetadata(self, request, context):
        meta = self.service.model(request.name, request.version).metadata()
        tensor = pb.ModelMetadataResponse.TensorMetadata
        return pb.ModelMetadataResponse(name=meta["name"], versions=meta["versions"], platform=meta["platform"],
                                        inputs=[tensor(**t) for t in meta["inputs"]],
                                        outputs=[tensor(**t) for t in meta["outputs"]])

    @_answer_errors
    def ModelConfig(self, request, context):
        return pb.ModelConfigResponse(config=self.service.model(request.name, request.version).config())

    @_answer_errors
    def ModelInfer(self, request, context):
        infer_request = decode_infer(request, context.time_remaining())
        version, outputs = self.service.infer(infer_request)
        return encode_infer(outputs, infer_request, version)

    @_answer_errors
    def RepositoryIndex(self, request, context):
        rows = self.service.index(ready_only=request.ready)
        return pb.RepositoryIndexResponse(models=[pb.RepositoryIndexResponse.ModelIndex(**r) for r in rows])

    @_answer_errors
    def RepositoryModelLoad(self, request, context):
        self.service.load(request.model_name)
        return pb.RepositoryModelLoadResponse()

    @_answer_errors
    def RepositoryModelUnload(self, request, context):
        self.service.unload(request.model_name)
        return pb.RepositoryModelUnloadResponse()


def decode_infer(request, time_remaining: float | None) -> InferRequest:
    raw = request.raw_input_contents
    if raw and len(raw) != len(request.inputs):
        raise RequestError(f"raw_input_contents has {len(raw)} entries for {len(request.inputs)} inputs; give one "
                           f"per input, in order, or none")
    inputs = {}
    for i, t in enumerate(request.inputs):
        if t.name in inputs:
            raise RequestError(f"input {t.name!r} is given twice")
        if raw:
            inputs[t.name] = tensors.from_bytes(t.name, t.datatype, t.shape, raw[i])
        else:
            field = _CONTENTS_FIELD.get(t.datatype)
            if field is None:
                tensors.numpy_dtype(t.datatype, t.name)  # names the served datatypes if this one is unknown
                raise RequestError(f"input {t.name!r}: {t.datatype} must be sent in raw_input_contents")
            inputs[t.name] = tensors.from_json(t.name, t.datatype, t.shape, list(getattr(t.contents, field)))
    if not inputs:
        raise RequestError("request has no inputs")
    timeout = None
    if "timeout" in request.parameters:
        micros = request.parameters["timeout"].int64_param
        timeout = micros / 1e6 if micros > 0 else None
    # The client's gRPC deadline; without one grpcio reports a huge number of seconds.
    if time_remaining is not None and time_remaining < _NO_DEADLINE_S:
        timeout = time_remaining if timeout is None else min(timeout, time_remaining)
    outputs = tuple(o.name for o in request.outputs) or None
    return InferRequest(model=request.model_name, version=request.model_version, inputs=inputs, outputs=outputs,
                        timeout_s=timeout, id=request.id)


def encode_infer(outputs: dict, request: InferRequest, version: str):
    response = pb.ModelInferResponse(model_name=request.model, model_version=version, id=request.id)
    for name, array in outputs.items():
        response.outputs.add(name=name, datatype=tensors.datatype_of_array(array), shape=list(array.shape))
        response.raw_output_contents.append(tensors.to_bytes(array))
    return response


def make_server(service: InferenceService, address: str, max_message_bytes: int, workers: int = 64):
    """A started grpcio server and the port it bound (``address`` may end in :0 for a free port)."""
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=workers, thread_name_prefix="kiln-grpc"),
                         options=[("grpc.max_receive_message_length", max_message_bytes),
                                  ("grpc.max_send_message_length", -1)])
    pb_grpc.add_GRPCInferenceServiceServicer_to_server(InferenceServicer(service), server)
    port = server.add_insecure_port(address)
    if port == 0:
        raise OSError(f"gRPC: cannot bind {address}")
    server.start()
    return server, port
