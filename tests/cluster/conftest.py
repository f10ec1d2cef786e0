"""A real Milvus 2.3 standalone server (the `milvus` PyPI package) on 127.0.0.1 for the backend tests.

One server runs per session with its data in a temporary folder, stopped by its pid; a test
may kill it and start it again (`milvus_server`). Tests that use a server are skipped,
with the reason, when the cluster extra is not installed or the server does not start
within SERVER_START_TIMEOUT seconds.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
import urllib.request
import warnings
from pathlib import Path
from typing import Iterator

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


def _port_reusing_config(server_module):
    """The milvus package's config, checking free ports with SO_REUSEADDR as the server itself
    binds them: a restarted server gets its port back while the connections to the killed one
    linger in TIME_WAIT."""

    class PortReusingConfig(server_module.MilvusServerConfig):
        def try_bind_port(self, port: int) -> socket.socket | None:
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind(("127.0.0.1", port))
                sock.listen()
                return sock
            except OSError:
                sock.close()
                return None

    return PortReusingConfig


class LocalMilvus:
    """A standalone Milvus server on 127.0.0.1 with its data in one folder; it can be killed
    (SIGKILL, as a crashed node) and started again on the same data and port."""

    def __init__(self, data: Path) -> None:
        pytest.importorskip("pymilvus", reason="the milvus backend tests need the cluster extra: pip install -e '.[cluster]'")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # pkg_resources deprecation inside the milvus package
            server_module = pytest.importorskip("milvus", reason="the milvus tests need the `milvus` server package (cluster extra)")
        self.server = server_module.MilvusServer(_port_reusing_config(server_module)(), wait_for_started=False)
        self.server.set_base_dir(str(data))
        self.uri = ""

    def start(self) -> None:
        """Start (or start again) and wait until healthy; skips the test when it cannot."""
        try:
            self.server.start()  # binds the proxy to 127.0.0.1 on a free port from 19530
        except (OSError, RuntimeError) as exc:
            pytest.skip(f"the Milvus server could not start: {exc}")
        deadline = time.monotonic() + SERVER_START_TIMEOUT
        while not _healthy(self.server.webservice_port):
            if self.server.server_proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                pytest.skip(f"the Milvus server did not become healthy within {SERVER_START_TIMEOUT} s "
                            f"(logs in {self.server.config.base_data_dir}/logs)")
            time.sleep(0.5)
        port = self.server.listen_port
        self.server.config.configs["proxy_port"] = port  # a restart binds the same port: the same uri
        self.uri = f"http://127.0.0.1:{port}"

    def kill(self) -> None:
        """SIGKILL: no flush, no clean shutdown, as when the machine under the node fails."""
        process = self.server.server_proc
        os.kill(process.pid, signal.SIGKILL)
        process.wait(timeout=10)
        self.server.stop()

    @property
    def running(self) -> bool:
        return self.server.server_proc is not None and self.server.server_proc.poll() is None

    def stop(self) -> None:
        if self.server.server_proc is not None:
            _stop(self.server.server_proc)
        self.server.stop()


@pytest.fixture(scope="session")
def milvus_server(tmp_path_factory) -> Iterator[LocalMilvus]:
    """The Milvus server of this session. Only one can run at a time here (its embedded etcd
    binds the fixed peer port 2380), so a test that kills it starts it again."""
    server = LocalMilvus(tmp_path_factory.mktemp("milvus"))
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def milvus_uri(milvus_server) -> str:
    """http://127.0.0.1:PORT of the session's Milvus server."""
    return milvus_server.uri
