"""Training: the loop, optimizer and schedule, logging and plots."""
