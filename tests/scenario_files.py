"""Kept for imports written before tests/support.py: the small scenario lives there now."""

from tests.support import AREA_A, FILES, write

__all__ = ["AREA_A", "FILES", "write"]
