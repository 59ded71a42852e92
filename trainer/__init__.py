"""Trainer: builds, archives, monitors and rolls out the served classifier."""
