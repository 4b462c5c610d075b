"""Downstream tasks: fine-tuning, evaluation, linear probes and their metrics."""
