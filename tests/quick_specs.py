"""Task specs for tests that need *a* ready version fast, not a good one (one teacher epoch, no validation)."""

from __future__ import annotations


def two_class_spec(name: str, access: str = "public") -> dict[str, object]:
    """Two classes on the mini world, 0.5 % of the pool: a version in seconds."""
    return {
        "name": name,
        "classes": ["a", "b"],
        "pool_id": "mini-v1",
        "keep": 0.005,
        "access": access,
        "teacher": {"arch": "smallcnn", "epochs": 1},
        "selector": {"name": "energy", "validate_candidates": False},
    }
