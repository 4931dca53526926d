"""Gateway overhead: latency added by the kubetune gateway in front of Ollama, and its CPU cost.

    .venv/bin/python bench/gateway.py                  # 200 requests/s, 1,000 per phase
    .venv/bin/python bench/gateway.py --rate 100 --requests 2000 --content full

The upstream is the fake Ollama of kubetune_dev.fake_ollama (dev/) in its own process
(real HTTP, answers at once: 7 output tokens, streamed one per chunk), so what is measured is the
gateway, not a model. The gateway runs as its own process (``python -m
kubetune.serving.gateway``, prediction log in a temporary directory, content mode as given,
default ``redacted``). With ``--ollama URL --model NAME`` the upstream is a real Ollama instead
(run it at the rate it sustains, e.g. ``--rate 10 --requests 200``; the model's own time then
dominates and the added latency is within its noise). Prints:

- open-loop latency at a fixed rate (requests sent on schedule whatever the answers do; latency
  counted from the scheduled time), p50/p99, for the upstream called directly and through the
  gateway, non-streamed (whole answer) and streamed (first byte and whole stream); the added
  latency is the difference of the percentiles;
- requests per second per core: a closed loop (64 in flight) through the gateway for a few
  seconds, divided by the CPU seconds the gateway process used meanwhile (its /proc stat).

All processes share the machine: on a small one the load generator and the fake compete with
the gateway, which inflates every figure. Asserts nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from statistics import quantiles

import aiohttp
import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from kubetune_dev.fake_ollama import free_port  # noqa: E402

BODY = {"model": "x", "messages": [{"role": "user", "content": "one two three four five six"}]}


def start(args: list[str], url: str) -> subprocess.Popen[bytes]:
    env = {**os.environ, "PYTHONPATH": f"{ROOT}:{ROOT / 'operator'}"}
    process = subprocess.Popen(args, cwd=ROOT, env=env, stdout=subprocess.DEVNULL)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            httpx.get(url, timeout=1)
            return process
        except httpx.HTTPError:
            time.sleep(0.05)
    raise SystemExit(f"{args} did not start")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def open_loop(
    url: str, rate: float, n: int, stream: bool
) -> tuple[list[float], list[float], int]:
    """(first-byte latencies, whole latencies, failures) of ``n`` requests sent at ``rate``/s."""
    first: list[float] = []
    whole: list[float] = []
    failures = 0
    body = {**BODY, "stream": stream}
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def one(scheduled: float) -> None:
            nonlocal failures
            await asyncio.sleep(max(0.0, scheduled - time.perf_counter()))
            try:
                async with session.post(url + "/v1/chat/completions", json=body) as response:
                    await response.content.readany()
                    first.append(time.perf_counter() - scheduled)
                    await response.read()
                    whole.append(time.perf_counter() - scheduled)
                    failures += response.status != 200
            except aiohttp.ClientError:
                failures += 1

        t0 = time.perf_counter() + 0.1
        await asyncio.gather(*(one(t0 + i / rate) for i in range(n)))
    return first, whole, failures


async def closed_loop(url: str, seconds: float, in_flight: int) -> int:
    done = 0
    deadline = time.perf_counter() + seconds
    async with aiohttp.ClientSession() as session:

        async def worker() -> None:
            nonlocal done
            while time.perf_counter() < deadline:
                async with session.post(url + "/v1/chat/completions", json=BODY) as response:
                    await response.read()
                    done += 1

        await asyncio.gather(*(worker() for _ in range(in_flight)))
    return done


def pcts(values: list[float]) -> tuple[float, float]:
    q = quantiles(values, n=100)
    return q[49] * 1000, q[98] * 1000


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rate", type=float, default=200.0)
    parser.add_argument("--requests", type=int, default=1000)
    parser.add_argument("--content", default="redacted", choices=["full", "redacted", "none"])
    parser.add_argument("--seconds", type=float, default=5.0, help="closed-loop duration")
    parser.add_argument("--ollama", help="a real Ollama URL instead of the fake (its model: --model)")
    parser.add_argument("--model", default="support", help="with --ollama: a model registered there")
    args = parser.parse_args()

    upstream_port, gateway_port = free_port(), free_port()
    gateway = f"http://127.0.0.1:{gateway_port}"
    if args.ollama:
        upstream = args.ollama.rstrip("/")
        BODY["model"] = args.model  # direct calls name the model; the gateway rewrites it anyway
        BODY["max_tokens"] = 8  # a model answers at its own pace: keep answers short and alike
        processes: list[subprocess.Popen[bytes]] = []
    else:
        upstream = f"http://127.0.0.1:{upstream_port}"
        fake_code = (
            "import time, kubetune_dev.fake_ollama as f;"
            f"s = f.FakeOllama(); s.port = {upstream_port}; s.start(); time.sleep(1e9)"
        )
        processes = [start([sys.executable, "-c", fake_code], upstream)]
    with tempfile.TemporaryDirectory() as tmp:
        try:
            gw = start(
                [sys.executable, "-m", "kubetune.serving.gateway", "--ollama", upstream,
                 "--model", args.model, "--version", "v1", "--digest", "ab" * 32,
                 "--db", f"{tmp}/log.db", "--listen", f"127.0.0.1:{gateway_port}",
                 "--content", args.content],
                gateway + "/healthz",
            )  # fmt: skip
            processes.append(gw)
            asyncio.run(open_loop(gateway, args.rate, min(200, args.requests), False))  # warm up both
            print(
                f"open loop at {args.rate:.0f} requests/s, {args.requests} requests per phase, "
                f"content {args.content}; milliseconds p50 / p99"
            )
            for stream in (False, True):
                results = {}
                for name, url in (("direct", upstream), ("gateway", gateway)):
                    first, whole, failures = asyncio.run(
                        open_loop(url, args.rate, args.requests, stream)
                    )
                    results[name] = (pcts(first), pcts(whole))
                    label = "stream " if stream else "no-stream"
                    extra = (
                        f"first byte {results[name][0][0]:6.2f} / {results[name][0][1]:6.2f}   "
                        if stream
                        else ""
                    )
                    print(
                        f"  {label:9} {name:8} {extra}whole {results[name][1][0]:6.2f} / "
                        f"{results[name][1][1]:6.2f}   failures {failures}"
                    )
                for i, what in ((1, "whole"),) + (((0, "first byte"),) if stream else ()):
                    d50 = results["gateway"][i][0] - results["direct"][i][0]
                    d99 = results["gateway"][i][1] - results["direct"][i][1]
                    print(f"  added ({'stream' if stream else 'no-stream'}, {what}): "
                          f"p50 {d50:+.2f} ms, p99 {d99:+.2f} ms")  # fmt: skip
            before = cpu_seconds(gw.pid)
            started = time.perf_counter()
            done = asyncio.run(closed_loop(gateway, args.seconds, 64))
            wall = time.perf_counter() - started
            cpu = cpu_seconds(gw.pid) - before
            print(
                f"closed loop, 64 in flight, no-stream: {done / wall:.0f} requests/s using "
                f"{cpu / wall:.2f} cores of the gateway: {done / cpu:.0f} requests/s per core"
            )
        finally:
            for process in processes:
                process.terminate()
                process.wait(10)


if __name__ == "__main__":
    main()
