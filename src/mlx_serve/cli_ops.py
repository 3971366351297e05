"""Operator commands: ``mlx-serve logs`` and ``mlx-serve pull``, and the table ``status`` and ``ps`` print.

The commands are registered in :mod:`mlx_serve.cli` with ``main.add_command``. They import that
module's helpers inside their bodies, not at the top, because cli.py imports this module.
:func:`format_status` is a pure function of what the router answered, so it is tested without one.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any, TextIO

import click

from mlx_serve.durations import format_size

BAR_WIDTH = 30
FOLLOW_POLL_S = 0.2
ROUTER_LOG_NAMES = ("router.log", "service.log")  # `start --detach`, and the macOS service (see service.py)

config_option = click.option("--config", "-c", "config_path", type=click.Path(dir_okay=False, path_type=Path),
                             default=None, help="models.yaml of the router (default: as `mlx-serve start`).")


# --- status / ps --------------------------------------------------------------------------------

def format_status(ps: dict[str, Any], models: list[dict[str, Any]], now: float | None = None) -> str:
    """The memory bar and one row per configured model, from ``/api/ps`` and ``/v1/models``' ``data``."""
    now = time.time() if now is None else now
    memory = ps.get("memory", {})
    used, budget = int(memory.get("used") or 0), int(memory.get("budget") or 0)
    loaded = {r["name"]: r for r in ps.get("models", [])}
    waiting = (ps.get("queue") or {}).get("by_model", {})
    lines = [_memory_line(used, budget, loaded.values())]
    rows = [("MODEL", "TYPE", "STATE", "PID", "MEMORY", "IN FLIGHT", "WAITING", "EXPIRES")]
    names = [m["id"] for m in models] + [n for n in loaded if n not in {m["id"] for m in models}]
    types = {m["id"]: m.get("type", "") for m in models}
    for name in names:
        r = loaded.get(name)
        if r is None:
            state = next((m.get("state", "stopped") for m in models if m["id"] == name), "stopped")
            rows.append((name, types.get(name, ""), state, "-", "-", "-", str(waiting.get(name, 0) or "-"), "-"))
            continue
        rows.append((name, r.get("type", ""), r.get("state", ""), str(r.get("pid") or "-"),
                     format_size(r.get("size") or 0), str(r.get("requests_in_flight", 0)),
                     str(r.get("requests_waiting", 0)), _expiry(r, now)))
    if len(rows) > 1:
        widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
        lines.append("")
        lines += ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows]
    if not loaded:
        lines.append("no models loaded" + ("" if models else " (none configured)"))
    return "\n".join(lines)


def _memory_line(used: int, budget: int, rows: Any) -> str:
    share = used / budget if budget else 0.0
    filled = min(BAR_WIDTH, round(share * BAR_WIDTH))
    bar = "#" * filled + "-" * (BAR_WIDTH - filled)
    line = f"memory  [{bar}] {format_size(used)} of {format_size(budget)} budget ({share:.0%})"
    spares = used - sum(int(r.get("size") or 0) for r in rows)
    if spares > 0:
        line += f", {format_size(spares)} of it warm spare workers"
    return line


def _expiry(row: dict[str, Any], now: float) -> str:
    if row.get("pinned"):
        return "never (pinned)"
    expires_at = row.get("expires_at")
    if not expires_at:
        return "in use"
    try:
        left = datetime.fromisoformat(expires_at).timestamp() - now
    except ValueError:
        return str(expires_at)
    return f"in {_short_duration(left)}" if left > 0 else "now"


def _short_duration(seconds: float) -> str:
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes:02d}m"
    if minutes:
        return f"{minutes}m{secs:02d}s"
    return f"{secs}s"


# --- logs ---------------------------------------------------------------------------------------

@click.command()
@click.option("--model", "-m", "model", default=None, metavar="NAME",
              help="Show this model's worker log instead of the router's.")
@click.option("--follow", "-f", is_flag=True, help="Keep printing new lines as they are written (Ctrl-C stops).")
@click.option("--lines", "-n", type=click.IntRange(min=0), default=50, show_default=True,
              help="How many of the last lines to print first.")
@config_option
def logs(model: str | None, follow: bool, lines: int, config_path: Path | None) -> None:
    """Print (and with -f, follow) the router's log, or a model's worker log with --model."""
    from mlx_serve.cli import _load
    from mlx_serve.runtime import Runtime

    config = _load(config_path)
    log_dir = config.server.state_path / "logs"
    if model is not None:
        if config.model(model) is None:
            known = ", ".join(m.name for m in config.models) or "none"
            raise click.ClickException(f"no model {model!r} in {config.source}; configured: {known}")
        path = Runtime.for_config(config).worker_log(model)
        missing = f"no log for {model!r} yet at {path}: it is written when the model is first loaded"
    else:
        present = [log_dir / n for n in ROUTER_LOG_NAMES if (log_dir / n).exists()]
        path = max(present, key=lambda p: p.stat().st_mtime) if present else log_dir / ROUTER_LOG_NAMES[0]
        missing = (f"no router log in {log_dir}: the router writes router.log there when started with "
                   f"`mlx-serve start --detach`; in the foreground it logs to its terminal, and as a Linux "
                   f"service to `journalctl --user -u mlx-serve.service`. Worker logs: --model NAME")
    if not path.exists() and not follow:
        raise click.ClickException(missing)
    out = click.get_text_stream("stdout")
    position = 0
    if path.exists():
        text, position = tail(path, lines)
        out.write(text)
        out.flush()
    if not follow:
        return
    if not path.exists():
        click.echo(f"waiting for {path} to be written (Ctrl-C stops)", err=True)
    try:
        for chunk in follow_file(path, position):
            out.write(chunk)
            out.flush()
    except KeyboardInterrupt:
        pass


def tail(path: Path, lines: int, block: int = 8192) -> tuple[str, int]:
    """The last ``lines`` lines of ``path`` and the offset of its end, reading only what it needs."""
    with open(path, "rb") as f:
        end = f.seek(0, os.SEEK_END)
        if lines == 0:
            return "", end
        data, pos = b"", end
        while pos > 0 and data.count(b"\n") <= lines:
            step = min(block, pos)
            pos -= step
            f.seek(pos)
            data = f.read(step) + data
    kept = data.splitlines(keepends=True)[-lines:]
    return b"".join(kept).decode("utf-8", "replace"), end


def follow_file(path: Path, position: int, poll: float = FOLLOW_POLL_S) -> Iterator[str]:
    """What is appended to ``path`` from ``position`` on, forever; starts over when it is rotated or truncated."""
    handle: TextIO | None = None
    inode = None
    try:
        while True:
            try:
                info = path.stat()
            except FileNotFoundError:
                info = None
            if info is not None and (handle is None or info.st_ino != inode or info.st_size < position):
                if handle is not None:  # rotated (a new file) or truncated: finish the old one, then start over
                    rest = handle.read()
                    if rest:
                        yield rest
                    handle.close()
                    position = 0
                handle = open(path, encoding="utf-8", errors="replace", newline="")
                handle.seek(position)
                inode = info.st_ino
            if handle is not None:
                chunk = handle.read()
                if chunk:
                    position = handle.tell()
                    yield chunk
                    continue
            time.sleep(poll)
    finally:
        if handle is not None:
            handle.close()


# --- pull ---------------------------------------------------------------------------------------

@click.command()
@click.argument("name")
@click.option("--revision", default=None, help="A branch, tag or commit of the repository (default: main).")
def pull(name: str, revision: str | None) -> None:
    """Download a model from the Hugging Face hub into its cache, with a progress bar.

    NAME is a repository id such as mlx-community/Qwen3-0.6B-4bit; use it as `path:` in models.yaml.
    """
    from huggingface_hub import constants, snapshot_download
    from huggingface_hub.errors import (GatedRepoError, HFValidationError, HfHubHTTPError, LocalEntryNotFoundError,
                                        RepositoryNotFoundError, RevisionNotFoundError)

    offline = bool(constants.HF_HUB_OFFLINE)
    endpoint = constants.ENDPOINT
    if not offline:
        click.echo(f"pulling {name} from {endpoint} ...", err=True)
    try:
        path = snapshot_download(name, revision=revision)
    except HFValidationError as e:
        raise click.ClickException(f"{name!r} is not a Hugging Face repository id ({e}); "
                                   f"expected OWNER/NAME, e.g. mlx-community/Qwen3-0.6B-4bit") from None
    except LocalEntryNotFoundError:
        # Raised both in offline mode and when the hub cannot be reached, if the cache has no copy.
        if offline:
            raise click.ClickException(f"cannot download {name}: offline mode is on (HF_HUB_OFFLINE is set) and "
                                       f"it is not in the cache ({constants.HF_HUB_CACHE}). Unset HF_HUB_OFFLINE "
                                       f"to download it.") from None
        raise click.ClickException(f"cannot download {name}: no network connection to the Hugging Face hub at "
                                   f"{endpoint}, and it is not in the cache ({constants.HF_HUB_CACHE}). Check "
                                   f"the connection (or HF_ENDPOINT / a proxy) and try again.") from None
    except GatedRepoError:
        raise click.ClickException(f"{name} is gated: accept its terms on https://huggingface.co/{name}, then "
                                   f"log in with `hf auth login` (or set HF_TOKEN) and pull again") from None
    except RepositoryNotFoundError:
        raise click.ClickException(f"no repository {name} on {endpoint} (or it is private: log in with "
                                   f"`hf auth login` or set HF_TOKEN)") from None
    except RevisionNotFoundError:
        raise click.ClickException(f"{name} has no revision {revision!r}") from None
    except HfHubHTTPError as e:
        raise click.ClickException(f"the hub refused to serve {name}: {e}") from None
    except OSError as e:  # a full disk, an unwritable cache
        raise click.ClickException(f"cannot store {name}: {e}") from None
    note = " (offline: the cached copy, not checked for updates)" if offline else ""
    click.echo(f"{name} is in {path}{note}")
    click.echo(f"use it in models.yaml as:  path: {name}")
