"""The ground truth the kit measures backends against (re-exported from flux.core.serving.quality)."""

from flux.core.serving.quality import brute_force, distances, recall

__all__ = ["brute_force", "distances", "recall"]
