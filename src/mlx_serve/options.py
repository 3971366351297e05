"""Per-kind worker options, as the router sees them: the tables live with the workers.

``mlx_serve_workers.options`` is plain Python (no MLX, no numpy), so reading it keeps the
router's promise never to import a model library.
"""

from mlx_serve_workers.options import OPTIONS, check_options, defaults

__all__ = ["OPTIONS", "check_options", "defaults"]
