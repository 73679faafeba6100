"""``python -m benchmarks``: measured figures, ratios against a baseline in the same run."""
