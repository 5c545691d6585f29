"""Metrics (docs/method.md §5). ``text`` holds pure text metrics; ``sets`` turns one evaluation set's stored
generations and likelihoods into the metrics of the output contract (docs/method.md §11)."""
