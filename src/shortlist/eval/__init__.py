"""Full-ranking offline evaluation: metrics, the harness, and the baselines."""
