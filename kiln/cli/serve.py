"""`kiln serve`: serve a model repository over the KServe v2 protocol (HTTP and gRPC), as tritonserver does."""
from __future__ import annotations

import argparse


def _flag(value: str) -> bool:
    if value.lower() in ("true", "1", "yes", "on"):
        return True
    if value.lower() in ("false", "0", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {value!r}")


def add_parser(sub, common) -> argparse.ArgumentParser:
    p = sub.add_parser("serve", parents=[common], help="serve a model repository over HTTP and gRPC (KServe v2)",
                       description="Serve every model of a Triton-style model repository (DIR/<model>/<version>/"
                                   "model.engine or model.onnx, optional DIR/<model>/config.pbtxt) over the KServe "
                                   "v2 inference protocol on HTTP/REST and gRPC, with dynamic batching and "
                                   "Prometheus metrics. Flags are spelled as tritonserver's. SIGTERM or Ctrl-C "
                                   "stops it gracefully: requests already received are answered, then it exits 0. "
                                   "See docs/serving.md.")
    p.add_argument("--model-repository", required=True, metavar="DIR", help="the model repository folder")
    s = p.add_argument_group("endpoints (a port of 0 binds a free port; the ports are printed once ready)")
    for name, port in (("http", 8000), ("grpc", 8001), ("metrics", 8002)):
        s.add_argument(f"--{name}-port", type=int, default=port, metavar="PORT", help=f"default {port}")
        s.add_argument(f"--{name}-address", default="0.0.0.0", metavar="ADDR", help="default 0.0.0.0")
        s.add_argument(f"--allow-{name}", type=_flag, default=True, metavar="BOOL",
                       help=f"serve {name} (default true)")
    p.add_argument("--device", choices=("cpu", "cuda"), default=None,
                   help="device that ONNX models are built for (default: cuda when a GPU is visible, else cpu)")
    p.add_argument("--http-max-body-bytes", type=int, default=64 << 20, metavar="N",
                   help="largest request body (HTTP) or message (gRPC) accepted; larger ones get 413 / "
                        "RESOURCE_EXHAUSTED (default 64 MiB)")
    p.add_argument("--grpc-workers", type=int, default=64, metavar="N",
                   help="gRPC calls served at once; more wait in grpcio's queue (default 64)")
    p.add_argument("--exit-timeout-secs", type=float, default=30.0, metavar="S",
                   help="on shutdown, how long to wait for requests in flight (default 30)")
    return p


def run(args) -> int:
    import logging

    from ..serve import Server, ServerOptions
    from .loading import plugins_from_args
    from .errors import CLIError
    if args.http_max_body_bytes < 1 or args.grpc_workers < 1 or args.exit_timeout_secs < 0:
        raise CLIError("--http-max-body-bytes and --grpc-workers must be >= 1, --exit-timeout-secs >= 0")
    from .output import emit_event, quiet
    # model loads and the endpoints are worth seeing, unless asked for quiet
    logging.getLogger("kiln.serve").setLevel(logging.ERROR if quiet(args) else logging.INFO)
    options = ServerOptions(
        model_repository=args.model_repository, http_port=args.http_port, grpc_port=args.grpc_port,
        metrics_port=args.metrics_port, http_address=args.http_address, grpc_address=args.grpc_address,
        metrics_address=args.metrics_address, allow_http=args.allow_http, allow_grpc=args.allow_grpc,
        allow_metrics=args.allow_metrics, device=args.device, max_body_bytes=args.http_max_body_bytes,
        grpc_workers=args.grpc_workers, exit_timeout_s=args.exit_timeout_secs, plugins=plugins_from_args(args))
    server = Server(options).start()
    for row in server.repository.index():
        emit_event(args, f"model {row['name']} version {row.get('version', '-')}: {row['state']}"
                   + (f" ({row['reason']})" if row["reason"] else ""), {"event": "model", **row})
    emit_event(args, f"kiln serve: ready; {server.endpoints()}", {"event": "ready", "http_port": server.http_port, "grpc_port": server.grpc_port,
                "metrics_port": server.metrics_port})
    server.serve_forever()
    emit_event(args, "kiln serve: stopped", {"event": "stopped"})
    return 0
