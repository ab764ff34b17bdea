"""InferenceService RPCs: unpack, call the Predictor, pack. Auth, roles, error → status mapping and the per-RPC
metrics (`churn_grpc_requests_total`, `churn_grpc_request_seconds`) happen in the shared interceptor."""
from __future__ import annotations

from churn.v1 import inference_pb2, inference_pb2_grpc

from services.common.errors import DomainError, InvalidInput
from services.common.interceptor import status_for
from services.common.logs import request_id_var
from services.inference.levers import RetentionAdvisor, Suggestion
from services.inference.predictor import Predictor, Scored, model_ref


def _suggestion(suggestion: Suggestion) -> inference_pb2.RetentionSuggestion:
    return inference_pb2.RetentionSuggestion(
        changes=[inference_pb2.RetentionChange(field=c.field, current_value=c.current_value, new_value=c.new_value,
                                               discount_percent=c.discount_percent) for c in suggestion.changes],
        probability=suggestion.probability, delta=suggestion.delta)


class InferenceServicer(inference_pb2_grpc.InferenceServiceServicer):
    def __init__(self, predictor: Predictor, advisor: RetentionAdvisor):
        self._predictor = predictor
        self._advisor = advisor

    def _one(self, message, method: str, request_id: str, index: int = 0) -> Scored:
        """One customer's prediction (a Predict request or a stream message: both carry customer, explain_top_k)."""
        if not message.HasField("customer"):
            raise InvalidInput("customer", "is required")
        return self._predictor.predict([message.customer], request_id=request_id, method=method,
                                       explain_top_k=message.explain_top_k, label=lambda i: "customer",
                                       first_index=index)

    def Predict(self, request, context):
        response = inference_pb2.PredictResponse()
        self._one(request, "Predict", request_id_var.get()).fill(response.prediction)
        return response

    def PredictBatch(self, request, context):
        scored = self._predictor.predict(request.customers, request_id=request_id_var.get(),
                                         explain_top_k=request.explain_top_k)
        response = inference_pb2.PredictBatchResponse(model=scored.ref)
        scored.add_to(response.predictions)
        return response

    def PredictCsv(self, request, context):
        scored, accuracy = self._predictor.predict_csv(request.csv.data, request_id=request_id_var.get(),
                                                       explain_top_k=request.explain_top_k)
        response = inference_pb2.PredictCsvResponse(model=scored.ref, accuracy=accuracy)
        scored.add_to(response.predictions)
        return response

    def StreamPredict(self, request_iterator, context):
        """One answer per message, in order; a bad message (an unparsable one arrives as its InvalidInput) gets its
        own google.rpc.Status and the stream goes on."""
        request_id = request_id_var.get()
        for index, message in enumerate(request_iterator):
            if isinstance(message, InvalidInput):
                yield inference_pb2.StreamPredictResponse(error=status_for(message))
                continue
            try:
                scored = self._one(message, "StreamPredict", request_id, index)
            except DomainError as error:
                yield inference_pb2.StreamPredictResponse(message_id=message.message_id, error=status_for(error))
                continue
            response = inference_pb2.StreamPredictResponse(message_id=message.message_id)
            scored.fill(response.prediction)
            yield response

    def Explain(self, request, context):
        return self._predictor.explain(request.customers)

    def SuggestRetention(self, request, context):
        levers, model = self._advisor.suggest(request.customers, request.top_k)
        return inference_pb2.SuggestRetentionResponse(model=model_ref(model), levers=[
            inference_pb2.RetentionLevers(customer_id=c.customer_id, probability=c.probability,
                                          single_changes=[_suggestion(s) for s in c.singles],
                                          best_pair=_suggestion(c.best_pair) if c.best_pair else None)
            for c in levers])

    def GetModelInfo(self, request, context):
        return self._predictor.model_info(request.alias)

    def ReloadModel(self, request, context):
        return self._predictor.reload(request.alias)
