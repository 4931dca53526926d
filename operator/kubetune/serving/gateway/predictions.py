"""The prediction and feedback log: SQLite in WAL mode, written by one thread.

Every chat completion request becomes a :class:`Prediction` row: time, request id, version and
digest, latency, time to first token, token counts, finish reason, route, error, and the prompt
and answer as the content mode allows (:mod:`.redaction`). Requests never wait for the log:
:meth:`PredictionLog.record` puts the prediction on a queue and returns; the writer thread
redacts and inserts whatever has queued up in one transaction (``synchronous=NORMAL``: a
committed batch survives the process being killed; a power loss may take the last batches).
Predictions still queued when the process is killed are lost; at most ``max_pending`` wait.

Feedback goes through the same queue, so a prediction recorded before the feedback arrived is
always written first (a client that rates an answer it just received finds it). A feedback is
written with ``synchronous=FULL`` (the WAL is fsynced at commit) before :meth:`feedback`
returns: an acknowledged feedback survives a crash. One feedback per request id: a second one
replaces the first (score, comment, time); the score histogram and the drift tracker's feedback
windows count the first only (the tracker only for answers of the local model: a fallback's
answer says nothing about the served version).

Bounds: rows older than ``retention_days`` are deleted at start and hourly; above
``max_db_bytes`` (checked every 100 predictions) the oldest predictions and feedback are
deleted down to 90 % of it and the freed pages returned to the file system
(``auto_vacuum=INCREMENTAL``). The WAL is checkpointed automatically and truncated to 64 MiB.
"""

from __future__ import annotations

import logging
import queue
import sqlite3
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from kubetune.serving.drift import DriftTracker
from kubetune.serving.gateway.metrics import GatewayMetrics
from kubetune.serving.gateway.redaction import scanner_redact, stored_text
from kubetune.serving.gateway.settings import GatewaySettings

log = logging.getLogger("kubetune.serving.gateway")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS predictions (
    id INTEGER PRIMARY KEY,
    time REAL NOT NULL,
    request_id TEXT NOT NULL,
    version TEXT,
    digest TEXT,
    route TEXT NOT NULL,
    stream INTEGER NOT NULL,
    latency_s REAL,
    ttft_s REAL,
    prompt_tokens INTEGER,
    completion_tokens INTEGER,
    finish_reason TEXT NOT NULL,
    error TEXT,
    content_mode TEXT NOT NULL,
    prompt TEXT,
    response TEXT
);
CREATE INDEX IF NOT EXISTS predictions_request_id ON predictions (request_id);
CREATE INDEX IF NOT EXISTS predictions_time ON predictions (time);
CREATE TABLE IF NOT EXISTS feedback (
    request_id TEXT PRIMARY KEY,
    time REAL NOT NULL,
    score INTEGER NOT NULL,
    comment TEXT,
    version TEXT
);
CREATE INDEX IF NOT EXISTS feedback_time ON feedback (time);
"""
_BATCH = 512
_SIZE_CHECK_EVERY = 100
_RETENTION_CHECK_S = 3600.0


@dataclass
class Prediction:
    """One request as the log keeps it; ``prompt`` and ``response`` are still unredacted."""

    time: float
    request_id: str
    version: str | None
    digest: str | None
    route: str
    stream: bool
    latency_s: float | None
    ttft_s: float | None
    prompt_tokens: int | None
    completion_tokens: int | None
    finish_reason: str
    error: str | None
    prompt: str | None
    response: str | None


FeedbackOutcome = Literal["created", "updated", "unknown_request"]


@dataclass
class _Feedback:
    request_id: str
    score: int
    comment: str | None
    done: Future[FeedbackOutcome]


class _Stop:
    pass


class PredictionLog:
    """The log of one gateway. :meth:`start` opens the file and starts the writer thread."""

    def __init__(
        self, settings: GatewaySettings, metrics: GatewayMetrics, drift: DriftTracker | None = None
    ) -> None:
        self.settings = settings
        self.metrics = metrics
        self.drift = drift
        self._queue: queue.SimpleQueue[Prediction | _Feedback | _Stop] = queue.SimpleQueue()
        # Each counter has one writer (event loop, writer thread), so their difference is exact.
        self._queued = 0
        self._written = 0
        self._thread: threading.Thread | None = None
        self._writes_since_size_check = 0
        self._last_retention = 0.0

    def start(self) -> None:
        """Open (or create) the database and start writing; loads the redactor if needed."""
        db = connect(self.settings.db_path)
        if self.settings.content == "redacted":
            scanner_redact()  # at start, not on the first request
        self._enforce_retention(db)
        self._thread = threading.Thread(
            target=self._run, args=(db,), name="kubetune-prediction-log", daemon=True
        )
        self._thread.start()

    def close(self) -> None:
        """Write what is queued and stop the writer."""
        if self._thread is not None:
            self._queue.put(_Stop())
            self._thread.join()
            self._thread = None

    def record(self, prediction: Prediction) -> bool:
        """Queue ``prediction``; False (and counted as dropped) when the queue is full."""
        if self._queued - self._written >= self.settings.max_pending:
            self.metrics.errors.labels(
                self.settings.deployment_label, prediction.version or "none", "log_dropped"
            ).inc()
            return False
        self._queued += 1
        self._queue.put(prediction)
        return True

    def feedback(self, request_id: str, score: int, comment: str | None) -> Future[FeedbackOutcome]:
        """Write a feedback durably after every prediction queued so far; what happened."""
        done: Future[FeedbackOutcome] = Future()
        self._queue.put(_Feedback(request_id, score, comment, done))
        return done

    # --- the writer thread ------------------------------------------------------------------

    def _run(self, db: sqlite3.Connection) -> None:
        try:
            while True:
                items = [self._queue.get()]
                while len(items) < _BATCH:
                    try:
                        items.append(self._queue.get_nowait())
                    except queue.Empty:
                        break
                predictions: list[Prediction] = []
                for item in items:
                    if isinstance(item, Prediction):
                        predictions.append(item)
                        continue
                    self._write_predictions(db, predictions)
                    predictions = []
                    if isinstance(item, _Stop):
                        return
                    self._write_feedback(db, item)
                self._write_predictions(db, predictions)
                self._maintain(db)
        finally:
            db.close()

    def _write_predictions(self, db: sqlite3.Connection, predictions: list[Prediction]) -> None:
        if not predictions:
            return
        mode, limit = self.settings.content, self.settings.max_stored_chars
        rows = [
            (
                p.time,
                p.request_id,
                p.version,
                p.digest,
                p.route,
                int(p.stream),
                p.latency_s,
                p.ttft_s,
                p.prompt_tokens,
                p.completion_tokens,
                p.finish_reason,
                p.error,
                mode,
                stored_text(p.prompt, mode, limit),
                stored_text(p.response, mode, limit),
            )
            for p in predictions
        ]
        try:
            with db:
                db.executemany(
                    "INSERT INTO predictions (time, request_id, version, digest, route, stream,"
                    " latency_s, ttft_s, prompt_tokens, completion_tokens, finish_reason, error,"
                    " content_mode, prompt, response) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                    rows,
                )
        except sqlite3.Error as error:
            log.error("prediction log: %d predictions not written: %s", len(rows), error)
        self._written += len(predictions)
        self._writes_since_size_check += len(predictions)

    def _write_feedback(self, db: sqlite3.Connection, item: _Feedback) -> None:
        try:
            db.execute("PRAGMA synchronous=FULL")
            try:
                with db:
                    row = db.execute(
                        "SELECT version, route FROM predictions WHERE request_id = ?"
                        " ORDER BY id DESC LIMIT 1",
                        (item.request_id,),
                    ).fetchone()
                    if row is None:
                        item.done.set_result("unknown_request")
                        return
                    existed = db.execute(
                        "SELECT 1 FROM feedback WHERE request_id = ?", (item.request_id,)
                    ).fetchone()
                    db.execute(
                        "INSERT INTO feedback (request_id, time, score, comment, version)"
                        " VALUES (?,?,?,?,?) ON CONFLICT (request_id) DO UPDATE SET"
                        " time = excluded.time, score = excluded.score,"
                        " comment = excluded.comment",
                        (item.request_id, time.time(), item.score, item.comment, row[0]),
                    )
            finally:
                db.execute("PRAGMA synchronous=NORMAL")
        except sqlite3.Error as error:
            item.done.set_exception(error)
            return
        if not existed:
            self.metrics.feedback_score.labels(
                self.settings.deployment_label, row[0] or "none"
            ).observe(item.score)
            if self.drift is not None and row[0] is not None and row[1] == "local":
                self.drift.observe_feedback(row[0], item.score)
        item.done.set_result("updated" if existed else "created")

    def _maintain(self, db: sqlite3.Connection) -> None:
        try:
            if time.monotonic() - self._last_retention > _RETENTION_CHECK_S:
                self._enforce_retention(db)
            if self._writes_since_size_check >= _SIZE_CHECK_EVERY:
                self._writes_since_size_check = 0
                self._enforce_size(db)
        except sqlite3.Error as error:
            log.error("prediction log: maintenance failed: %s", error)

    def _enforce_retention(self, db: sqlite3.Connection) -> None:
        self._last_retention = time.monotonic()
        cutoff = time.time() - self.settings.retention_days * 86400
        with db:
            db.execute("DELETE FROM predictions WHERE time < ?", (cutoff,))
            db.execute("DELETE FROM feedback WHERE time < ?", (cutoff,))
        db.execute("PRAGMA incremental_vacuum")

    def _enforce_size(self, db: sqlite3.Connection) -> None:
        used, limit = database_bytes(db), self.settings.max_db_bytes
        if used <= limit:
            return
        with db:
            (count,) = db.execute("SELECT count(*) FROM predictions").fetchone()
            # Rows are of similar size: keep what fills 90 % of the limit, the newest.
            drop = max(count - int(count * 0.9 * limit / used), 1)
            row = db.execute(
                "SELECT time FROM predictions ORDER BY time LIMIT 1 OFFSET ?", (drop - 1,)
            ).fetchone()
            if row is None:
                return
            db.execute("DELETE FROM predictions WHERE time <= ?", (row[0],))
            db.execute("DELETE FROM feedback WHERE time <= ?", (row[0],))
        db.execute("PRAGMA incremental_vacuum")
        log.warning("prediction log above %d bytes: the oldest %d predictions deleted", limit, drop)


def connect(path: Path) -> sqlite3.Connection:
    """The log's database at ``path``, created if missing, in WAL mode."""
    db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
    db.isolation_level = "DEFERRED"  # `with db:` opens and commits a transaction
    db.execute("PRAGMA auto_vacuum=INCREMENTAL")  # only takes effect on a new file
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=NORMAL")
    db.execute(f"PRAGMA journal_size_limit={64 << 20}")
    db.execute("PRAGMA busy_timeout=5000")
    db.executescript(_SCHEMA)
    return db


def database_bytes(db: sqlite3.Connection) -> int:
    """Pages in use times the page size (the main file; the WAL is bounded apart)."""
    (pages,) = db.execute("PRAGMA page_count").fetchone()
    (free,) = db.execute("PRAGMA freelist_count").fetchone()
    (size,) = db.execute("PRAGMA page_size").fetchone()
    return int((pages - free) * size)
