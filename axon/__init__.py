"""Axon: a deep-learning compiler."""
