"""Writes: the write-ahead log, group commit, and the writer that applies upserts and deletes."""
