"""Serving under load: throughput and latency of POST /search at concurrency 1, 4 and 16.

    .venv/bin/python bench/load.py [--out bench/out/load] [--items 300] [--requests 256] [--levels 1,4,16]

Builds (once) a Fashion-MNIST catalog of `--items` products, its index, and SIMULATED
shopper photos of them; starts `snapshop serve` on 127.0.0.1 (a free port) in a
subprocess; after a warm-up that searches every photo once, sends per concurrency level
`--requests` searches from that many client threads (keep-alive connections opened before
any timing), the levels taking turns in `--rounds` rounds (by default each round sends every
photo once at every level), and measures throughput and p50/p95/p99 latency, the server's
CPU time per search, this script's own CPU and the CPU that other processes used meanwhile
(Linux /proc). Every request must answer 200 with results; the script exits 1 otherwise, or when
throughput at the highest level is under 1.8x that at level 1. The client threads run on
the same machine as the server and take some of its CPU.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import numpy as np

from snapshop.catalog.manifest import read_catalog
from snapshop.datasets import build_fashion_catalog, build_shopper_queries
from snapshop.search.engine import Engine
from snapshop.settings import load_settings

MIN_SPEED_UP = 1.8


def build(out: Path, items: int, photos: int) -> tuple[Path, list[bytes]]:
    """The index and the SIMULATED shopper photos (built once, reused by later runs)."""
    index = out / "index"
    if not (index / "manifest.json").exists():
        manifest = build_fashion_catalog(out / "catalog", n_items=items)
        engine = Engine.open_or_create(index, load_settings({"index": str(index)}))
        engine.add(read_catalog(manifest), progress=True)
        engine.close()
    queries = out / "queries" / "queries.jsonl"
    if not queries.exists():
        build_shopper_queries(out / "catalog", out / "queries", n_queries=photos)
    rows = [json.loads(line) for line in queries.read_text().splitlines() if line.strip()]
    return index, [(queries.parent / row["image"]).read_bytes() for row in rows]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def start_server(index: Path, port: int, log: Path) -> subprocess.Popen:
    command = [sys.executable, "-m", "snapshop", "serve", "--index", str(index), "--port", str(port)]
    with log.open("w") as out:
        server = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env={**os.environ})
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise SystemExit(f"the server exited:\n{log.read_text()}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200:
                return server
        except httpx.TransportError:
            time.sleep(0.3)
    server.kill()
    raise SystemExit("the server did not start within 120 s")


def cpu_seconds(pid: int) -> float:
    """CPU time (user + system) a Linux process has used so far, all its threads."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def machine_busy_seconds() -> float:
    """CPU time all processes of this Linux machine have used so far (every core, not idle or iowait)."""
    ticks = [int(value) for value in Path("/proc/stat").read_text().split()[1:9]]
    idle, iowait = ticks[3], ticks[4]
    return (sum(ticks) - idle - iowait) / os.sysconf("SC_CLK_TCK")


@dataclass
class Level:
    """What one concurrency level measured, summed over the rounds."""

    concurrency: int
    latencies_ms: list[float] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    seconds: float = 0.0
    server_cpu: float = 0.0
    client_cpu: float = 0.0
    other_cpu: float = 0.0
    batches: int = 0
    searches: int = 0

    def row(self) -> dict:
        p50, p95, p99 = np.percentile(self.latencies_ms, [50, 95, 99])
        return {"concurrency": self.concurrency, "requests": len(self.latencies_ms), "failed": len(self.failures),
                "seconds": round(self.seconds, 2), "throughput": round(len(self.latencies_ms) / self.seconds, 2),
                "p50_ms": round(p50, 1), "p95_ms": round(p95, 1), "p99_ms": round(p99, 1),
                "mean_batch": round(self.searches / self.batches, 2) if self.batches else 0.0,
                "server_cpu_ms_per_search": round(1000 * self.server_cpu / len(self.latencies_ms), 1),
                "server_cores_busy": round(self.server_cpu / self.seconds, 2),
                "client_cores_busy": round(self.client_cpu / self.seconds, 2),
                "other_processes_cores_busy": round(max(0.0, self.other_cpu) / self.seconds, 2),
                "failures": self.failures[:5]}


def open_clients(url: str, concurrency: int) -> list[httpx.Client]:
    """One keep-alive client per concurrent sender, its connection opened, made before any timing.

    Making an httpx client costs about 19 ms of CPU (its TLS context, even for http://): made
    inside the timed loop, 16 of them took a third of a round at concurrency 16.
    """
    clients = [httpx.Client(base_url=url, timeout=120) for _ in range(concurrency)]
    for http in clients:
        http.get("/health").raise_for_status()
    return clients


def send(clients: list[httpx.Client], photos: list[bytes], requests: int, level: Level | None = None) -> None:
    """`requests` searches, one thread per client; latencies and failures go to `level`."""
    level = level or Level(len(clients))
    jobs = iter(range(requests))
    lock = threading.Lock()

    def client(http: httpx.Client) -> None:
        while True:
            with lock:
                number = next(jobs, None)
            if number is None:
                return
            photo = photos[number % len(photos)]
            started = time.perf_counter()
            try:
                response = http.post("/search", files={"image": ("shot.jpg", photo, "image/jpeg")}, data={"k": "10"})
                ok = response.status_code == 200 and bool(response.json()["results"])
                problem = f"{response.status_code}: {response.text[:200]}"
            except httpx.HTTPError as exc:
                ok, problem = False, repr(exc)
            elapsed = (time.perf_counter() - started) * 1000
            with lock:
                level.latencies_ms.append(elapsed)
                if not ok:
                    level.failures.append(problem)

    threads = [threading.Thread(target=client, args=(http,)) for http in clients]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    level.seconds += time.perf_counter() - started


def measure(url: str, server: subprocess.Popen, clients: list[httpx.Client], photos: list[bytes], level: Level,
            requests: int) -> None:
    """One round of a level, with the server's CPU, everyone else's CPU and the batches it made."""
    before, cpu = httpx.get(f"{url}/stats").json()["serve"], cpu_seconds(server.pid)
    busy, own = machine_busy_seconds(), cpu_seconds(os.getpid())
    send(clients, photos, requests, level)
    cpu, after = cpu_seconds(server.pid) - cpu, httpx.get(f"{url}/stats").json()["serve"]
    own = cpu_seconds(os.getpid()) - own
    level.server_cpu += cpu
    level.client_cpu += own
    level.other_cpu += machine_busy_seconds() - busy - cpu - own
    level.batches += after["batches"] - before["batches"]
    level.searches += after["searches"] - before["searches"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("bench/out/load"))
    parser.add_argument("--items", type=int, default=300, help="catalog products")
    parser.add_argument("--photos", type=int, default=64, help="distinct SIMULATED shopper photos")
    parser.add_argument("--requests", type=int, default=256, help="searches per concurrency level")
    parser.add_argument("--levels", default="1,4,16", help="concurrency levels, comma-separated")
    parser.add_argument("--rounds", type=int, default=4,
                        help="levels take turns in this many rounds, so that a change in other load hits them alike")
    args = parser.parse_args()
    levels = [Level(int(concurrency)) for concurrency in args.levels.split(",")]
    args.out.mkdir(parents=True, exist_ok=True)

    index, photos = build(args.out, args.items, args.photos)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    server = start_server(index, port, args.out / "server.log")
    clients: dict[int, list[httpx.Client]] = {}
    try:
        clients = {level.concurrency: open_clients(url, level.concurrency) for level in levels}
        # Warm-up, not counted: every photo once, so that each level finds them all kept already.
        send(clients[levels[-1].concurrency], photos, len(photos))
        for _ in range(args.rounds):
            for level in levels:
                measure(url, server, clients[level.concurrency], photos, level, args.requests // args.rounds)
    finally:
        for http in (http for group in clients.values() for http in group):
            http.close()
        server.send_signal(signal.SIGINT)
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()

    rows = [level.row() for level in levels]
    speed_up = rows[-1]["throughput"] / rows[0]["throughput"]
    summary = {"items": args.items, "photos": f"{len(photos)} SIMULATED shopper photos", "cpus": os.cpu_count(),
               "rounds": args.rounds, "levels": rows,
               f"throughput_c{rows[-1]['concurrency']}_over_c{rows[0]['concurrency']}": round(speed_up, 2)}
    (args.out / "load.json").write_text(json.dumps(summary, indent=2))
    print(f"\n{args.items}-item Fashion-MNIST index, {len(photos)} SIMULATED shopper photos, {rows[0]['requests']} "
          f"searches per level in {args.rounds} rounds, {os.cpu_count()} CPUs\n")
    print("| concurrency | searches/s | p50 ms | p95 ms | p99 ms | mean batch | server CPU ms/search "
          "| server cores busy | client cores busy | other processes' cores busy | failed |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for row in rows:
        print(f"| {row['concurrency']} | {row['throughput']:.2f} | {row['p50_ms']:.0f} | {row['p95_ms']:.0f} | "
              f"{row['p99_ms']:.0f} | {row['mean_batch']:.2f} | {row['server_cpu_ms_per_search']:.0f} | "
              f"{row['server_cores_busy']:.2f} | {row['client_cores_busy']:.2f} | {row['other_processes_cores_busy']:.2f} | {row['failed']} |")
    print(f"\nthroughput at concurrency {rows[-1]['concurrency']} / concurrency {rows[0]['concurrency']}: "
          f"{speed_up:.2f}x")
    failed = sum(row["failed"] for row in rows)
    if failed:
        print(f"FAILED: {failed} requests failed, e.g. {next(row['failures'] for row in rows if row['failures'])}")
    if speed_up < MIN_SPEED_UP:
        print(f"FAILED: the speed-up is under {MIN_SPEED_UP}x")
    if failed or speed_up < MIN_SPEED_UP:
        sys.exit(1)


if __name__ == "__main__":
    main()
