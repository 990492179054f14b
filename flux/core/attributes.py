"""Item attributes: what filters match on. The storage and the matching live here too.

An item has restrict tokens in namespaces (``{"market": ("US", "SE")}``) and at most one
crowding tag (for example its artist). Attributes travel with builds and upserts.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class ItemAttributes:
    restricts: dict[str, tuple[str, ...]] = field(default_factory=dict)
    crowding_tag: str = ""
