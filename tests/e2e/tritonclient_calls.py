"""Open Inference Protocol calls made with tritonclient, run by the tests in tritonclient's own virtualenv
(var/oip-client: it pins protobuf < 7, the suite needs >= 7), so it imports nothing of the project.

stdin: {"url": host:port, "headers": {...}, "model": name, "calls": [{"call": "live" | "ready" | "model_ready" |
"server_metadata" | "model_metadata" | "infer", "inputs": [{"name", "datatype", "shape", "data"}],
"outputs": [names]}]}. stdout: one JSON result per call, in order: {"ok": value} or {"error": {"status", "message"}}.
BYTES data are strings (sent UTF-8 encoded); numbers are sent with the tensor's datatype.
"""
import json
import sys

import numpy as np
import tritonclient.grpc as triton
from tritonclient.utils import InferenceServerException, triton_to_np_dtype


def _input(spec: dict) -> triton.InferInput:
    tensor = triton.InferInput(spec["name"], spec["shape"], spec["datatype"])
    if spec["datatype"] == "BYTES":
        data = np.array([value.encode() for value in spec["data"]], dtype=np.object_)
    else:
        data = np.array(spec["data"], dtype=triton_to_np_dtype(spec["datatype"]))
    tensor.set_data_from_numpy(data.reshape(spec["shape"]))
    return tensor


def _call(client: triton.InferenceServerClient, job: dict, call: dict):
    headers, model = job["headers"], job["model"]
    kind = call["call"]
    if kind == "live":
        return client.is_server_live(headers=headers)
    if kind == "ready":
        return client.is_server_ready(headers=headers)
    if kind == "model_ready":
        return client.is_model_ready(model, headers=headers)
    if kind == "server_metadata":
        return client.get_server_metadata(headers=headers, as_json=True)
    if kind == "model_metadata":
        return client.get_model_metadata(model, headers=headers, as_json=True)
    if kind == "infer":
        outputs = [triton.InferRequestedOutput(name) for name in call.get("outputs", [])] or None
        result = client.infer(model, [_input(spec) for spec in call["inputs"]], outputs=outputs, headers=headers,
                              request_id=call.get("id", ""))
        response = result.get_response(as_json=True)
        return {"model_version": response["model_version"], "id": response.get("id", ""),
                "outputs": {o["name"]: result.as_numpy(o["name"]).tolist() for o in response["outputs"]}}
    raise ValueError(f"unknown call {kind!r}")


def main() -> None:
    job = json.load(sys.stdin)
    client = triton.InferenceServerClient(job["url"])
    results = []
    for call in job["calls"]:
        try:
            results.append({"ok": _call(client, job, call)})
        except InferenceServerException as error:
            results.append({"error": {"status": error.status(), "message": error.message()}})
    client.close()
    json.dump(results, sys.stdout)


if __name__ == "__main__":
    main()
