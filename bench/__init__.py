"""Benchmarks: scripts that measure speed, cost and quality, never timed unit tests."""
