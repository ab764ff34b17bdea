"""Each model version's training reference (the drift baseline) and the alias a drift report defaults to, read
through `services.common.model_registry`. References are downloaded once per version and kept in memory (a few
hundred KB each)."""
from __future__ import annotations

import tempfile
import threading

import pandas as pd

from services.common import model_registry as R
from services.common.errors import FailedPrecondition, NotFound
from services.common.telco_csv import parse_telco_csv


class TrainingReferences:
    def __init__(self, registry: R.ModelRegistry, default_alias: str = R.ALIAS_PRODUCTION):
        self.registry = registry
        self.default_alias = default_alias
        self._cache: dict[str, pd.DataFrame] = {}
        self._lock = threading.Lock()

    def get(self, version: str) -> R.VersionInfo:
        return self.registry.get(version)

    def alias_version(self, alias: str | None = None) -> str:
        """The version an alias points at (default: production); FailedPrecondition when none is registered."""
        alias = alias or self.default_alias
        try:
            return self.registry.version_for(alias)
        except NotFound:
            raise FailedPrecondition(f"no version of model {self.registry.name!r} has the alias {alias!r}: train "
                                     f"and register a model first, or pass a reference_id") from None

    def training_reference(self, version: str) -> pd.DataFrame:
        """The version's raw training split (no customer id) as the cleaned Telco frame; cached per version."""
        with self._lock:
            if version in self._cache:
                return self._cache[version]
        self.registry.get(version)  # NotFound for an unknown version before any download
        with tempfile.TemporaryDirectory(prefix="reference-") as tmp:
            data = self.registry.download(version, tmp, R.REFERENCE_TRAIN).read_bytes()
        frame = parse_telco_csv(data, None, 10_000_000).frame
        with self._lock:
            self._cache[version] = frame
        return frame
