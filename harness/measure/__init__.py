"""Measurement: latency timing, worker isolation, export, allocator and environment."""
