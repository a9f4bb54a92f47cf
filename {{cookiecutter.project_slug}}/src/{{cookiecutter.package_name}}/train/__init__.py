"""Compute side: stream chunks over HTTP, train an LSTM, report metrics."""
