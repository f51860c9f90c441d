"""Generators of test inputs (no binary fixtures: every case is visible in code)."""
