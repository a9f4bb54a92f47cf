"""Compute side: stream chunks over HTTP, train the model of study.toml (train/models/), report metrics."""
