"""A real `agentcast serve` child process for the benchmarks: started with a config, its URL read from
its first line, stopped with SIGTERM. Standard library only; a helper of bench/, not of the package."""
from __future__ import annotations

import re
import resource
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def raise_fd_limit() -> None:
    """This process's open-file limit to its hard limit (also run in the server child, before exec)."""
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


@dataclass
class Served:
    proc: subprocess.Popen
    db: Path
    port: int

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/ws"


@contextmanager
def agentcast_serve(directory: Path, name: str, config: str, *, stop_timeout: float = 60.0) -> Iterator[Served]:
    """`agentcast serve` on a free loopback port with `directory/name.db` and the TOML `config`, its
    open-file limit raised; SIGTERM (then SIGKILL after `stop_timeout` s) when the block ends."""
    db = directory / f"{name}.db"
    toml = directory / f"{name}.toml"
    toml.write_text(config)
    proc = subprocess.Popen(
        [sys.executable, "-m", "agentcast.transport", "serve", "--port", "0", "--db", str(db), "--log-level", "warning",
         "--config", str(toml)],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, preexec_fn=raise_fd_limit, cwd=ROOT,
    )
    try:
        line = proc.stdout.readline()
        match = re.search(r":(\d+)/ws", line)
        if match is None:
            raise SystemExit(f"agentcast serve did not start (exit {proc.wait()}): {line!r}")
        yield Served(proc, db, int(match.group(1)))
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(stop_timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
