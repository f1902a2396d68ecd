"""The driver's day: route start, stop events and their lifecycle, proofs, positions (ARCHITECTURE.md)."""
