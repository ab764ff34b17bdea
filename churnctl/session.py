"""Where churnctl keeps its login and how it calls the gateway.

The session (gateway address, API keys given at login, the access token and its expiry) is one JSON file in the
user's config dir (click's app dir: $XDG_CONFIG_HOME/churnctl on Linux), created 0600 in a 0700 folder: it holds a
bearer token. Every call goes through the gateway with the client key, or the ops key for ops-only RPCs (from the
access table in protos/, like the gateway itself).
"""
from __future__ import annotations

import dataclasses
import json
import os
import pathlib
import time

import click
import grpc
from grpc_status import rpc_status

from churn.v1 import auth_pb2_grpc, inference_pb2_grpc, monitoring_pb2_grpc
from google.rpc import error_details_pb2
from services.common.access import access_table

APP = "churnctl"
SESSION_FILE = "session.json"


class CliError(Exception):
    """A failure to report in one line (exit status 1), never a traceback."""


class Options:
    """The global options of this invocation (gateway, keys), set once by the command line's callback."""
    gateway: str | None = None
    api_key: str | None = None
    ops_api_key: str | None = None


def session_path() -> pathlib.Path:
    return pathlib.Path(click.get_app_dir(APP)) / SESSION_FILE


@dataclasses.dataclass
class Session:
    gateway: str
    api_key: str = ""
    ops_api_key: str = ""
    token: str = ""
    expires_at: float = 0.0
    username: str = ""

    def save(self) -> pathlib.Path:
        path = session_path()
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        path.parent.chmod(0o700)
        tmp = path.with_name(path.name + ".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "w") as handle:
            json.dump(dataclasses.asdict(self), handle)
        tmp.replace(path)
        return path

    @classmethod
    def load(cls) -> "Session | None":
        path = session_path()
        if not path.exists():
            return None
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in json.loads(path.read_text()).items() if k in known})


@dataclasses.dataclass
class Client:
    """Stubs on one channel to the gateway, and the metadata each RPC needs."""
    gateway: str
    api_key: str
    ops_api_key: str
    token: str

    def __post_init__(self):
        self.channel = grpc.insecure_channel(self.gateway)
        self.auth = auth_pb2_grpc.AuthServiceStub(self.channel)
        self.inference = inference_pb2_grpc.InferenceServiceStub(self.channel)
        self.monitoring = monitoring_pb2_grpc.MonitoringServiceStub(self.channel)
        self._ops_only = {(e.service.rsplit(".", 1)[-1], e.method) for e in access_table().values() if e.ops_key_only}

    def call(self, stub, method: str, request, *, timeout: float = 60, with_token: bool = True):
        service = type(stub).__name__.removesuffix("Stub")
        ops = (service, method) in self._ops_only
        key = self.ops_api_key if ops else self.api_key
        if not key:
            which = "ops key (--ops-key / CHURN_OPS_API_KEY)" if ops else "API key (--api-key / CHURN_API_KEY)"
            raise CliError(f"{method} needs the {which}")
        metadata = [("x-api-key", key)]
        if with_token:
            if not self.token:
                raise CliError("not logged in: run `churnctl login`")
            metadata.append(("authorization", f"Bearer {self.token}"))
        try:
            return getattr(stub, method)(request, metadata=metadata, timeout=timeout)
        except grpc.RpcError as error:
            raise CliError(describe(error)) from None


def describe(error: grpc.RpcError) -> str:
    """CODE: message, and the fields a BadRequest detail names."""
    text = f"{error.code().name}: {error.details()}"
    status = rpc_status.from_call(error)
    for detail in status.details if status else []:
        if detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad = error_details_pb2.BadRequest()
            detail.Unpack(bad)
            text += "".join(f"\n  {v.field}: {v.description}" for v in bad.field_violations)
    return text


def client(gateway: str | None, api_key: str | None, ops_api_key: str | None) -> Client:
    """Options and environment win over what login cached; an expired token is not sent."""
    saved = Session.load() or Session(gateway="")
    token = saved.token if saved.expires_at > time.time() + 5 else ""
    return Client(gateway=gateway or saved.gateway or "127.0.0.1:8080", api_key=api_key or saved.api_key,
                  ops_api_key=ops_api_key or saved.ops_api_key, token=token)


def current_client() -> Client:
    return client(Options.gateway, Options.api_key, Options.ops_api_key)
