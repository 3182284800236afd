"""Fixture plugin (sshd): filled in by its backend."""
