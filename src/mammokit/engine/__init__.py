"""Training and evaluation-time prediction on Lightning: staged schedules, checkpoints, resume."""
