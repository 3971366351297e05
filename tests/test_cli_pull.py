"""`mlx-serve pull`: huggingface_hub's download, and plain words when there is no network."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

from support import TEST_ENV, free_port

REPO = "mlx-community/Qwen3-0.6B-4bit"


def pull(name: str, tmp_path: Path, **env: str) -> subprocess.CompletedProcess:
    environ = {**TEST_ENV, "HF_HOME": str(tmp_path / "hf"), **env}
    environ.pop("HF_HUB_CACHE", None)
    return subprocess.run([sys.executable, "-m", "mlx_serve.cli", "pull", name], capture_output=True, text=True,
                          env=environ, timeout=120)


def test_offline_mode_says_so_and_how_to_leave_it(tmp_path: Path) -> None:
    proc = pull(REPO, tmp_path, HF_HUB_OFFLINE="1")
    assert proc.returncode == 1
    assert "offline mode is on (HF_HUB_OFFLINE is set)" in proc.stderr and "Unset HF_HUB_OFFLINE" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_an_unreachable_hub_is_reported_as_no_network(tmp_path: Path) -> None:
    endpoint = f"http://127.0.0.1:{free_port()}"  # nothing listens there: connection refused
    started = time.monotonic()
    proc = pull(REPO, tmp_path, HF_HUB_OFFLINE="0", HF_ENDPOINT=endpoint)
    assert time.monotonic() - started < 60
    assert proc.returncode == 1
    assert f"no network connection to the Hugging Face hub at {endpoint}" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_a_malformed_name_is_refused_before_any_download(tmp_path: Path) -> None:
    proc = pull("not a/valid//id", tmp_path, HF_HUB_OFFLINE="1")
    assert proc.returncode == 1 and "is not a Hugging Face repository id" in proc.stderr


def test_a_cached_model_is_found_offline(tmp_path: Path) -> None:
    # The layout huggingface_hub itself writes: refs/main names the snapshot of the main branch.
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "hf" / "hub" / "models--acme--tiny"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    snapshot = repo / "snapshots" / commit
    snapshot.mkdir(parents=True)
    (snapshot / "config.json").write_text("{}")
    proc = pull("acme/tiny", tmp_path, HF_HUB_OFFLINE="1")
    assert proc.returncode == 0, proc.stderr
    assert str(snapshot) in proc.stdout and "offline" in proc.stdout
    assert "path: acme/tiny" in proc.stdout
