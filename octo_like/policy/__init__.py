"""The policy layer: what a release may name (registry.py)."""
