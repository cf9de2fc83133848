"""Latency measurement and benchmark tables."""
