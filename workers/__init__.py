"""mlx-serve worker programs: one process per model, the only code that imports MLX.

Run one by hand with ``python -m mlx_serve_workers.<kind> --socket S --model-path DIR``;
the protocol between a worker and the router is described in ``common.py``.
"""
