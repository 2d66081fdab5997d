"""The ranker: point-in-time features, a DCN-v2 model, training, and the loaded scorer."""
