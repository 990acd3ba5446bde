"""Robustness: attacks on a run, defences saved with it, certified smoothing, robust fine-tuning."""
