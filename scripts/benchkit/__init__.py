"""The pieces of scripts/bench.py: results, clients, processes."""
