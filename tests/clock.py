"""A clock a test moves forward instead of sleeping: real time plus an offset the test advances, seen by modules
that read `time.time()` / `time.monotonic()` through their own `time` import and by PyJWT's expiry check."""
from __future__ import annotations

import datetime
import time
import types

import jwt.api_jwt


class OffsetClock:
    def __init__(self, monkeypatch, *modules: types.ModuleType):
        self.offset = 0.0
        clock = self
        fake_time = types.SimpleNamespace(time=lambda: time.time() + clock.offset,
                                          monotonic=lambda: time.monotonic() + clock.offset, sleep=time.sleep)
        for module in modules:
            monkeypatch.setattr(module, "time", fake_time)

        class _Datetime(datetime.datetime):
            @classmethod
            def now(cls, tz=None):
                return datetime.datetime.now(tz) + datetime.timedelta(seconds=clock.offset)

        monkeypatch.setattr(jwt.api_jwt, "datetime", _Datetime)

    def advance(self, seconds: float) -> None:
        self.offset += seconds
