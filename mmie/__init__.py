"""mmie: reproducible language-unlearning experiments (the method: docs/method.md).

Modules map onto the method: ``data`` (§1), ``models`` / ``demo_model`` (§2), ``generation`` (§3),
``lid`` / ``translit`` (§4), ``metrics`` (§5), ``arms`` (§6), ``provenance`` (§10), ``io`` (the one
place that writes files, atomically).
"""

__version__ = "0.1.0"
# Version of the output contract (docs/method.md §11): bump when a path, column or metric name changes.
SCHEMA_VERSION = 1
