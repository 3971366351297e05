"""Where a running router keeps its files: the private socket directory, logs, the pidfile.

The runtime directory holds the workers' Unix sockets. It is created with mode 0700 and must be
owned by us, so that no other local user can reach a model except through the router (the
sockets themselves may be world-writable: uvicorn makes them so).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import stat
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from mlx_serve.config import Config

# Unix socket paths are limited to 104 bytes on macOS and 108 on Linux.
MAX_SOCKET_PATH = 100

OPENBLAS_CANDIDATES = (
    "/usr/lib/x86_64-linux-gnu/openblas-pthread/libopenblas.so.0",
    "/usr/lib/aarch64-linux-gnu/openblas-pthread/libopenblas.so.0",
    "/usr/lib64/libopenblas.so.0",
    "/usr/lib/libopenblas.so.0",
)


class RuntimeDirError(RuntimeError):
    pass


def default_runtime_dir(port: int) -> Path:
    base = os.environ.get("XDG_RUNTIME_DIR")
    if base and Path(base).is_dir():
        return Path(base) / f"mlx-serve-{port}"
    # macOS's $TMPDIR is already per user; elsewhere add the uid so users do not collide.
    return Path(tempfile.gettempdir()) / f"mlx-serve-{os.getuid()}-{port}"


@dataclass
class Runtime:
    """The files of one running router."""

    runtime_dir: Path
    state_dir: Path

    @classmethod
    def for_config(cls, config: Config) -> Runtime:
        server = config.server
        runtime_dir = Path(server.runtime_dir).expanduser() if server.runtime_dir else default_runtime_dir(server.port)
        return cls(runtime_dir=runtime_dir, state_dir=server.state_path)

    @property
    def log_dir(self) -> Path:
        return self.state_dir / "logs"

    @property
    def footprints_path(self) -> Path:
        return self.state_dir / "footprints.json"

    def worker_log(self, model_name: str) -> Path:
        return self.log_dir / f"worker-{safe_filename(model_name)}.log"

    def socket_path(self, index: int) -> Path:
        path = self.runtime_dir / f"w{index}.sock"
        if len(str(path)) > MAX_SOCKET_PATH:
            raise RuntimeDirError(f"socket path {path} is longer than {MAX_SOCKET_PATH} characters; "
                                  f"set server.runtime_dir in models.yaml to a shorter directory")
        return path

    def prepare(self) -> None:
        """Create the private runtime directory, clearing sockets a dead router left behind."""
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.runtime_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        info = self.runtime_dir.lstat()
        if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.getuid():
            raise RuntimeDirError(f"{self.runtime_dir} is not a directory owned by this user; "
                                  f"remove it or set server.runtime_dir elsewhere")
        os.chmod(self.runtime_dir, 0o700)
        for entry in self.runtime_dir.iterdir():
            if entry.suffix == ".sock":
                with contextlib.suppress(OSError):
                    entry.unlink()

    def remove(self) -> None:
        shutil.rmtree(self.runtime_dir, ignore_errors=True)


def safe_filename(name: str) -> str:
    return "".join(c if c.isalnum() or c in "._-" else "_" for c in name)


def worker_environment(fast_blas: bool) -> dict[str, str]:
    """The environment workers run in: ours, unbuffered, offline-safe, with OpenBLAS preloaded where wanted."""
    env = dict(os.environ)
    env["PYTHONUNBUFFERED"] = "1"
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    if fast_blas and sys.platform.startswith("linux"):
        blas = find_openblas()
        if blas and blas not in env.get("LD_PRELOAD", ""):
            # MLX's CPU wheel links netlib's reference BLAS; OpenBLAS exports the same unversioned
            # cblas symbols, so preloading it is a drop-in (60x on a 1024² matmul here, same results).
            env["LD_PRELOAD"] = ":".join(p for p in (blas, env.get("LD_PRELOAD")) if p)
    return env


def find_openblas() -> str | None:
    override = os.environ.get("MLX_SERVE_OPENBLAS")
    if override is not None:
        return override or None
    return next((p for p in OPENBLAS_CANDIDATES if os.path.exists(p)), None)
