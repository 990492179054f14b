"""Flux on Apache Beam: build sharded index versions on any Beam runner (docs/scale.md).

``ReadEmbeddings`` reads items into blocks and ``BuildShardedVersion`` builds and publishes a
sharded version from them; a team can put either in its own pipeline. ``flux-build-sharded``
(``python -m flux_beam build``) runs the two from the command line.
"""

from flux_beam.io import Columns, ReadEmbeddings
from flux_beam.items import Block
from flux_beam.pipeline import BuildShardedVersion

__all__ = ["Block", "BuildShardedVersion", "Columns", "ReadEmbeddings"]
