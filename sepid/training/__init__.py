"""What every recipe script shares: the experiment start, the training-loop safety net, complete-or-absent checkpoints, DDP reductions, schedules and override files."""
