"""The real server in a subprocess (`microscope serve`) on a free loopback port, for tests and benches."""
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

from store.settings import Settings


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def settings_env(settings: Settings) -> dict[str, str]:
    """The environment that makes a server process open the same store as `settings`."""
    env = {"MICROSCOPE_DATABASE_URL": settings.db_url, "MICROSCOPE_CACHE_DIR": str(settings.cache_root),
           "MICROSCOPE_DATA_DIR": str(settings.data_dir), "MICROSCOPE_PAGE_CACHE_MB": str(settings.page_cache_mb)}
    if settings.editor_token:
        env["MICROSCOPE_EDITOR_TOKEN"] = settings.editor_token
    return env


class LiveServer:
    """`with LiveServer(settings, workers=2) as server:` serves the store at `server.url` until the block
    ends; `server.log()` is what the server printed (warnings, tracebacks). `source`: another checkout of the
    project to serve instead of this one (bench/load.py --compare runs an older revision beside this one)."""

    def __init__(self, settings: Settings, workers: int = 1, port: int | None = None, startup_timeout: float = 60,
                 source: Path | None = None):
        self.settings, self.workers, self.source = settings, workers, source
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.startup_timeout = startup_timeout
        self.proc: subprocess.Popen | None = None
        self._log = tempfile.NamedTemporaryFile(prefix="microscope-serve-", suffix=".log", delete=False)
        self.final_log: str | None = None

    def command(self) -> list[str]:
        exe = Path(sys.executable).parent / "microscope"
        head = [str(exe)] if exe.exists() else [sys.executable, "-c", "from worker.cli.root import main; main()"]
        return head + ["serve", "--host", "127.0.0.1", "--port", str(self.port), "--workers", str(self.workers)]

    def __enter__(self) -> "LiveServer":
        env = {**os.environ, **settings_env(self.settings)}
        root = self.source or Path(__file__).resolve().parent.parent
        if self.source:
            env["PYTHONPATH"] = str(self.source)
        self.proc = subprocess.Popen(self.command(), env=env, cwd=root, stdout=self._log, stderr=subprocess.STDOUT)
        try:
            self.wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def wait_ready(self) -> None:
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}:\n{self.log()}")
            try:
                if httpx.get(self.url + "/static/style.css", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise TimeoutError(f"server not ready after {self.startup_timeout}s:\n{self.log()}")

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def __exit__(self, *exc) -> None:
        self.stop()
        self.final_log = self.log()
        self._log.close()
        Path(self._log.name).unlink(missing_ok=True)

    def log(self) -> str:
        if self.final_log is not None:
            return self.final_log
        self._log.flush()
        return Path(self._log.name).read_text(errors="replace")
