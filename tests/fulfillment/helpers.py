"""Kept for imports written before tests/support.py: the allocation builders live there now."""

from tests.support import DAY, LAT0, LON0, PRODUCTS, at, lot, node, order, square

__all__ = ["DAY", "LAT0", "LON0", "PRODUCTS", "at", "lot", "node", "order", "square"]
