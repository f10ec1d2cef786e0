"""`snapshop serve` and `snapshop demo` as a user runs them: real processes answering on 127.0.0.1."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from typer.testing import CliRunner

from snapshop.cli import app

TOKEN = "cli-token-do-not-print-4821"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class Server:
    """A snapshop command running in the background, its output in a file."""

    def __init__(self, args: list[str], cwd: Path, env: dict[str, str]) -> None:
        self.log = cwd / "server.log"
        with self.log.open("w") as out:
            self.process = subprocess.Popen([sys.executable, "-m", "snapshop", *args], cwd=cwd, stdout=out,
                                            stderr=subprocess.STDOUT, env={**os.environ, **env})

    @property
    def output(self) -> str:
        return self.log.read_text()

    def wait_until_serving(self, url: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                pytest.fail(f"the server exited with {self.process.returncode}:\n{self.output}")
            try:
                if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                    return
            except httpx.TransportError:
                time.sleep(0.3)
        pytest.fail(f"the server did not answer within {timeout} s:\n{self.output}")

    def stop(self) -> int:
        """Ctrl-C, as a user stops it."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode


def test_serve_answers_on_the_given_port(fresh_index, tmp_path, shopper_jpeg):
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    server = Server(["serve", "--index", str(fresh_index), "--port", str(port)], tmp_path,
                    {"SNAPSHOP_ADMIN_TOKEN": TOKEN})
    try:
        server.wait_until_serving(url, timeout=90)
        page = httpx.get(f"{url}/")
        assert page.status_code == 200 and "snapshop" in page.text
        found = httpx.post(f"{url}/search", files={"image": ("a.jpg", shopper_jpeg("square-0"), "image/jpeg")},
                           data={"k": "1"}, timeout=60)
        assert found.status_code == 200 and found.json()["results"][0]["item_id"] == "square-0"
        assert httpx.delete(f"{url}/items/square-0", headers={"Authorization": f"Bearer {TOKEN}"}).status_code == 200
    finally:
        code = server.stop()
    assert code == 0, server.output
    assert f"at {url}/" in server.output and "catalog writes enabled" in server.output
    assert TOKEN not in server.output


def test_serve_a_missing_index_is_a_one_line_error(tmp_path):
    result = CliRunner().invoke(app, ["serve", "--index", str(tmp_path / "nowhere")])
    assert result.exit_code == 1
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "no snapshop index" in lines[0]


def test_serve_a_bad_port_is_a_one_line_error(shared_index):
    result = CliRunner().invoke(app, ["serve", "--index", str(shared_index), "--port", "70000"])
    assert result.exit_code == 1 and "port" in result.stderr and "Traceback" not in result.output


@pytest.fixture(scope="module")
def demo_dir(tmp_path_factory) -> Path:
    """One demo folder for both demo tests: the second run finds the catalog and index built (and is quicker)."""
    return tmp_path_factory.mktemp("demo") / "demo"


def test_demo_ends_by_serving_the_page(demo_dir, tmp_path):
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    server = Server(["demo", "--dir", str(demo_dir), "--items", "30", "--queries", "1"], tmp_path,
                    {"SNAPSHOP_PORT": str(port)})
    try:
        server.wait_until_serving(url, timeout=240)
        assert httpx.get(f"{url}/stats").json()["items"] == 30
        assert httpx.get(f"{url}/").status_code == 200
    finally:
        code = server.stop()
    assert code == 0, server.output
    assert "example searches on simulated shopper photos" in server.output
    assert f"at {url}/" in server.output and "catalog writes disabled" in server.output


def test_demo_no_serve_exits_after_the_searches(demo_dir, tmp_path):
    done = subprocess.run([sys.executable, "-m", "snapshop", "demo", "--dir", str(demo_dir), "--items", "30",
                           "--queries", "1", "--no-serve"], cwd=tmp_path, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr
    assert "example searches" in done.stdout and "serving" not in done.stdout
