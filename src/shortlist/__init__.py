"""Shortlist: MLOps for two-stage recommenders (two-tower retrieval + ranker)."""

__version__ = "0.1.0"
