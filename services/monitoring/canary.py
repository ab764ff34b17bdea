"""The canary weight: the share of prediction traffic Envoy sends to the `staging` inference instance.

Envoy owns the live value (its runtime); monitoring sets it through the admin listener (loopback) with one
`POST /runtime_modify` carrying BOTH weighted-cluster keys, and persists it in the disk runtime layer
(`services.common.canary_runtime`) so an Envoy restart starts with it. Order: persist first, then apply — the
persisted value is the desired state. If the admin listener does not answer, the call fails UNAVAILABLE saying the
weight IS persisted and will take effect when Envoy (re)starts or when `reconcile` next reaches it; `reconcile`
(run periodically) also re-applies the persisted weight whenever Envoy reports a different one (e.g. an admin-layer
edit by hand), so monitoring stays the single owner of the weight.

The shadow percent (the share of production's requests Envoy mirrors to staging) is a runtime value of the same
kind, kept the same way: a `CanaryControl` over the `SHADOW` share instead of `CANARY_WEIGHT`.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import pathlib
import urllib.error
import urllib.parse
import urllib.request
from typing import Callable

from services.common import canary_runtime as CR
from services.common.errors import FailedPrecondition, InvalidInput, NotReady

log = logging.getLogger("churn.monitoring.canary")


def check_percent(percent: int) -> int:
    if not 0 <= percent <= 100:
        raise InvalidInput("percent", f"must be between 0 and 100, got {percent}")
    return percent


class EnvoyAdmin:
    """The two admin endpoints we use: `GET /runtime` and `POST /runtime_modify`. The URL may be a function, asked
    at each call: under `make run` with port 0, Envoy starts after monitoring and its admin port is read then."""

    def __init__(self, url: str | Callable[[], str], timeout: float = 2.0):
        self._url = url if callable(url) else (lambda: url)
        self._timeout = timeout

    @property
    def url(self) -> str:
        return self._url().rstrip("/")

    def _open(self, request: urllib.request.Request) -> bytes:
        try:
            with urllib.request.urlopen(request, timeout=self._timeout) as response:
                return response.read()
        except urllib.error.HTTPError as exc:
            raise NotReady(f"Envoy admin at {self.url} answered {exc.code} to {request.full_url}: "
                           f"{exc.read()[:200]!r}") from None
        except (OSError, ValueError) as exc:
            raise NotReady(f"Envoy admin at {self.url} is unreachable: {exc}") from None

    def runtime(self) -> dict[str, str]:
        """Final runtime values by key."""
        document = json.loads(self._open(urllib.request.Request(f"{self.url}/runtime")))
        return {key: str(entry.get("final_value", "")) for key, entry in document.get("entries", {}).items()}

    def modify(self, values: dict[str, int]) -> None:
        query = urllib.parse.urlencode({key: str(value) for key, value in values.items()})
        self._open(urllib.request.Request(f"{self.url}/runtime_modify?{query}", method="POST", data=b""))


def weight_from_runtime(values: dict[str, str]) -> int:
    """Staging percent from Envoy's final values of the two keys (normalized, in case they were set by hand)."""
    try:
        production, staging = int(values[CR.PRODUCTION_KEY]), int(values[CR.STAGING_KEY])
    except (KeyError, ValueError):
        raise FailedPrecondition(f"Envoy's runtime has no integer values for {CR.PRODUCTION_KEY} and "
                                 f"{CR.STAGING_KEY}: is the gateway rendered with the canary runtime layers?") from None
    total = production + staging
    return 0 if total <= 0 else round(100 * staging / total)


def shadow_from_runtime(values: dict[str, str]) -> int:
    """The shadow percent from Envoy's final value of its key."""
    try:
        return check_percent(int(values[CR.SHADOW_KEY]))
    except (KeyError, ValueError, InvalidInput):
        raise FailedPrecondition(f"Envoy's runtime has no percent for {CR.SHADOW_KEY}: is the gateway rendered with "
                                 "the shadow mirror?") from None


@dataclasses.dataclass(frozen=True)
class Share:
    """One runtime-controlled percentage: how Envoy's values read as a percent, the runtime keys that set one, and
    where the disk layer keeps it."""

    name: str
    from_runtime: Callable[[dict[str, str]], int]
    keys_for: Callable[[int], dict[str, int]]
    read_persisted: Callable[[pathlib.Path], int | None]
    write_persisted: Callable[[pathlib.Path, int], object]


CANARY_WEIGHT = Share("canary weight", weight_from_runtime, CR.weights_for, CR.read_persisted, CR.write_persisted)
SHADOW = Share("shadow percent", shadow_from_runtime, CR.shadow_for, CR.read_persisted_shadow,
               CR.write_persisted_shadow)


class CanaryControl:
    def __init__(self, admin: EnvoyAdmin, data_dir: pathlib.Path, on_weight=None, share: Share = CANARY_WEIGHT):
        self.admin = admin
        self.data_dir = data_dir
        self.share = share
        self._on_weight = on_weight or (lambda percent: None)

    def get(self) -> int:
        """The value Envoy has now."""
        percent = self.share.from_runtime(self.admin.runtime())
        self._on_weight(percent)
        return percent

    def persisted(self) -> int | None:
        return self.share.read_persisted(self.data_dir)

    def set(self, percent: int) -> tuple[int, int]:
        """Persist, then apply live; returns (percent, previous). Envoy unreachable → NotReady (still persisted)."""
        check_percent(percent)
        try:
            previous = self.get()
        except (NotReady, FailedPrecondition):
            previous = self.persisted()
            previous = percent if previous is None else previous
        self.share.write_persisted(self.data_dir, percent)
        try:
            self.admin.modify(self.share.keys_for(percent))
        except NotReady as exc:
            raise NotReady(f"{self.share.name} {percent}% is persisted and Envoy will start with it, but it is not "
                           f"live yet: {exc.message}") from None
        log.info("%s %s%% (was %s%%)", self.share.name, percent, previous)
        self._on_weight(percent)
        return percent, previous

    def reconcile(self) -> bool:
        """Re-apply the persisted value if Envoy reports another one; True when it changed something."""
        wanted = self.persisted()
        if wanted is None:
            return False
        try:
            live = self.get()
            if live == wanted:
                return False
            self.admin.modify(self.share.keys_for(wanted))
        except (NotReady, FailedPrecondition) as exc:
            log.debug("%s reconcile skipped: %s", self.share.name, exc)
            return False
        log.info("%s re-applied: Envoy had %s%%, persisted %s%%", self.share.name, live, wanted)
        self._on_weight(wanted)
        return True
