"""Fixture plugin (slurm): filled in by its backend."""
