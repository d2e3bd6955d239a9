"""Measuring a model: image metrics, evaluation, counts and latency (profiling, timing),
the deploy forms it is timed in (deploy, int8 quantize)."""
