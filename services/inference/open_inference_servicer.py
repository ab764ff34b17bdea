"""inference.GRPCInferenceService (the Open Inference Protocol v2) on the inference port: unpack the tensors, call
OpenInference, pack. Auth, roles, error → status mapping and metrics happen in the shared interceptor, as for
InferenceService."""
from __future__ import annotations

import grpc_predict_v2_pb2 as pb
import grpc_predict_v2_pb2_grpc

from services.common.logs import request_id_var
from services.inference import tensors
from services.inference.open_inference import SERVER_NAME, OpenInference, TensorSpec, server_version


def _tensors(specs: list[TensorSpec]) -> list[pb.ModelMetadataResponse.TensorMetadata]:
    return [pb.ModelMetadataResponse.TensorMetadata(name=s.name, datatype=s.datatype, shape=s.shape) for s in specs]


class OpenInferenceServicer(grpc_predict_v2_pb2_grpc.GRPCInferenceServiceServicer):
    def __init__(self, oip: OpenInference):
        self._oip = oip
        self._version = server_version()

    def ServerLive(self, request, context):
        return pb.ServerLiveResponse(live=True)  # answering at all is being live

    def ServerReady(self, request, context):
        return pb.ServerReadyResponse(ready=self._oip.ready)

    def ModelReady(self, request, context):
        return pb.ModelReadyResponse(ready=self._oip.model_ready(request.name, request.version))

    def ServerMetadata(self, request, context):
        return pb.ServerMetadataResponse(name=SERVER_NAME, version=self._version)

    def ModelMetadata(self, request, context):
        meta = self._oip.metadata(request.name, request.version)
        return pb.ModelMetadataResponse(name=meta.name, versions=meta.versions, platform=meta.platform,
                                        inputs=_tensors(meta.inputs), outputs=_tensors(meta.outputs))

    def ModelInfer(self, request, context):
        inputs = tensors.decode_inputs(request.inputs, request.raw_input_contents)
        result = self._oip.infer(request.model_name, request.model_version, inputs,
                                 [output.name for output in request.outputs], request_id_var.get())
        outputs, raw = tensors.encode_outputs(result.outputs, raw=bool(request.raw_input_contents))
        return pb.ModelInferResponse(
            model_name=result.model.name, model_version=result.model.version, id=request.id, outputs=outputs,
            raw_output_contents=raw, parameters={"alias": pb.InferParameter(string_param=result.model.alias)})
