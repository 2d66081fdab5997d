"""Retrieval models: the two-tower model, its features, training and logQ estimation."""
