"""Shared mechanics for every topic: config, seeding, distributed setup, run logging,
checkpoints, plots and performance counters. Imports no topic package."""
