"""REST through the real Envoy, fuzzed (issue 13): for every REST binding, hypothesis-generated bodies (the request
message in its JSON form, with NaN/±Inf, extreme numbers and odd strings, or arbitrary JSON and bytes) and odd path
segments, sent with an admin token and the ops key so they pass the edge and reach the transcoder and the services.
The property: never a 5xx. RPCs that change the shared suite (canary weight, key rotation, model reload) are left
out; they have their own tests."""
from __future__ import annotations

import json
import os
import re
import urllib.parse

import pytest
from google.protobuf import json_format
from hypothesis import HealthCheck, given, settings as hsettings, strategies as st

from churn.v1 import auth_pb2
from gateway.routes import http_bindings
from services.common.access import access_table
from tests.fuzz.test_rpc_fuzz import message_of

pytestmark = pytest.mark.integration
EXAMPLES = max(5, int(os.environ.get("FUZZ_EXAMPLES", "20")) // 2)
# Calls that change the shared suite's state for every other test (the canary weight, the shadow share — a share
# left at 72 % once mirrored a 7,043-row CSV whose analysis ran monitoring out of memory —, the signing keys, which
# version an alias serves: a generated Promote with no version promotes staging). They are fuzzed in-process over
# a copy of the registry (tests/fuzz), and through Envoy by their own tests.
SKIPPED = {"SetCanaryWeight", "SetShadowPercent", "RotateKeys", "ReloadModel", "Retrain", "Promote", "Rollback"}
BINDINGS = [(path, b.verb, b.template) for path, items in sorted(http_bindings().items()) for b in items
            if access_table()[path].routing != "internal" and access_table()[path].method not in SKIPPED]


def to_json(message) -> bytes:
    """The message's JSON form; a generated Any whose type is unknown has none (its bytes are sent instead)."""
    try:
        return json_format.MessageToJson(message).encode()
    except (TypeError, KeyError, ValueError):
        return message.SerializeToString()


def json_body(request_type) -> st.SearchStrategy[bytes]:
    as_json = message_of(request_type).map(to_json)
    anything = st.recursive(st.none() | st.booleans() | st.floats() | st.text(max_size=20),
                            lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=10), inner,
                                                                                        max_size=3), max_leaves=8)
    return st.one_of(as_json, anything.map(lambda v: json.dumps(v).encode()), st.binary(max_size=100))


@pytest.mark.parametrize("path, verb, template", BINDINGS)
def test_rest_bindings_never_answer_5xx(suite, path, verb, template):
    token = suite.admin_token()
    request_type = auth_pb2.DESCRIPTOR.pool.FindMethodByName(path.strip("/").replace("/", ".")).input_type

    @hsettings(max_examples=EXAMPLES, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
    @given(json_body(request_type), st.text(min_size=1, max_size=30))
    def call(body, segment):
        url = re.sub(r"\{[^}]+\}", urllib.parse.quote(segment, safe=""), template)
        reply = suite.rest(verb, url, body if verb != "GET" else None, token=token, key="ops",
                           headers={"content-type": "text/csv" if template.endswith(":csv") else "application/json"})
        assert reply.status < 500, f"{verb} {url}: {reply.status} {reply.body[:300]!r}"

    call()
