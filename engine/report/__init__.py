"""What a run reports: metrics, ``metrics.json`` and the summary, the document and its plots,
and the comparison of two runs."""
