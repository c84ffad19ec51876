"""Run a real server and worker as local subprocesses: used by the demo and the integration tests.

The server binds port 0 and reports the port it got through ``--port-file``, so parallel runs never race
for a port.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import httpx


@dataclass
class LocalStack:
    """A server (and optionally workers) on loopback against one data folder / SQLite file."""

    data_dir: Path
    pools_dir: Path | None = None
    log_dir: Path | None = None
    env: dict[str, str] = field(default_factory=dict)
    server: subprocess.Popen[bytes] | None = None
    workers: list[subprocess.Popen[bytes]] = field(default_factory=list)
    url: str = ""
    _logs: list[IO[bytes]] = field(default_factory=list)
    _tokens: dict[str, str] = field(default_factory=dict)

    def token(self, scope: str = "publish", owner: str = "local") -> str:
        """A bearer token of ``scope`` for ``owner`` on this stack (made once with 'plada-server token create')."""
        key = f"{scope}/{owner}"
        if key not in self._tokens:
            cmd = ["token", "create", "--scope", scope, "--name", owner, "--owner", owner]
            out = subprocess.run(
                [sys.executable, "-m", "plada.server.cli", "--json", *cmd],
                env=self._env(),
                capture_output=True,
                text=True,
                check=True,
                timeout=60,
            )
            self._tokens[key] = json.loads(out.stdout)["token"]
        return self._tokens[key]

    def _env(self) -> dict[str, str]:
        env = dict(os.environ) | {"PLADA_DATA_DIR": str(self.data_dir), "PYTHONUNBUFFERED": "1"} | self.env
        if self.pools_dir is not None:
            env["PLADA_POOLS_DIR"] = str(self.pools_dir)
        return env

    def _log(self, name: str) -> Any:
        if self.log_dir is None:
            return subprocess.DEVNULL
        self.log_dir.mkdir(parents=True, exist_ok=True)
        f = open(self.log_dir / f"{name}.log", "ab")  # noqa: SIM115 - closed in stop()
        self._logs.append(f)
        return f

    def start_server(self, timeout: float = 60.0, port: int = 0) -> str:
        """Start uvicorn on ``port`` (0 = any free port) and wait until /healthz answers."""
        port_file = self.data_dir / "server.port"
        port_file.unlink(missing_ok=True)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        cmd = [
            sys.executable,
            "-m",
            "plada.server.cli",
            "serve",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--port-file",
            str(port_file),
            "--no-access-log",
            "--log-level",
            "warning",
        ]
        log = self._log("server")
        self.server = subprocess.Popen(cmd, env=self._env(), stdout=log, stderr=log)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.server.poll() is not None:
                raise RuntimeError(f"server exited with status {self.server.returncode} during start-up")
            if port_file.is_file():
                self.url = f"http://127.0.0.1:{port_file.read_text().strip()}"
                try:
                    if httpx.get(self.url + "/healthz", timeout=2).status_code == 200:
                        return self.url
                except httpx.TransportError:
                    pass
            time.sleep(0.1)
        raise RuntimeError(f"server did not answer within {timeout:.0f} s")

    def start_worker(self, *extra: str) -> subprocess.Popen[bytes]:
        cmd = [sys.executable, "-m", "plada.server.cli", "worker", *extra]
        log = self._log(f"worker{len(self.workers)}")
        proc = subprocess.Popen(cmd, env=self._env(), stdout=log, stderr=log)
        self.workers.append(proc)
        return proc

    def stop_server(self) -> None:
        if self.server is not None and self.server.poll() is None:
            self.server.terminate()
            self.server.wait(timeout=15)

    def stop(self) -> None:
        stop_all([p for p in [*self.workers, self.server] if p is not None])
        for f in self._logs:
            f.close()
        self._logs.clear()

    def __enter__(self) -> LocalStack:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()


def stop_all(procs: list[subprocess.Popen[Any]], timeout: float = 15.0) -> None:
    """SIGTERM every process first (they shut down in parallel), then wait; kill what does not stop in time."""
    for p in procs:
        if p.poll() is None:
            p.terminate()
    for p in procs:
        try:
            p.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class LocalPostgres:
    """A throwaway PostgreSQL cluster (Debian's ``postgresql`` package) on a free loopback port, trust auth:
    what the tests and a developer's laptop use to run plada on PostgreSQL without touching a system cluster.

    initdb and postgres refuse to run as root, so under root the cluster belongs to the ``postgres`` user the
    Debian package creates."""

    bindir: Path
    root: Path | None = None
    port: int = 0
    proc: subprocess.Popen[bytes] | None = None

    @classmethod
    def find(cls) -> LocalPostgres | None:
        found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"))
        exe = str(found[-1]) if found else shutil.which("initdb")
        return cls(bindir=Path(exe).parent) if exe else None

    @property
    def url(self) -> str:
        """SQLAlchemy URL of the server, without a database name."""
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}"

    def _conninfo(self, dbname: str = "postgres") -> str:
        return f"host=127.0.0.1 port={self.port} user=postgres dbname={dbname}"

    def start(self, timeout: float = 60.0) -> None:
        import psycopg

        self.root = Path(tempfile.mkdtemp(prefix="plada-pg-"))
        run_as: list[str] = []
        if os.geteuid() == 0:
            shutil.chown(self.root, "postgres")
            run_as = ["runuser", "-u", "postgres", "--"]
        data, self.port = self.root / "data", free_port()
        initdb = [str(self.bindir / "initdb"), "-D", str(data), "-U", "postgres", "--auth=trust", "-E", "UTF8"]
        subprocess.run([*run_as, *initdb, "--no-sync"], check=True, capture_output=True, timeout=120)
        settings = ["listen_addresses=127.0.0.1", "fsync=off", "max_connections=300"]
        cmd = [*run_as, str(self.bindir / "postgres"), "-D", str(data), "-p", str(self.port), "-k", str(self.root)]
        with open(self.root / "server.log", "wb") as log:
            self.proc = subprocess.Popen(
                cmd + [a for kv in settings for a in ("-c", kv)], stdout=log, stderr=subprocess.STDOUT
            )
        deadline = time.monotonic() + timeout
        while True:
            try:
                psycopg.connect(self._conninfo(), connect_timeout=2).close()
                return
            except psycopg.OperationalError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    tail = (self.root / "server.log").read_text(errors="replace")[-2000:]
                    self.stop()
                    raise RuntimeError(f"postgres did not start: {tail}") from None
                time.sleep(0.2)

    def new_database(self) -> str:
        """A fresh, empty database; returns its SQLAlchemy URL."""
        import psycopg

        name = f"plada_{uuid.uuid4().hex[:12]}"
        with psycopg.connect(self._conninfo(), autocommit=True) as con:
            con.execute(f"CREATE DATABASE {name}")
        return f"{self.url}/{name}"

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            # fast shutdown (disconnects clients) sent to the postmaster itself: runuser does not pass it on
            pid_file = self.root / "data" / "postmaster.pid" if self.root is not None else None
            try:
                os.kill(int(pid_file.read_text().split()[0]) if pid_file else self.proc.pid, signal.SIGINT)
            except (OSError, ValueError, IndexError):
                self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.root is not None:
            shutil.rmtree(self.root, ignore_errors=True)


TEMPLATE = Path(__file__).resolve().parents[1] / "deploy" / "nginx-plada.conf.template"


def nginx_binary() -> str | None:
    return shutil.which("nginx") or next((p for p in ("/usr/sbin/nginx",) if os.access(p, os.X_OK)), None)


@dataclass
class NginxFront:
    """Debian's nginx in front of a LocalStack, configured by the same template the compose stack uses
    (``deploy/nginx-plada.conf.template``), on a free loopback port, with everything under ``folder``."""

    folder: Path
    upstream: str  # host:port of the API
    blob_dir: Path
    url: str = ""
    proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 20.0) -> str:
        nginx = nginx_binary()
        if nginx is None:
            raise RuntimeError("nginx is not installed (Debian: apt-get install nginx-light)")
        self.folder.mkdir(parents=True, exist_ok=True)
        port = free_port()
        server = TEMPLATE.read_text()
        for key, value in {
            "${PLADA_UPSTREAM}": self.upstream,
            "${PLADA_LISTEN}": f"127.0.0.1:{port}",
            "${PLADA_BLOB_DIR}": str(self.blob_dir),
            "${PLADA_CACHE_DIR}": str(self.folder / "cache"),
        }.items():
            server = server.replace(key, value)
        user = "user root root;" if os.geteuid() == 0 else ""  # workers must read the blobs of a private tmp dir
        (self.folder / "nginx.conf").write_text(
            f"{user} daemon off; worker_processes 1; pid {self.folder}/nginx.pid; error_log {self.folder}/error.log;\n"
            f"events {{ worker_connections 1024; }}\n"
            f"http {{ access_log off; client_body_temp_path {self.folder}/body; proxy_temp_path {self.folder}/proxy;\n"
            f"{server}\n}}\n"
        )
        self.proc = subprocess.Popen(
            [nginx, "-c", str(self.folder / "nginx.conf"), "-p", str(self.folder)], stderr=subprocess.DEVNULL
        )
        self.url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"nginx exited: {(self.folder / 'error.log').read_text(errors='replace')[-500:]}")
            try:
                httpx.get(self.url + "/healthz", timeout=2)
                return self.url
            except httpx.TransportError:
                time.sleep(0.1)
        raise RuntimeError("nginx did not answer")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
