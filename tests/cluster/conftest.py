"""A real Milvus 2.3 standalone server (the `milvus` PyPI package) on 127.0.0.1 for the backend tests.

Started once per session with its data in a temporary folder, stopped by its pid. Tests
that use it are skipped, with the reason, when the cluster extra is not installed or the
server does not start within SERVER_START_TIMEOUT seconds.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
import urllib.request
import warnings

import pytest

SERVER_START_TIMEOUT = 150  # seconds; it takes about 20 on two busy cores


def _healthy(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as answer:
            return b"OK" in answer.read()
    except OSError:
        return False


def _stop(process: subprocess.Popen) -> None:
    """SIGTERM to the server's pid, SIGKILL after 20 s."""
    if process.poll() is None:
        os.kill(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.kill(process.pid, signal.SIGKILL)
            process.wait(timeout=10)


@pytest.fixture(scope="session")
def milvus_uri(tmp_path_factory) -> str:
    """http://127.0.0.1:PORT of a Milvus server running for this session."""
    pytest.importorskip("pymilvus", reason="the milvus backend tests need the cluster extra: pip install -e '.[cluster]'")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pkg_resources deprecation inside the milvus package
        server_module = pytest.importorskip("milvus", reason="the milvus tests need the `milvus` server package (cluster extra)")
    server = server_module.MilvusServer(server_module.MilvusServerConfig(), wait_for_started=False)
    server.set_base_dir(str(tmp_path_factory.mktemp("milvus")))
    try:
        server.start()  # binds the proxy to 127.0.0.1 on a free port from 19530
    except (OSError, RuntimeError) as exc:
        pytest.skip(f"the Milvus server could not start: {exc}")
    process = server.server_proc
    deadline = time.monotonic() + SERVER_START_TIMEOUT
    while not _healthy(server.webservice_port):
        if process.poll() is not None or time.monotonic() > deadline:
            _stop(process)
            server.stop()
            pytest.skip(f"the Milvus server did not become healthy within {SERVER_START_TIMEOUT} s "
                        f"(logs in {server.config.base_data_dir}/logs)")
        time.sleep(0.5)
    try:
        yield f"http://127.0.0.1:{server.listen_port}"
    finally:
        _stop(process)
        server.stop()
