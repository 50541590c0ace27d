"""`kiln serve`: serve a model repository over the KServe v2 protocol (HTTP/REST and gRPC, as Triton Inference
Server speaks it), with dynamic batching and Prometheus metrics.

    from kiln.serve import Server, ServerOptions, serve
    serve("model_repository")                                   # blocks; SIGTERM/SIGINT stop it gracefully
    with Server(ServerOptions("model_repository", http_port=0, grpc_port=0, metrics_port=0)) as server:
        ...                                                     # server.http_port, server.grpc_port

Layout: config.py (config.pbtxt), repository.py (folders -> loaded models), build.py (ONNX -> engine for
serving), model.py (one loaded version: checks, metadata), batching.py (queue, merge, split), service.py
(protocol-free operations), http_service.py and grpc_service.py (the two wires), tensors.py (datatypes and
bytes), status.py (error -> HTTP/gRPC status), metrics.py (Triton-named Prometheus metrics), server.py (the
endpoints' lifecycle), ray_app.py (the same models as Ray Serve deployments; imports ray).
"""
from .server import Server, ServerOptions

__all__ = ["Server", "ServerOptions", "serve"]


def serve(model_repository: str, **options) -> None:
    """Serve until SIGTERM or SIGINT; ``options`` are ServerOptions fields (http_port=8000, ...)."""
    server = Server(ServerOptions(model_repository, **options)).start()
    server.serve_forever()
