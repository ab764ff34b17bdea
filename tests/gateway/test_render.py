"""The rendered Envoy config: valid for the real Envoy, one route per routed RPC (REST and gRPC on the same route),
nothing for internal RPCs, and every value taken from Settings / the access table."""
from __future__ import annotations

import json
import math
import re

import pytest
import yaml

from gateway import names, render
from gateway import routes as gateway_routes
from gateway.__main__ import envoy_command, validate
from services.common import canary_runtime
from services.common.shadow import SHADOW_HEADER
from services.common.access import access_table
from services.common.settings import Settings
from tests.gateway.live_envoy import LiveEnvoy

F = names.FILTER


def live_env(folder) -> dict[str, str]:
    return {"DATA_DIR": str(folder / "var"), "SECRETS_DIR": str(folder / "secrets"), "API_KEY": "client-key-1",
            "OPS_API_KEY": "ops-key-1", "AUTH_PORT": "41001", "AUTH_HTTP_PORT": "41002", "MONITORING_PORT": "41003",
            "INFERENCE_PRODUCTION_PORT": "41004", "INFERENCE_STAGING_PORT": "41005", "GATEWAY_PORT": "41006",
            "ENVOY_ADMIN_PORT": "41007", "AUTH_RATE_PER_MINUTE": "7", "PREDICT_RATE_PER_MINUTE": "11",
            "SERVICE_PREDICT_RATE_PER_MINUTE": "999", "CANARY_PERCENT": "15", "MAX_MESSAGE_MB": "9",
            "JWKS_CACHE_SECONDS": "17"}


@pytest.fixture
def env(tmp_path) -> dict[str, str]:
    return live_env(tmp_path)


@pytest.fixture
def settings(env) -> Settings:
    return Settings.from_env(env)


@pytest.fixture
def config(settings) -> dict:
    return render.render(settings)


@pytest.fixture(scope="module")
def live(tmp_path_factory):
    """The rendered config in the real Envoy (listener and admin on port 0, nothing behind the clusters)."""
    workdir = tmp_path_factory.mktemp("live-envoy")
    envoy = LiveEnvoy(Settings.from_env(dict(live_env(workdir), GATEWAY_PORT="0", ENVOY_ADMIN_PORT="0")), workdir)
    yield envoy
    envoy.stop()



@pytest.fixture(scope="module")
def live_config(live) -> dict:
    return yaml.safe_load((live.admin_path.parent / "envoy.yaml").read_text())


def by_name(config: dict) -> dict[str, dict]:
    routes = list(gateway_routes.routed_paths(config))
    named = {route["name"]: route for route in routes}
    assert len(named) == len(routes), "route names are unique"
    return named


GRPC = {"content-type": "application/grpc"}


def sample_path(template: str) -> str:
    return re.sub(r"\{[^}]+\}", "someone", template)


def test_envoy_validates_the_rendered_config(settings, tmp_path):
    out = render.prepare(settings, tmp_path / "envoy.yaml")
    assert out.stat().st_mode & 0o777 == 0o600  # holds the API keys
    done = validate(out)
    assert done.returncode == 0, done.stdout + done.stderr
    # and the JSON spelling too
    done = validate(render.write(render.render(settings), tmp_path / "envoy.json"))
    assert done.returncode == 0, done.stdout + done.stderr


def test_validation_catches_a_broken_config(settings, tmp_path):
    config = render.render(settings)
    config["static_resources"]["clusters"][0]["lb_policy"] = "NOT_A_POLICY"
    done = validate(render.write(config, tmp_path / "broken.yaml"))
    assert done.returncode != 0


def test_every_routed_rpc_has_one_route_for_grpc_and_rest(live):
    """Envoy itself says which route each gRPC path and each REST binding takes."""
    bindings = gateway_routes.http_bindings()
    routed = [(path, entry) for path, entry in access_table().items() if entry.routing != "internal"]
    asked = [("POST", path, GRPC) for path, _ in routed]
    asked += [(b.verb, sample_path(b.template), {}) for path, _ in routed for b in bindings[path]]
    answers = iter(live.routes(asked))
    grpc_routes = {path: next(answers) for path, _ in routed}
    checked = 0
    for path, entry in routed:
        assert grpc_routes[path].endswith(entry.method), (path, grpc_routes[path])
        for binding in bindings[path]:
            rest_route = next(answers)
            assert rest_route.split("_")[1] == entry.method, (binding, rest_route)
            if entry.rate != "none":  # shared rate-limit buckets need the very same route
                assert rest_route == grpc_routes[path], f"{path}: REST and gRPC on different routes"
            checked += 1
    assert checked >= 20


def test_same_rest_path_with_two_verbs_reaches_the_right_rpc(live):
    chosen = live.routes([("GET", "/v1/feedback", {}), ("POST", "/v1/feedback", {}), ("GET", "/v1/canary", {}),
                          ("POST", "/v1/canary", {})])
    expected = ["GetFeedbackData", "SubmitFeedback", "GetCanaryWeight", "SetCanaryWeight"]
    assert [name.startswith(f"MonitoringService_{rpc}") for name, rpc in zip(chosen, expected)] == [True] * 4, chosen


def test_unknown_paths_get_a_local_404(live, live_config):
    routes = list(gateway_routes.routed_paths(live_config))
    catch_all = routes[-1]
    assert catch_all["match"] == {"prefix": "/"} and catch_all["direct_response"]["status"] == 404
    assert live.routes([("GET", "/v1/nothing-here", {}),
                        ("POST", "/churn.v1.MonitoringService/RecordPredictions", GRPC)]) == [catch_all["name"]] * 2


def test_internal_rpcs_are_not_routed(live, live_config):
    catch_all = list(gateway_routes.routed_paths(live_config))[-1]["name"]
    internal = [e for e in access_table().values() if e.routing == "internal"]
    assert internal, "the contract has at least one internal RPC (RecordPredictions)"
    asked = [("POST", e.path, GRPC) for e in internal]
    asked += [(b.verb, sample_path(b.template), {}) for e in internal for b in gateway_routes.http_bindings()[e.path]]
    assert live.routes(asked) == [catch_all] * len(asked)
    assert not any(e.method in name for name in by_name(live_config) for e in internal)


def test_access_table_drives_keys_tokens_roles_and_limits(live, live_config):
    settings = Settings.from_env(live_env(live.admin_path.parent))  # the limits the live config was rendered with
    named = by_name(live_config)
    routed = [(path, entry) for path, entry in access_table().items() if entry.routing != "internal"]
    chosen = live.routes([("POST", path, GRPC) for path, _ in routed])
    for (path, entry), name in zip(routed, chosen):
        route = named[name]
        per = route["typed_per_filter_config"]
        assert (per[F["jwt_authn"]].get("disabled") is True) == entry.public
        if entry.ops_key_only:
            assert per[F["api_key_auth"]]["allowed_clients"] == [names.OPS]
        else:
            assert F["api_key_auth"] not in per  # filter level: client or ops key
        principals = per[F["rbac"]]["rbac"]["rules"]["policies"]["roles"]["principals"]
        if entry.public:
            assert principals == [{"any": True}]
        else:
            roles = {p["sourced_metadata"]["metadata_matcher"]["value"]["string_match"]["exact"] for p in principals}
            assert roles == set(entry.roles)
        limit = per.get(F["local_ratelimit"])
        if entry.rate == "auth":
            assert limit["descriptors"][0]["token_bucket"]["max_tokens"] == settings.auth_rate_per_minute == 7
            assert limit["rate_limits"] == [{"actions": [{"remote_address": {}}]}]
        elif entry.rate == "predict":
            buckets = {d["entries"][0]["value"]: d["token_bucket"]["max_tokens"] for d in limit["descriptors"]}
            assert buckets == {"agent": 11, "admin": 11, "service": 999}
        else:
            assert limit is None
        if entry.rate != "none":
            assert limit["rate_limited_as_resource_exhausted"] is True
            # a 429's fallback retry-after: the slowest bucket's time to a token (the Lua filter refines it)
            slowest = 7 if entry.rate == "auth" else 11
            assert limit["response_headers_to_add"][0]["header"] == {"key": "retry-after",
                                                                     "value": str(math.ceil(60 / slowest))}
            assert F["rate_limit_headers"] not in per  # the Lua filter runs on rate-limited routes only
        else:
            assert per[F["rate_limit_headers"]]["disabled"] is True
        action = route["route"]
        assert action["timeout"] == f"{entry.timeout_ms / 1000:g}s"
        if not (entry.client_streaming or entry.server_streaming):
            retry_on = action["retry_policy"]["retry_on"]
            assert ("unavailable" in retry_on) == entry.retryable


def test_canary_split_pins_and_alias_routes(live, live_config):
    named = by_name(live_config)
    predict, pinned, info_staging, info, reload_staging = (named[name] for name in live.routes([
        ("POST", "/v1/predict", {}),
        ("POST", "/churn.v1.InferenceService/Predict", dict(GRPC, **{names.PIN_HEADER: "staging"})),
        ("GET", "/v1/model?alias=staging", {}),
        ("GET", "/v1/model", {}),
        ("POST", "/churn.v1.InferenceService/ReloadModel", dict(GRPC, **{names.PIN_HEADER: "staging"}))]))
    split = predict["route"]["weighted_clusters"]
    assert split["runtime_key_prefix"] == canary_runtime.RUNTIME_KEY_PREFIX
    assert {c["name"]: c["weight"] for c in split["clusters"]} == {"inference_production": 85, "inference_staging": 15}
    assert "retry_priority" in predict["route"]["retry_policy"]
    assert pinned["route"]["cluster"] == names.STAGING_HOSTS_CLUSTER
    assert pinned["typed_per_filter_config"][F["api_key_auth"]]["allowed_clients"] == [names.OPS]
    assert info_staging["route"]["cluster"] == names.STAGING_HOSTS_CLUSTER
    assert info["route"]["cluster"] == names.PRODUCTION_HOSTS_CLUSTER  # the production instance, never mirrored
    assert reload_staging["route"]["cluster"] == names.STAGING_HOSTS_CLUSTER  # no fallback for alias-bound RPCs
    clusters = {c["name"]: c for c in live_config["static_resources"]["clusters"]}
    aggregate = clusters["inference_staging"]["cluster_type"]["typed_config"]["clusters"]
    assert aggregate == [names.STAGING_HOSTS_CLUSTER, "inference_production"]
    # Envoy's own view of the runtime: three layers, the rendered default weight in force
    runtime = json.loads(live.get_admin("/runtime"))
    assert runtime["layers"] == ["static_defaults", "persisted_weight", "admin"]
    staging_key = f"{canary_runtime.RUNTIME_KEY_PREFIX}.inference_staging"
    assert runtime["entries"][staging_key]["final_value"] == "15"


def test_shadow_mirror_only_on_the_split_production_side(live, live_config):
    """Production's side of the split copies requests to the staging hosts at the runtime share; no other cluster
    mirrors (so a request the split sent to staging, a pinned call or ReloadModel is never copied)."""
    clusters = {c["name"]: c for c in live_config["static_resources"]["clusters"]}
    options = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
    mirrors = {name: c["typed_extension_protocol_options"][options].get("request_mirror_policies")
               for name, c in clusters.items() if options in c.get("typed_extension_protocol_options", {})}
    assert [name for name, policies in mirrors.items() if policies] == [names.PRODUCTION_CLUSTER]
    (policy,) = mirrors[names.PRODUCTION_CLUSTER]
    assert policy["cluster"] == names.STAGING_HOSTS_CLUSTER
    assert policy["runtime_fraction"] == {"default_value": {"numerator": 0, "denominator": "HUNDRED"},
                                          "runtime_key": canary_runtime.SHADOW_KEY}
    assert policy["request_headers_mutations"][0]["append"]["header"] == {"key": SHADOW_HEADER, "value": "1"}
    runtime = json.loads(live.get_admin("/runtime"))
    assert runtime["entries"][canary_runtime.SHADOW_KEY]["final_value"] == "0"  # the static default, off


def test_settings_flow_into_the_config(config, settings):
    text = yaml.safe_dump(config)
    listener = config["static_resources"]["listeners"][0]
    assert listener["address"]["socket_address"]["port_value"] == 41006
    assert config["admin"]["address"]["socket_address"] == {"address": "127.0.0.1", "port_value": 41007}
    clusters = {c["name"]: c for c in config["static_resources"]["clusters"]}
    ports = {name: c["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"]["socket_address"]
             ["port_value"] for name, c in clusters.items() if "load_assignment" in c}
    assert ports == {"auth": 41001, "auth_jwks": 41002, "monitoring": 41003, "inference_production": 41004,
                     "inference_production_hosts": 41004, "inference_staging_hosts": 41005,
                     "monitoring_http": settings.monitoring_http_port}
    for name in ("auth", "monitoring", "inference_production", "inference_production_hosts", "inference_staging_hosts"):
        assert clusters[name]["health_checks"][0]["grpc_health_check"]["service_name"].startswith("churn.v1.")
        assert "outlier_detection" in clusters[name]
        assert "http2_protocol_options" in str(clusters[name]["typed_extension_protocol_options"])
    hcm = listener["filter_chains"][0]["filters"][0]["typed_config"]
    assert hcm["use_remote_address"] is True and hcm["codec_type"] == "AUTO"
    filter_names = [f["name"] for f in hcm["http_filters"]]
    # /healthz is routed to monitoring's side port (Envoy's view as JSON), past the transcoder
    assert filter_names == [F[n] for n in ("set_filter_state", "header_mutation", "cors", "rate_limit_headers",
                                           "api_key_auth", "jwt_authn", "rbac", "local_ratelimit",
                                           "grpc_json_transcoder", "upstream_grpc_status", "router")]
    filters = {f["name"]: f["typed_config"] for f in hcm["http_filters"]}
    transcoder = filters[F["grpc_json_transcoder"]]
    assert transcoder["max_request_body_size"] == transcoder["max_response_body_size"] == 9 * 1024 * 1024
    assert transcoder["match_incoming_request_route"] and transcoder["convert_grpc_status"]
    keys = {c["client"]: c["key"] for c in filters[F["api_key_auth"]]["credentials"]}
    assert keys == {"client": "client-key-1", "ops": "ops-key-1"}
    provider = filters[F["jwt_authn"]]["providers"][names.JWT_PROVIDER]
    assert provider["remote_jwks"]["cache_duration"] == "17s"
    assert provider["remote_jwks"]["http_uri"]["uri"] == settings.jwks_url
    assert provider["forward"] is True and provider["from_cookies"] == ["access_token"]
    assert text.count("client-key-1") == 1 and text.count("ops-key-1") == 1  # each key written once


def test_inference_calls_get_an_upstream_connection_each(config):
    """An inference instance's worker processes share one port and the kernel spreads connections over them: Envoy
    must not multiplex every call over one HTTP/2 connection to an inference host (other services: one process)."""
    options = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
    streams = {c["name"]: c["typed_extension_protocol_options"][options]["explicit_http_config"]
               ["http2_protocol_options"].get("max_concurrent_streams")
               for c in config["static_resources"]["clusters"] if options in c.get("typed_extension_protocol_options", {})}
    assert streams == {"auth": None, "monitoring": None, "inference_production": 1, "inference_production_hosts": 1,
                       "inference_staging_hosts": 1}


def test_envoy_runs_the_worker_threads_of_the_settings(live, env, tmp_path):
    """One worker by default (the host is shared with the services), ENVOY_CONCURRENCY otherwise, 0 = Envoy's own
    default (one per hardware thread): the live Envoy reports what it runs."""
    assert json.loads(live.get_admin("/server_info"))["command_line_options"]["concurrency"] == 1
    config = tmp_path / "envoy.yaml"
    three = envoy_command(config, Settings.from_env(dict(env, ENVOY_CONCURRENCY="3")))
    assert three[three.index("--concurrency") + 1] == "3"
    assert "--concurrency" not in envoy_command(config, Settings.from_env(dict(env, ENVOY_CONCURRENCY="0")))


def test_no_default_keys(env):
    for missing in ("API_KEY", "OPS_API_KEY"):
        broken = dict(env, **{missing: ""})
        with pytest.raises(ValueError, match="API_KEY"):
            render.render(Settings.from_env(broken))


@pytest.mark.parametrize("template, path, matches", [
    ("/v1/users/{username}:approve", "/v1/users/alice:approve", True),
    ("/v1/users/{username}:approve", "/v1/users/a/b:approve", False),
    ("/v1/predict:batch", "/v1/predict:batch", True),
    ("/v1/predict:batch", "/v1/predictXbatch", False),
    ("/.well-known/jwks.json", "/.well-known/jwksXjson", False),
    ("/v1/files/{name=**}", "/v1/files/a/b/c", True),
])
def test_template_regex(template, path, matches):
    assert bool(re.fullmatch(gateway_routes.template_regex(template), path)) is matches
