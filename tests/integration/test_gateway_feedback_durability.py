"""Feedback acknowledged by the gateway survives the gateway being killed.

The gateway runs as its own process (``python -m kubetune.serving.gateway``) in front of the
fake Ollama (tests/unit/test_gateway_fake_ollama.py: real HTTP, instant answers). 10,000
predictions are logged, then 10,000 feedback posts go out at full speed (32 at a time); after
the 4,000th acknowledgement the gateway is SIGKILLed and started again on the same log, and the
posts that got no answer are sent again. Afterwards every feedback that got a 200 is in the log
with the score that was acknowledged, and each request id has one feedback row.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import aiohttp
import httpx

from kubetune_dev.fake_ollama import FakeOllama, free_port

N = 10_000
KILL_AFTER = 4_000
CONCURRENCY = 32


class GatewayProcess:
    def __init__(self, upstream: str, db: Path, log: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.args = [
            sys.executable, "-m", "kubetune.serving.gateway", "--ollama", upstream,
            "--model", "support", "--version", "v1", "--digest", "cd" * 32, "--db", str(db),
            "--listen", f"127.0.0.1:{self.port}", "--content", "none",
        ]  # fmt: skip
        self.log = log
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with self.log.open("ab") as out:
            self.process = subprocess.Popen(
                self.args, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
            )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                if httpx.get(self.url + "/healthz", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                time.sleep(0.05)
        raise AssertionError("gateway did not start:\n" + self.log.read_text()[-3000:])

    def kill(self) -> None:
        assert self.process is not None
        os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(10)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(20)


def score_of(i: int) -> int:
    return i % 5 + 1


async def log_predictions(url: str) -> None:
    limit = asyncio.Semaphore(CONCURRENCY)
    async with aiohttp.ClientSession(url) as client:

        async def one(i: int) -> None:
            async with (
                limit,
                client.post(
                    "/v1/chat/completions",
                    json={"messages": [{"role": "user", "content": f"q{i}"}]},
                    headers={"x-request-id": f"r{i}"},
                ) as response,
            ):
                assert response.status == 200

        await asyncio.gather(*(one(i) for i in range(N)))


async def post_feedback(
    gateway: GatewayProcess, acked: dict[str, int], ids: list[int], kill: bool
) -> list[int]:
    """Post the feedback of ``ids``; SIGKILL the gateway after KILL_AFTER acks if ``kill``.
    The ids that got no answer."""
    limit = asyncio.Semaphore(CONCURRENCY)
    failed: list[int] = []
    async with aiohttp.ClientSession(gateway.url) as client:

        async def one(i: int) -> None:
            async with limit:
                try:
                    async with client.post(
                        "/v1/feedback", json={"requestId": f"r{i}", "score": score_of(i)}
                    ) as response:
                        assert response.status == 200, await response.text()
                except aiohttp.ClientError:
                    failed.append(i)
                    return
                acked[f"r{i}"] = score_of(i)
                if kill and len(acked) == KILL_AFTER:
                    gateway.kill()

        await asyncio.gather(*(one(i) for i in ids))
    return failed


def test_every_acknowledged_feedback_survives_a_sigkill_and_none_is_duplicated(
    tmp_path: Path,
) -> None:
    fake = FakeOllama().start()
    db = tmp_path / "log.db"
    gateway = GatewayProcess(fake.url, db, tmp_path / "gateway.log")
    try:
        started = time.monotonic()
        gateway.start()
        asyncio.run(log_predictions(gateway.url))
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:  # the writer is asynchronous
            with sqlite3.connect(db) as check:
                if check.execute("SELECT count(*) FROM predictions").fetchone()[0] == N:
                    break
            time.sleep(0.05)

        acked: dict[str, int] = {}
        t0 = time.monotonic()
        failed = asyncio.run(post_feedback(gateway, acked, list(range(N)), kill=True))
        t1 = time.monotonic()
        assert len(acked) >= KILL_AFTER and failed, "the kill came after every post"
        gateway.start()  # the same port and log
        t2 = time.monotonic()
        first_pass = dict(acked)
        # Sent again: written or not before the kill, one row either way.
        assert asyncio.run(post_feedback(gateway, acked, failed, kill=False)) == []
        t3 = time.monotonic()
        print(f"phases {t0 - started:.1f} {t1 - t0:.1f} {t2 - t1:.1f} {t3 - t2:.1f}")
        elapsed = time.monotonic() - started
        gateway.kill()  # no clean shutdown: what is there was committed

        with sqlite3.connect(db) as check:
            rows = check.execute("SELECT request_id, score FROM feedback").fetchall()
            per_id = check.execute(
                "SELECT count(*) FROM feedback GROUP BY request_id HAVING count(*) > 1"
            ).fetchall()
        stored = dict(rows)
        assert len(rows) == len(stored) == N and per_id == []
        missing = [rid for rid, score in first_pass.items() if stored.get(rid) != score]
        assert missing == [], f"{len(missing)} acknowledged feedbacks lost"
        assert all(stored[rid] == score for rid, score in acked.items())
        print(f"{N} feedbacks in {elapsed:.1f} s, {len(failed)} resent after the kill")
    finally:
        gateway.stop()
        fake.stop()
