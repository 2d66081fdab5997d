"""The online API: serves the live bundle, swaps bundles whole, logs every served list."""
