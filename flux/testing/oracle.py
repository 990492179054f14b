"""The ground truth the kit measures backends against (re-exported from flux_core.quality)."""

from flux_core.quality import brute_force, distances, recall

__all__ = ["brute_force", "distances", "recall"]
