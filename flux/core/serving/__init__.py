"""Serving: the catalog of indexes, their versions and how they are loaded, gated, swapped and answered."""
