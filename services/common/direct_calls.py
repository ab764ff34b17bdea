"""Calls that reached a service port directly instead of through the gateway.

Envoy stamps every request it forwards with the gateway secret (`x-churn-gateway`, overwritten on the way in, so a
client's own value never passes through); a call without the right value came straight to the port. Two things
differ for such calls:
- **Request ids.** Behind Envoy the `x-request-id` is Envoy's own uuid (it regenerates ids of edge requests) and a
  retry reuses it, so prediction ids derived from it make a retried request a duplicate monitoring drops. A direct
  caller chooses its id freely and may repeat it; its id is kept as a prefix (for the logs) and a server nonce
  makes it unique, so a repeated id never silently drops a prediction. A direct caller's retry is logged twice.
- **Rate limits.** Envoy limits login/register per client address; a direct caller skipped that. The `auth` rate
  class is enforced here per peer address for direct calls (through Envoy every peer is Envoy, which already
  limited the real client), with the same `AUTH_RATE_PER_MINUTE`.
"""
from __future__ import annotations

import collections
import hmac
import threading
import time
import uuid
from typing import Callable, Mapping

from services.common.errors import ResourceExhausted

GATEWAY_HEADER = "x-churn-gateway"
CALLER_ID_CHARS = 40  # a direct caller's request id kept as the prefix of the one the service uses
MAX_TRACKED_PEERS = 10_000


def via_gateway(metadata: Mapping[str, str], secret: str) -> bool:
    """True when the call carries the gateway secret (constant-time; an empty secret never matches)."""
    presented = metadata.get(GATEWAY_HEADER, "")
    return bool(secret) and bool(presented) and hmac.compare_digest(presented.encode(), secret.encode())


def request_id(sent: str | None, through_gateway: bool) -> str:
    """The request id this call is served and logged under (prediction ids derive from it)."""
    if sent and through_gateway:
        return sent[:128]
    nonce = uuid.uuid4().hex
    return f"{sent[:CALLER_ID_CHARS]}.{nonce[:16]}" if sent else nonce


def peer_host(peer: str) -> str:
    """`ipv4:127.0.0.1:5555` -> `ipv4:127.0.0.1`, `ipv6:[::1]:5555` -> `ipv6:[::1]` (the port changes per call)."""
    host, _, port = peer.rpartition(":")
    return host if host and port.isdigit() else peer


class PeerRateLimit:
    """A token bucket per peer host: `per_minute` calls a minute, bursting to `per_minute`. Too many ->
    ResourceExhausted (RESOURCE_EXHAUSTED, like Envoy's limit: the caller must wait, not retry at once)."""

    def __init__(self, per_minute: int, clock: Callable[[], float] = time.monotonic):
        self._rate = per_minute / 60.0
        self._burst = float(per_minute)
        self._clock = clock
        self._buckets: collections.OrderedDict[str, tuple[float, float]] = collections.OrderedDict()
        self._lock = threading.Lock()

    def check(self, peer: str) -> None:
        key, now = peer_host(peer), self._clock()
        with self._lock:
            tokens, at = self._buckets.pop(key, (self._burst, now))
            tokens = min(self._burst, tokens + (now - at) * self._rate)
            if tokens < 1.0:
                self._buckets[key] = (tokens, now)
                raise ResourceExhausted(f"too many requests from this address; retry in "
                                        f"{int((1.0 - tokens) / self._rate) + 1} s")
            self._buckets[key] = (tokens - 1.0, now)
            while len(self._buckets) > MAX_TRACKED_PEERS:
                self._buckets.popitem(last=False)
