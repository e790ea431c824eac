"""`BuildContext`: what a backend's or a scorer's builder gets while an ensemble is built from its config.

Builders are the ``build`` functions the registry names (e.g. ``ensemblehub_core.generators.hf:build``); the
hub calls them member by member, then scorer by scorer, with one context per ensemble.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ensemblehub_core.generators.base import Generator
    from ensemblehub_core.pool import ModelPool

__all__ = ["BuildContext"]


@dataclass(kw_only=True)
class BuildContext:
    """What builders get: the model pool and the members built so far (scorers may reuse them)."""

    pool: ModelPool
    members: dict[str, Generator]
