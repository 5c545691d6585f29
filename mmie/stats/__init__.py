"""Metrics, statistics and gates (docs/method.md §5, §8)."""
