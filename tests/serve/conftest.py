"""Fixtures of the serving tests: an in-process server on free local ports over serve_support's repository."""
from __future__ import annotations

from pathlib import Path

import pytest

from serve_support import LOCAL, make_repository


@pytest.fixture(scope="package")
def repository(tmp_path_factory) -> Path:
    return make_repository(tmp_path_factory.mktemp("model_repository"))


@pytest.fixture(scope="package")
def server(repository):
    from kiln.serve import Server, ServerOptions
    options = ServerOptions(str(repository), http_port=0, grpc_port=0, metrics_port=0, http_address=LOCAL,
                            grpc_address=LOCAL, metrics_address=LOCAL, device="cpu", max_body_bytes=1 << 20)
    with Server(options) as s:
        yield s


@pytest.fixture
def http(server):
    import tritonclient.http as httpclient
    client = httpclient.InferenceServerClient(f"{LOCAL}:{server.http_port}", concurrency=4)
    yield client
    client.close()


@pytest.fixture
def grpc_client(server):
    import tritonclient.grpc as grpcclient
    client = grpcclient.InferenceServerClient(f"{LOCAL}:{server.grpc_port}")
    yield client
    client.close()
