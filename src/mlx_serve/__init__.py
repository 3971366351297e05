"""mlx-serve: a local model server for MLX with an OpenAI-compatible API.

The router (this package) never imports MLX: models run in worker subprocesses
(the ``mlx_serve_workers`` package) that it starts, supervises and proxies to.
"""

__version__ = "0.1.0"
