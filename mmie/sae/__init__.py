"""Layers and SAEs (docs/method.md §7): layer selection, activations, SAEs, features, edits, directions."""
