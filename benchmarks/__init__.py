"""Reproducible benchmarks: JSON results and PNG plots (`embedopt bench`)."""
