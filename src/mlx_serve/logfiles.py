"""Bounded log files: every file the router writes is rotated, so nothing under state_dir grows forever.

Three kinds of file, three moments to rotate:

* ``events.jsonl`` is written by the router itself, through a ``RotatingFileHandler`` that rolls it
  over as it grows (see :mod:`mlx_serve.events`);
* ``logs/worker-<name>.log`` is written by the worker process (its stdout and stderr), which the
  router cannot rotate under it, so the router rotates it each time it starts that worker;
* ``logs/router.log`` (only with ``mlx-serve start --detach``) is rotated at each detached start.

Rotation keeps ``path.1`` (newest) to ``path.N`` (oldest) and drops what is older.
"""

from __future__ import annotations

from logging.handlers import RotatingFileHandler
from pathlib import Path

EVENTS_MAX_BYTES = 5 * 1000**2
EVENTS_BACKUPS = 3
WORKER_LOG_MAX_BYTES = 10 * 1000**2
WORKER_LOG_BACKUPS = 3
ROUTER_LOG_MAX_BYTES = 10 * 1000**2
ROUTER_LOG_BACKUPS = 3


def rotate_if_larger(path: Path, max_bytes: int, backups: int) -> bool:
    """Rotate ``path`` (``path`` → ``path.1`` → … → ``path.<backups>``) if it is over ``max_bytes``.

    Returns whether it rotated. Meant for a file nobody has open for writing right now (a worker
    log before its worker starts). With ``backups`` 0 the file is simply removed.
    """
    try:
        if path.stat().st_size <= max_bytes:
            return False
    except FileNotFoundError:
        return False
    if backups <= 0:
        path.unlink(missing_ok=True)
        return True
    # The standard library's rollover, so the numbering is the one every log tool expects.
    handler = RotatingFileHandler(path, maxBytes=max_bytes, backupCount=backups, delay=True)
    try:
        handler.doRollover()
    finally:
        handler.close()
    return True

