"""Benchmarks with same-run limits (`make bench`); never part of the tests."""
