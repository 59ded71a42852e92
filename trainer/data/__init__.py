"""Labelled text and where it came from: the built-in VADER domains and users' files (sources),
train/val/test splits, test-split lineage carried down a chain of versions, and the drift
reference with the held-out texts it is rebuilt from. May import trainer.common."""
