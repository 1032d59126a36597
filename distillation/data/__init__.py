"""Datasets, collation and batching."""
