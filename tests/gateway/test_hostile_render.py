"""Issue 13 items 1, 5 and 10 in the rendered config (the behaviour itself is tested through a real Envoy in
tests/e2e/test_hostile_gateway.py): unmappable requests answered by the transcoder, local replies JSON with fixed
messages, outlier detection on a host's own failures only, and the gateway's stamp on every forwarded call."""
from __future__ import annotations

import pytest

from gateway import render
from gateway.names import FILTER
from services.common.direct_calls import GATEWAY_HEADER
from services.common.shadow import SHADOW_HEADER
from services.common.settings import Settings

ENV = {"API_KEY": "client-key", "OPS_API_KEY": "ops-key", "GATEWAY_SECRET": "stamp-secret"}


@pytest.fixture
def config(tmp_path):
    return render.render(Settings.from_env(dict(ENV, DATA_DIR=str(tmp_path), SECRETS_DIR=str(tmp_path / "s"))))


def hcm(config) -> dict:
    return config["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]


def test_the_transcoder_refuses_what_it_cannot_map(config):
    transcoder = next(f["typed_config"] for f in hcm(config)["http_filters"]
                      if f["name"] == FILTER["grpc_json_transcoder"])
    assert transcoder["request_validation_options"] == {"reject_unknown_method": True,
                                                        "reject_unknown_query_parameters": True}


def test_local_replies_are_json_with_fixed_messages(config):
    replies = hcm(config)["local_reply_config"]
    assert "body_format" not in replies  # content served directly (the docs page) keeps its own body
    *fixed, errors = replies["mappers"]
    assert [m["filter"]["status_code_filter"]["comparison"]["value"]["default_value"] for m in fixed] == [404]
    assert all("%" not in m["body_format_override"]["json_format"]["message"] for m in fixed)
    assert errors["filter"]["status_code_filter"]["comparison"]["op"] == "GE"
    assert errors["body_format_override"]["json_format"] == {"code": "%RESPONSE_CODE%", "message": "%LOCAL_REPLY_BODY%"}


def test_outlier_detection_counts_only_a_hosts_own_failures(config):
    for cluster in config["static_resources"]["clusters"]:
        if "outlier_detection" in cluster:
            detection = cluster["outlier_detection"]
            assert detection["split_external_local_origin_errors"] is True, cluster["name"]


def test_every_forwarded_call_carries_the_gateway_stamp(config, tmp_path):
    stamp = hcm(config)["route_config"]["request_headers_to_add"]
    assert stamp == [{"header": {"key": GATEWAY_HEADER, "value": "stamp-secret"},
                      "append_action": "OVERWRITE_IF_EXISTS_OR_ADD"}]
    unset = render.render(Settings.from_env(dict(ENV, GATEWAY_SECRET="", DATA_DIR=str(tmp_path),
                                                 SECRETS_DIR=str(tmp_path / "none"))))
    assert hcm(unset)["route_config"]["request_headers_to_remove"] == [GATEWAY_HEADER, SHADOW_HEADER]
    assert hcm(config)["route_config"]["request_headers_to_remove"] == [SHADOW_HEADER]  # a client cannot mark a shadow
