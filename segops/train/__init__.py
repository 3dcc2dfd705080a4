"""Training: the loop, losses, schedules, checkpoints, device and mixed precision."""
