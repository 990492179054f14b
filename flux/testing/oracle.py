"""The ground truth the kit measures backends against (re-exported from flux.core.quality)."""

from flux.core.quality import brute_force, distances, recall

__all__ = ["brute_force", "distances", "recall"]
