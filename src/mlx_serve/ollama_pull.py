"""``/api/pull`` for mlx-serve: download a configured model's Hugging Face repo into the Hub cache.

mlx-serve has no model registry: ``/api/pull`` takes the name of a model in models.yaml (or its
repo id) and downloads that model's repo with ``huggingface_hub.snapshot_download``, into the
standard Hub cache, reporting progress as Ollama does (``{"status", "digest", "total",
"completed"}`` objects). A model whose ``path`` is a local directory has nothing to download.
Offline (``HF_HUB_OFFLINE=1``) a repo already in the cache succeeds at once and any other fails
at once with a clear error; nothing waits on a network that is not there.

The download runs in a thread (huggingface_hub is synchronous); a client that goes away stops
receiving progress but does not stop the download, which completes in the cache (as an Ollama
pull goes on for other clients).
"""

from __future__ import annotations

import asyncio
import io
import threading
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

from mlx_serve.errors import APIError

Report = Callable[[int, int], None]

PROGRESS_INTERVAL_S = 0.25


class PullError(APIError):
    """A pull that failed; its status says whether to retry (503), fix the name (404), or log in (401/403)."""


def _progress_class(report: Report) -> type:
    """A tqdm class that forwards byte progress to ``report(completed, total)`` and prints nothing."""
    from tqdm.std import tqdm

    lock = threading.Lock()
    bars: dict[int, tuple[int, int]] = {}
    last = [0.0]

    class Progress(tqdm):  # type: ignore[misc, valid-type]
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            kwargs.pop("name", None)  # huggingface_hub's own tqdm takes a name; plain tqdm does not
            kwargs["disable"] = False
            kwargs["file"] = io.StringIO()
            super().__init__(*args, **kwargs)

        def update(self, n: float | None = 1) -> bool | None:
            result = super().update(n)
            if self.unit == "B" and self.total:
                with lock:
                    bars[id(self)] = (int(self.n), int(self.total))
                    # Several byte bars (bytes transferred, bytes written) follow the same files:
                    # report the one furthest along so progress never goes backwards.
                    completed, total = max(bars.values())
                    now = time.monotonic()
                    if now - last[0] >= PROGRESS_INTERVAL_S or completed >= total:
                        last[0] = now
                        report(completed, total)
            return result

    return Progress


def _download(repo_id: str, report: Report) -> str:
    from huggingface_hub import snapshot_download

    return snapshot_download(repo_id, tqdm_class=_progress_class(report))


def _classify(repo_id: str, error: BaseException) -> PullError:
    from huggingface_hub import errors

    name = type(error).__name__
    if isinstance(error, (errors.OfflineModeIsEnabled, errors.LocalEntryNotFoundError)):
        return PullError(503, f"cannot pull {repo_id!r}: it is not in the local Hugging Face cache and the Hub "
                              f"cannot be reached (offline mode, HF_HUB_OFFLINE=1, or no network): {error}",
                         code="offline")
    if isinstance(error, errors.GatedRepoError):
        return PullError(403, f"cannot pull {repo_id!r}: the repo is gated; accept its terms on huggingface.co "
                              f"and log in with `hf auth login` (or set HF_TOKEN) where mlx-serve runs",
                         code="gated_repo")
    if isinstance(error, (errors.RepositoryNotFoundError, errors.RevisionNotFoundError)):
        return PullError(404, f"cannot pull {repo_id!r}: no such repo on the Hugging Face Hub (or it is private: "
                              f"log in with `hf auth login`)", code="repo_not_found")
    if isinstance(error, errors.HfHubHTTPError):
        return PullError(502, f"cannot pull {repo_id!r}: the Hugging Face Hub answered with an error: {error}",
                         code="hub_error")
    if isinstance(error, (OSError, ConnectionError, TimeoutError)) or "Connect" in name or "Timeout" in name:
        return PullError(503, f"cannot pull {repo_id!r}: the Hugging Face Hub cannot be reached: {name}: {error}",
                         code="hub_unreachable")
    return PullError(500, f"cannot pull {repo_id!r}: {name}: {error}", code="pull_failed")


async def pull(repo_id: str) -> AsyncIterator[dict[str, Any]]:
    """Download ``repo_id``, yielding Ollama progress objects and ``{"status": "success"}`` at the end.

    Raises :class:`PullError` when the download fails (after the objects already yielded).
    """
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[tuple[int, int]] = asyncio.Queue()

    def report(completed: int, total: int) -> None:  # called from the download's threads
        loop.call_soon_threadsafe(queue.put_nowait, (completed, total))

    yield {"status": "pulling manifest"}
    download = loop.run_in_executor(None, _download, repo_id, report)
    status = f"pulling {repo_id}"
    while True:
        getter = asyncio.ensure_future(queue.get())
        try:
            done, _ = await asyncio.wait({getter, download}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            if not getter.done():
                getter.cancel()
        if getter in done:
            completed, total = getter.result()
            yield {"status": status, "digest": repo_id, "total": total, "completed": completed}
            continue
        break
    while not queue.empty():  # the last progress reported before the download returned
        completed, total = queue.get_nowait()
        yield {"status": status, "digest": repo_id, "total": total, "completed": completed}
    error = download.exception()
    if error is not None:
        raise _classify(repo_id, error)
    yield {"status": "success"}
