"""Helpers used by every command: atomic file writes, run summaries and integrity digests."""
