"""What one index's version manager is configured with, and the checks each version's artifact must pass against it.

The config can say what every version of an index must be (backend, dimension, metric), a guard
against serving the wrong data; a numbered version folder must hold the version it is named after.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from flux.core.serving import gate, versions
from flux_core.backend import Metric
from flux_core.errors import ArtifactError
from flux_core.storage import artifact, confine


@dataclass(frozen=True)
class IndexSettings:
    """What the manager needs from the config, in core terms."""

    name: str
    source: Path
    policy: versions.Policy = field(default_factory=versions.Policy)
    gate: gate.GateConfig = field(default_factory=gate.GateConfig)
    search_params: dict[str, float] = field(default_factory=dict)
    # What every version's artifact must say, when set (a guard against serving the wrong data).
    backend: str | None = None
    dimension: int | None = None
    metric: Metric | None = None
    #: When set, every version directory and artifact file must resolve inside it (flux_core.storage.confine).
    data_root: Path | None = None

    def check_version(self, path: Path, version: int) -> artifact.Manifest:
        """What a version must pass before its files are read: it lies inside the data root, holds
        one artifact (a sharded version is the router's to serve) and the number it is named after.
        Returns its manifest."""
        confine.check_artifact(path, self.data_root)
        versions.check_servable(path)
        manifest = artifact.read_manifest(path)
        self.check_number(path, version, manifest)
        return manifest

    def check_number(self, path: Path, version: int, manifest: artifact.Manifest) -> None:
        """A numbered folder must hold the version it is named after: answers name the manifest's
        version, while the control plane and ``SearchRequest.version`` go by the folder's."""
        if path != self.source and manifest.version != version:
            raise ArtifactError(
                f"{artifact.MANIFEST}: the artifact was built as version {manifest.version}, but its folder is "
                f"{path.name}; build it with --version {version} or publish it as folder {manifest.version}"
            )

    def check_expectations(self, manifest: artifact.Manifest) -> None:
        """The artifact is what the config expects of every version (where it expects anything)."""
        actual = {"backend": manifest.backend, "dimension": manifest.dimension, "metric": manifest.metric}
        wanted = {"backend": self.backend, "dimension": self.dimension, "metric": self.metric}
        for key, want in wanted.items():
            if want is not None and want != actual[key]:
                raise ArtifactError(
                    f"{artifact.MANIFEST}: {key} is {_show(actual[key])}, "
                    f"but the config expects {_show(want)} for index {self.name!r}"
                )


def _show(value: object) -> str:
    return repr(getattr(value, "value", value))
