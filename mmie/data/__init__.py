"""Data (docs/method.md §2-3): strict readers of the input files, cleaning, de-duplication, splits."""
