"""Child processes of the dev cluster: start with a log file, stop the whole process group.

Each process runs in its own session (process group) so that stopping it also stops anything
it spawned, and its pid is recorded in ``<state-dir>/pids/<name>.pid`` so that
``hack/cluster.sh down`` can stop a cluster started by another process.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import socket
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from kubetune_dev.waiting import wait_until


class ComponentError(RuntimeError):
    """A component failed to start or died; the message names it, its log and a fix."""


_PR_SET_PDEATHSIG = 1


def kill_when_parent_dies() -> None:
    """In a child before exec: the kernel SIGKILLs it when the parent process dies.

    Used for clusters owned by a test session, so that even a killed pytest leaves no strays.
    """
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def tail(path: Path, lines: int = 25) -> str:
    """The last ``lines`` lines of a log file ('' when it does not exist)."""
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except FileNotFoundError:
        return ""


def _fix_for(log_text: str) -> str:
    if "address already in use" in log_text:
        return "a port is taken by another process: stop it (or the old cluster: hack/cluster.sh down)"
    return "read the log above; `hack/cluster.sh down` stops leftovers of an earlier run"


@dataclass
class ManagedProcess:
    """One long-running component (etcd, kube-apiserver, ...) with its log and pid file."""

    name: str
    argv: Sequence[str]
    state_dir: Path
    env: Mapping[str, str] | None = None
    die_with_parent: bool = False
    popen: subprocess.Popen[bytes] | None = field(default=None, init=False)

    @property
    def log_path(self) -> Path:
        return self.state_dir / "logs" / f"{self.name}.log"

    @property
    def pid_path(self) -> Path:
        return self.state_dir / "pids" / f"{self.name}.pid"

    def start(self) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self.pid_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as log:
            try:
                self.popen = subprocess.Popen(
                    list(self.argv),
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                    env=dict(self.env) if self.env is not None else None,
                    preexec_fn=kill_when_parent_dies if self.die_with_parent else None,
                )
            except OSError as error:
                raise ComponentError(
                    f"start {self.name}: {error}; fix: run hack/install-tools.sh"
                ) from error
        self.pid_path.write_text(f"{self.popen.pid}\n")

    def running(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def check_alive(self) -> None:
        """Raise ComponentError (with the log tail and a fix) when the process has exited."""
        if self.popen is None:
            raise ComponentError(f"{self.name} was never started")
        code = self.popen.poll()
        if code is not None:
            text = tail(self.log_path)
            raise ComponentError(
                f"{self.name} exited with code {code} (log: {self.log_path}):\n{text}\n"
                f"fix: {_fix_for(text)}"
            )

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM the process group, SIGKILL it after ``timeout`` seconds; forget the pid file."""
        if self.popen is not None and self.popen.poll() is None:
            stop_process_group(self.popen.pid, timeout)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.popen.wait(timeout=1)
        self.pid_path.unlink(missing_ok=True)


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie leader still "exists"; the group is done when only zombies remain.
    return not _only_zombies(pgid)


def _only_zombies(pgid: int) -> bool:
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except (FileNotFoundError, ProcessLookupError, IndexError):
            continue
        state, process_group = fields[0], int(fields[2])
        if process_group == pgid and state != "Z":
            return False
    return True


def stop_process_group(pgid: int, timeout: float = 10.0) -> None:
    """Stop every process in group ``pgid``: SIGTERM, then SIGKILL after ``timeout`` seconds."""
    try:
        os.killpg(pgid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not _group_alive(pgid):
            return
        time.sleep(0.1)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, signal.SIGKILL)
    wait_until(lambda: not _group_alive(pgid), timeout=5, what=f"process group {pgid} to die")


def stop_recorded_processes(state_dir: Path, order: Sequence[str] = (),
                            timeout: float = 10.0) -> list[str]:
    """Stop every process whose pid file is in ``<state_dir>/pids``; return their names.

    Names in ``order`` are stopped first, in that order. Used by ``cluster.sh down`` for a
    cluster started by another (now gone) process. A pid is only signalled when its command
    line still mentions the state dir, so a recycled pid of an unrelated process is left alone.
    """
    stopped: list[str] = []
    pid_dir = state_dir / "pids"
    if not pid_dir.is_dir():
        return stopped
    files = sorted(pid_dir.glob("*.pid"),
                   key=lambda f: list(order).index(f.stem) if f.stem in order else len(order))
    for pid_file in files:
        pid = int(pid_file.read_text().strip() or 0)
        if pid > 0 and _mentions(pid, str(state_dir)):
            stop_process_group(pid, timeout)
            stopped.append(pid_file.stem)
        pid_file.unlink(missing_ok=True)
    return stopped


def _mentions(pid: int, text: str) -> bool:
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ")
    except (FileNotFoundError, ProcessLookupError):
        return False
    return text.encode() in cmdline
