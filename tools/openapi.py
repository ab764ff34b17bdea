"""Build the REST API's OpenAPI (Swagger 2.0) document and the /docs page from the protos' google.api.http rules.

The generator is Debian's `protoc-gen-swagger` (package golang-grpc-gateway), run on Envoy's descriptor set
(gen/churn.pb). It predates proto3 `optional` and protoc refuses to run it on such files, so it is fed the
CodeGeneratorRequest directly, with presence markers dropped (every JSON field is optional anyway). Then:
  - every error response is `google.rpc.Status` — what Envoy's transcoder answers for a gRPC error
    (`convert_grpc_status`), with BadRequest field violations in `details`;
  - the API-key and bearer-token schemes are declared;
  - google.api.HttpBody is described as it travels (the plugin shows it as a JSON object): a raw `text/csv` body in,
    with the request's other fields as query parameters (the plugin lists none for a POST), and the report or key
    set out in its own content types;
  - the page: Swagger UI from npm's swagger-ui-dist (installed by `make docs-tools`) copied beside the document.
Writes gen/openapi/ (git-ignored, generated): churn.swagger.json, index.html, swagger-ui-bundle.js, swagger-ui.css.
"""
from __future__ import annotations

import json
import pathlib
import shutil
import subprocess
import sys

from google.protobuf import descriptor_pb2
from google.protobuf.compiler import plugin_pb2

ROOT = pathlib.Path(__file__).resolve().parent.parent
DESCRIPTOR_SET = ROOT / "gen" / "churn.pb"
OUT = ROOT / "gen" / "openapi"
DOCUMENT = "churn.swagger.json"
PLUGIN = "protoc-gen-swagger"
SWAGGER_UI = ROOT / ".tools" / "node_modules" / "swagger-ui-dist"
ASSETS = ("swagger-ui-bundle.js", "swagger-ui.css")
API_KEY_HEADER = "x-api-key"
HTTP_BODY = "#/definitions/apiHttpBody"
# Every HttpBody request here is a CSV (DESIGN clarification 19); what each HttpBody response is sent as.
RAW_REQUEST = "text/csv"
RAW_RESPONSES = {"GetJwks": ["application/json"], "GetDriftReport": ["text/html", "application/json"]}
F = descriptor_pb2.FieldDescriptorProto
# protoc-gen-swagger's spelling of scalar query parameters
QUERY_TYPES = {F.TYPE_STRING: ("string", None), F.TYPE_BOOL: ("boolean", "boolean"), F.TYPE_INT32: ("integer", "int32"),
               F.TYPE_UINT32: ("integer", "int64"), F.TYPE_INT64: ("string", "int64"),
               F.TYPE_UINT64: ("string", "uint64"), F.TYPE_DOUBLE: ("number", "double"),
               F.TYPE_FLOAT: ("number", "float"), F.TYPE_ENUM: ("string", None)}

STATUS = {
    "type": "object",
    "description": "google.rpc.Status: every error answer (HTTP status from the gRPC code; JSON body). "
                   "INVALID_ARGUMENT (400) names the field in a google.rpc.BadRequest detail.",
    "properties": {
        "code": {"type": "integer", "format": "int32", "description": "google.rpc.Code, e.g. 3 INVALID_ARGUMENT"},
        "message": {"type": "string"},
        "details": {"type": "array", "items": {"$ref": "#/definitions/protobufAny"}},
    },
}
ANY = {"type": "object", "description": "A typed detail, e.g. type.googleapis.com/google.rpc.BadRequest",
       "properties": {"@type": {"type": "string"}}, "additionalProperties": {}}

PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Churn prediction API</title>
<link rel="stylesheet" href="/docs/swagger-ui.css"></head>
<body><div id="ui"></div><script src="/docs/swagger-ui-bundle.js"></script>
<script>SwaggerUIBundle({url: "/docs/openapi.json", dom_id: "#ui", deepLinking: true, docExpansion: "list"});</script>
</body></html>
"""


def _request(descriptor_set: pathlib.Path) -> plugin_pb2.CodeGeneratorRequest:
    files = descriptor_pb2.FileDescriptorSet.FromString(descriptor_set.read_bytes()).file
    request = plugin_pb2.CodeGeneratorRequest(
        parameter="allow_merge=true,merge_file_name=churn,json_names_for_fields=false",
        file_to_generate=[f.name for f in files if f.name.startswith("churn/")])
    for source in files:
        copy = request.proto_file.add()
        copy.CopyFrom(source)
        for message in _messages(copy.message_type):
            synthetic = {f.oneof_index for f in message.field if f.proto3_optional}
            for field in message.field:
                if field.proto3_optional:
                    field.proto3_optional = False
                    field.ClearField("oneof_index")
            if synthetic:  # synthetic oneofs come after the real ones
                del message.oneof_decl[min(synthetic):]
    return request


def _messages(messages):
    for message in messages:
        yield message
        yield from _messages(message.nested_type)


def document(descriptor_set: pathlib.Path = DESCRIPTOR_SET) -> dict:
    plugin = shutil.which(PLUGIN)
    if not plugin:
        raise SystemExit(f"{PLUGIN} not found: `make docs-tools` installs Debian's golang-grpc-gateway")
    done = subprocess.run([plugin], input=_request(descriptor_set).SerializeToString(), capture_output=True,
                          timeout=60, check=True)
    response = plugin_pb2.CodeGeneratorResponse.FromString(done.stdout)
    if response.error:
        raise SystemExit(f"{PLUGIN}: {response.error}")
    spec = json.loads(response.file[0].content)
    spec["info"] = {"title": "Churn prediction API", "version": "v1",
                    "description": "REST mapping of the churn.v1 gRPC services (Envoy's gRPC-JSON transcoder). "
                                   "Every call needs the x-api-key header; most need a bearer token from "
                                   "POST /v1/auth/token. Errors are google.rpc.Status JSON."}
    spec["consumes"] = spec["produces"] = ["application/json"]
    definitions = spec.setdefault("definitions", {})
    definitions.pop("runtimeError", None)
    definitions["rpcStatus"] = STATUS
    definitions["protobufAny"] = ANY
    spec["securityDefinitions"] = {
        "apiKey": {"type": "apiKey", "in": "header", "name": API_KEY_HEADER},
        "bearer": {"type": "apiKey", "in": "header", "name": "Authorization",
                   "description": "Bearer <access_token from POST /v1/auth/token>"}}
    _apply_access(spec)
    _raw_bodies(spec, descriptor_set)
    return spec


def _apply_access(spec: dict) -> None:
    """From the access table: internal RPCs (Envoy never routes them) leave the document; public ones need only the
    API key; ops ones say so. Every operation answers errors as google.rpc.Status."""
    from services.common.access import access_table

    entries = {(entry.service.rsplit(".", 1)[-1], entry.method): entry for entry in access_table().values()}
    for path in list(spec["paths"]):
        operations = spec["paths"][path]
        for verb in list(operations):
            operation = operations[verb]
            # additional_bindings come out as <Method>2, <Method>3, ...
            method = operation["operationId"]
            entry = entries.get((operation["tags"][0], method)) or entries[(operation["tags"][0], method.rstrip("0123456789"))]
            if entry.routing == "internal":
                del operations[verb]
                continue
            operation["security"] = [{"apiKey": []}] if entry.public else [{"apiKey": [], "bearer": []}]
            if entry.ops_key_only:
                operation["description"] = (operation.get("description", "") + "\n\nNeeds the ops API key.").strip()
            if entry.roles and not entry.public:
                operation["description"] = (operation.get("description", "") +
                                            f"\n\nRoles: {', '.join(sorted(entry.roles))}.").strip()
            operation["responses"]["default"] = {"description": "An error (google.rpc.Status)",
                                                 "schema": {"$ref": "#/definitions/rpcStatus"}}
        if not operations:
            del spec["paths"][path]


def _raw_bodies(spec: dict, descriptor_set: pathlib.Path) -> None:
    """HttpBody as Envoy's transcoder sends it: the raw bytes, not a {content_type, data} object."""
    files = descriptor_pb2.FileDescriptorSet.FromString(descriptor_set.read_bytes()).file
    messages = {f".{f.package}.{m.name}": m for f in files for m in f.message_type}
    inputs = {(s.name, m.name): m.input_type for f in files for s in f.service for m in s.method}
    comments = _field_comments(files)
    for path, operations in spec["paths"].items():
        for operation in operations.values():
            method = operation["operationId"].rstrip("0123456789")
            parameters = operation.get("parameters", [])
            body = next((p for p in parameters if p.get("schema", {}).get("$ref") == HTTP_BODY), None)
            if body:
                body["schema"] = {"type": "string", "description": "The CSV itself, raw (not JSON)."}
                operation["consumes"] = [RAW_REQUEST]
                request = inputs[(operation["tags"][0], method)]
                named = {p["name"] for p in parameters}
                for field in messages[request].field:
                    if field.type_name != ".google.api.HttpBody" and field.name not in named:
                        kind, form = QUERY_TYPES[field.type]  # a message-typed field would need a JSON body
                        parameters.append({"name": field.name, "in": "query", "required": False, "type": kind}
                                          | ({"format": form} if form else {})
                                          | ({"description": comments[request, field.name]}
                                             if (request, field.name) in comments else {}))
            if operation["responses"]["200"].get("schema", {}).get("$ref") == HTTP_BODY:
                if method not in RAW_RESPONSES:
                    raise SystemExit(f"{path}: an HttpBody response; name its content types in RAW_RESPONSES")
                operation["produces"] = RAW_RESPONSES[method]
                operation["responses"]["200"]["schema"] = {"description": "The raw body, in a type `produces` names."}


def _field_comments(files) -> dict[tuple[str, str], str]:
    """(message, field) → the field's leading comment, from the descriptor set's source info (top-level messages)."""
    comments = {}
    for file in files:
        for place in file.source_code_info.location:
            path = list(place.path)  # 4 = message_type, 2 = field
            if len(path) == 4 and path[0] == 4 and path[2] == 2 and place.leading_comments:
                message = file.message_type[path[1]]
                key = (f".{file.package}.{message.name}", message.field[path[3]].name)
                comments[key] = place.leading_comments.strip()
    return comments


def build(out: pathlib.Path = OUT) -> pathlib.Path:
    spec = document()
    missing = [name for name in ASSETS if not (SWAGGER_UI / name).exists()]
    if missing:
        raise SystemExit(f"swagger-ui-dist missing {missing}: `make docs-tools` installs it")
    out.mkdir(parents=True, exist_ok=True)
    (out / DOCUMENT).write_text(json.dumps(spec, indent=1, sort_keys=True) + "\n")
    (out / "index.html").write_text(PAGE)
    for name in ASSETS:
        shutil.copyfile(SWAGGER_UI / name, out / name)
    return out / DOCUMENT


if __name__ == "__main__":
    print(f"wrote {build().relative_to(ROOT)}")
    sys.exit(0)
