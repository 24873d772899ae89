"""The policy layer: `PolicyModel` (model.py), building a network from a config (build.py), the
release format (release.py) and what a release may name (registry.py)."""

from octo_like.policy.model import PolicyModel

__all__ = ["PolicyModel"]
