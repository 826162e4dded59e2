"""Helpers used by every command: atomic file writes and run summaries."""
