"""Serving side: a plain-Python model runtime and the thin TorchServe adapter over it."""
