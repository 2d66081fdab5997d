"""The serving bundle: one verified unit of user tower, item index, id map and ranker."""
