"""A service principal's token, as a process that calls other services holds it: the setting (environment) wins;
otherwise the file in the secrets folder that `python -m services.auth create-service-token --output` wrote,
re-read whenever it changes, so a re-minted token is picked up without a restart. Used by inference's outbox
shipper (`SERVICE_TOKEN` / `service_token`) and by monitoring's reloads (`MONITORING_TOKEN` / `monitoring_token`)."""
from __future__ import annotations

import pathlib

from services.common.errors import NotReady


class TokenFile:
    def __init__(self, value: str, path: pathlib.Path, variable: str = "SERVICE_TOKEN"):
        self._value = value.strip()
        self._path = path
        self._variable = variable
        self._cached: tuple[tuple[int, int], str] | None = None

    def get(self) -> str:
        """The token; NotReady naming the setting and the file when neither holds one."""
        if self._value:
            return self._value
        try:
            stat = self._path.stat()
        except OSError:
            raise NotReady(f"no token: set {self._variable} or write {self._path}") from None
        version = (stat.st_mtime_ns, stat.st_size)
        if self._cached is None or self._cached[0] != version:
            token = self._path.read_text().strip()
            if not token:
                raise NotReady(f"no token: {self._path} is empty (set {self._variable} or re-mint it)")
            self._cached = (version, token)
        return self._cached[1]
