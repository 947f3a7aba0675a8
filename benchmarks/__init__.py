"""Benchmarks of padir-t5x: latency/quality, decoding profile, equal-budget training, attention.

Nothing here imports t5x (tests/test_imports.py checks it), so every command runs in the core
environment.
"""
