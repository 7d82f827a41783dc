"""Experiments: protocol, runner, baselines, metrics, reports and the `billp` CLI."""
