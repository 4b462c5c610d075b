"""Training: optimizer and schedules, checkpoints, metrics and the loop."""
