"""The world: datasets, the torch user model, the Gymnasium environment and reference policies.

Knows nothing of LLMs or graphs.
"""
