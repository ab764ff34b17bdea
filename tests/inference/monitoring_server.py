"""A small, real MonitoringService for the shipping tests: RecordPredictions behind the real interceptor (service
role + API key), stored idempotently by prediction id in SQLite, as monitoring's own service does. A row of a
PredictionColumns is kept as a one-row PredictionColumns, a PredictionRecord as itself."""
from __future__ import annotations

import sqlite3
import threading

from churn.v1 import monitoring_pb2, monitoring_pb2_grpc

from services.common import prediction_record
from services.common.interceptor import ServiceInterceptor
from services.common.server import ServiceHost, start_server

SERVICE = monitoring_pb2.DESCRIPTOR.services_by_name["MonitoringService"].full_name


class RecordingMonitoring(monitoring_pb2_grpc.MonitoringServiceServicer):
    def __init__(self, path):
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._db.execute("CREATE TABLE IF NOT EXISTS predictions (prediction_id TEXT PRIMARY KEY, record BLOB, "
                         "columns BOOLEAN)")
        self._lock = threading.Lock()
        self.calls = 0
        self.duplicates = 0

    def RecordPredictions(self, request, context):
        rows = [(r.prediction_id, r.SerializeToString(), False) for r in request.records] + [
            (pid, prediction_record.row_of(batch, i).SerializeToString(), True)
            for batch in request.batches for i, pid in enumerate(batch.prediction_ids)]
        with self._lock:
            self.calls += 1
            before = self._db.total_changes
            self._db.execute("BEGIN")
            self._db.executemany("INSERT OR IGNORE INTO predictions VALUES (?, ?, ?)", rows)
            self._db.execute("COMMIT")
            inserted = self._db.total_changes - before
            self.duplicates += len(rows) - inserted
        return monitoring_pb2.RecordPredictionsResponse(received=len(rows), inserted=inserted,
                                                        duplicates=len(rows) - inserted)

    def records(self) -> dict[str, monitoring_pb2.PredictionRecord | monitoring_pb2.PredictionColumns]:
        with self._lock:
            rows = self._db.execute("SELECT prediction_id, record, columns FROM predictions").fetchall()
        return {pid: (monitoring_pb2.PredictionColumns if columns else monitoring_pb2.PredictionRecord).FromString(blob)
                for pid, blob, columns in rows}


def start_monitoring(settings, verifier, port: int, store: RecordingMonitoring) -> ServiceHost:
    return start_server(settings, port=port, http_port=0, service_names=[SERVICE],
                        register=lambda server: monitoring_pb2_grpc.add_MonitoringServiceServicer_to_server(store,
                                                                                                           server),
                        interceptor=ServiceInterceptor(verifier, settings.api_key, settings.ops_api_key))
