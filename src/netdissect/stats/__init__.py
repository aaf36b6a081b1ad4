"""Streaming statistics of one pass: exact quantiles, top-k images, candidate maps, and the
memory budget they share."""
