"""Per-study workflows the notebooks call (one module per study)."""
