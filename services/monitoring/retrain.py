"""Retrain: prepare the named data, train a candidate in a child process (`python -m training --register-as
staging …`), follow its progress, and tell the staging instance to reload when the version is registered (with
monitoring's own `reloader` credential, so the reload happens however the run was started and whenever it ends).

Training never runs on an RPC thread: the RPC prepares one labelled CSV and a lineage file in the run's folder
(`DATA_DIR/training-runs/<run id>/`), starts the child in its own session and answers with the run at once. A
watcher thread reads the child's `[NN%]` lines into the run's row, so GetTrainingRun shows progress; the row
lives in the monitoring store, and a monitoring that restarts mid-run watches the still-running child again (by
pid) and records its result. Only one run at a time (FailedPrecondition otherwise).
"""
from __future__ import annotations

import collections
import dataclasses
import json
import logging
import os
import pathlib
import re
import subprocess
import sys
import threading
import uuid

import pandas as pd

from churn.v1 import common_pb2

from services.common import features as F
from services.common import mlflow_config
from services.common import model_registry as R
from services.common.errors import FailedPrecondition, InvalidInput, NotFound, NotReady
from services.common.settings import ROOT, Settings
from services.common.telco_csv import parse_telco_csv
from services.monitoring import lifecycle_store as LS
from services.monitoring.lifecycle import Actor, Reload
from services.monitoring.store import MonitoringStore, utcnow

log = logging.getLogger("churn.monitoring.retrain")

MAX_DATASETS = 20
MIN_ROWS = 50  # a stratified 80/20 split and a held-out AUC need both labels in both halves
LOG_TAIL = 40
PROGRESS = re.compile(r"\[\s*(\d{1,3})%\]\s*(.*)")
DATASET_ID = re.compile(r"^[0-9a-f]{32}$")


@dataclasses.dataclass(frozen=True)
class RetrainSpec:
    include_shipped_data: bool
    dataset_ids: list[str]
    include_feedback: bool
    flavor: str


def _labelled(frame: pd.DataFrame, churn: pd.Series) -> pd.DataFrame:
    data = frame[list(F.FEATURE_COLUMNS)].reset_index(drop=True)
    return data.assign(**{F.LABEL_COLUMN: churn.reset_index(drop=True).map({True: "Yes", False: "No"}).to_numpy()})


def _alive(pid: int) -> bool:
    """A training child of an earlier monitoring process (not ours to wait for): still there and still training."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        return b"training" in pathlib.Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return True  # no /proc: trust the pid


class Trainer:
    def __init__(self, settings: Settings, store: MonitoringStore, runs: LS.LifecycleStore,
                 registry: R.ModelRegistry, reload: Reload, poll_seconds: float = 0.5):
        self._settings = settings
        self._store = store
        self._runs = runs
        self._registry = registry
        self._reload = reload
        self._poll = poll_seconds
        self._folder = settings.data_dir / "training-runs"
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    # ---- the data ---------------------------------------------------------------------------------------------
    def _prepare(self, spec: RetrainSpec) -> tuple[pd.DataFrame, list[dict]]:
        """The named sources as one labelled frame, and their lineage (source, id, name, rows)."""
        if not (spec.include_shipped_data or spec.dataset_ids or spec.include_feedback):
            raise InvalidInput("include_shipped_data", "name at least one data source: include_shipped_data, "
                                                       "dataset_ids or include_feedback")
        if len(spec.dataset_ids) > MAX_DATASETS:
            raise InvalidInput("dataset_ids", f"at most {MAX_DATASETS} data sets, got {len(spec.dataset_ids)}")
        parts, lineage = [], []
        if spec.include_shipped_data:
            path = self._settings.training_data_path
            try:
                shipped = parse_telco_csv(path.read_bytes(), None, 1_000_000)
            except OSError:
                raise FailedPrecondition(f"the shipped training data {path.name} is missing on this server") from None
            parts.append(_labelled(shipped.frame, shipped.churn))
            lineage.append({"source": "shipped", "dataset_id": "", "name": path.name, "rows": len(shipped)})
        for i, dataset_id in enumerate(spec.dataset_ids):
            field = f"dataset_ids[{i}]"
            if not DATASET_ID.match(dataset_id):
                raise InvalidInput(field, "is not a dataset_id that UploadTrainingData returned (32 hex digits)")
            if dataset_id in spec.dataset_ids[:i]:
                raise InvalidInput(field, "names the same data set twice")
            found = self._store.references.load(dataset_id)
            if found is None:
                raise InvalidInput(field, "no uploaded training set has this id")
            record, parsed = found
            if parsed.churn is None or parsed.churn.isna().any():
                raise InvalidInput(field, "this data set has rows without a Churn label")
            parts.append(_labelled(parsed.frame, parsed.churn.astype(bool)))
            lineage.append({"source": "upload", "dataset_id": dataset_id, "name": record.name, "rows": record.rows})
        if spec.include_feedback:
            frame, churn = self._store.labelled_inputs()
            if frame.empty:
                raise InvalidInput("include_feedback", "no logged prediction has a feedback label yet")
            parts.append(_labelled(frame, churn))
            lineage.append({"source": "feedback", "dataset_id": "", "name": "labelled predictions",
                            "rows": len(frame)})
        data = pd.concat(parts, ignore_index=True)
        classes = data[F.LABEL_COLUMN].value_counts()
        if len(data) < MIN_ROWS or len(classes) < 2 or classes.min() < 2:
            field = "dataset_ids" if spec.dataset_ids else ("include_feedback" if spec.include_feedback
                                                            else "include_shipped_data")
            raise InvalidInput(field, f"the named data has {len(data)} rows and {len(classes)} label value(s): "
                                      f"training needs at least {MIN_ROWS} rows with both Churn values")
        return data, lineage

    # ---- runs -------------------------------------------------------------------------------------------------
    def start(self, spec: RetrainSpec, actor: Actor) -> LS.TrainingRun:
        flavor = spec.flavor.strip() or "xgboost"
        if flavor not in R.FLAVORS:
            raise InvalidInput("flavor", f"must be one of {', '.join(R.FLAVORS)} (or empty for xgboost)")
        with self._lock:
            running = self._runs.running_runs()
            if running:
                raise FailedPrecondition(f"training run {running[0].run_id} (started by {running[0].started_by}) "
                                         "is still running; wait for it (GetTrainingRun) before starting another")
            data, datasets = self._prepare(spec)
            run_id = uuid.uuid4().hex
            folder = self._folder / run_id
            folder.mkdir(parents=True)
            data.to_csv(folder / "data.csv", index=False)
            parent = self._registry.alias_or_none(R.ALIAS_PRODUCTION) or ""
            (folder / "lineage.json").write_text(json.dumps({"datasets": datasets, "parent_version": parent}))
            run = LS.TrainingRun(run_id, LS.RUNNING, 0.0, "starting the training process", [], actor.subject,
                                 utcnow(), None, "", parent, datasets, len(data), flavor, {}, "", None, str(folder))
            self._runs.start_run(run)
            try:
                process = self._spawn(folder, flavor)
            except OSError as exc:
                self._runs.update_run(run_id, state=LS.FAILED, error=f"could not start training: {exc}",
                                      finished_at=utcnow())
                raise NotReady(f"could not start the training process: {exc}") from None
            self._runs.update_run(run_id, pid=process.pid)
            sources = ", ".join(f"{d['source']} {d['name']} ({d['rows']} rows)" for d in datasets)
            self._runs.add_event(LS.RETRAIN_STARTED, actor.subject, run_id=run_id, previous_version=parent,
                                 detail=f"{flavor} on {len(data)} rows: {sources}"[:1000])
            self._watch(run_id, folder, process, process.pid)
        log.info("training run %s started by %s (pid %s)", run_id, actor.subject, process.pid)
        return self.get(run_id)

    def _spawn(self, folder: pathlib.Path, flavor: str) -> subprocess.Popen:
        stubs = pathlib.Path(common_pb2.__file__).resolve().parents[2]  # the folder holding the churn package
        env = dict(os.environ, DATA_DIR=str(self._settings.data_dir), MODEL_NAME=self._settings.model_name,
                   MLFLOW_TRACKING_URI=mlflow_config.tracking_uri(self._settings),
                   MLFLOW_EXPERIMENT_NAME=self._settings.mlflow_experiment_name, PYTHONUNBUFFERED="1",
                   PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), str(stubs), os.environ.get("PYTHONPATH")])))
        with open(folder / "training.log", "ab") as output:
            return subprocess.Popen(
                [sys.executable, "-m", "training", "--data", str(folder / "data.csv"), "--register-as",
                 R.ALIAS_STAGING, "--flavor", flavor, "--lineage", str(folder / "lineage.json"),
                 "--result-file", str(folder / "result.json")],
                cwd=ROOT, env=env, stdout=output, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                start_new_session=True)  # a stop of monitoring (honcho's SIGTERM/SIGINT) leaves the run going

    def get(self, run_id: str) -> LS.TrainingRun:
        if not run_id.strip():
            raise InvalidInput("run_id", "is required")
        run = self._runs.get_run(run_id.strip()) if len(run_id) <= 64 else None
        if run is None:
            raise NotFound("no training run has this run_id")
        return run

    def resume(self) -> None:
        """Watch the runs an earlier monitoring process left running (their children outlive it)."""
        for run in self._runs.running_runs():
            self._watch(run.run_id, pathlib.Path(run.folder), None, run.pid)

    def close(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=2)

    # ---- following the child ----------------------------------------------------------------------------------
    def _watch(self, run_id: str, folder: pathlib.Path, process: subprocess.Popen | None, pid: int | None) -> None:
        thread = threading.Thread(target=self._follow, args=(run_id, folder, process, pid), daemon=True,
                                  name=f"training-{run_id[:8]}")
        self._threads.append(thread)
        thread.start()

    def _follow(self, run_id: str, folder: pathlib.Path, process: subprocess.Popen | None, pid: int | None) -> None:
        tail: collections.deque[str] = collections.deque(maxlen=LOG_TAIL)
        offset, percent, message = 0, 0, ""
        while True:
            done = (process.poll() is not None) if process is not None else not (pid and _alive(pid))
            try:
                with open(folder / "training.log", "rb") as handle:
                    handle.seek(offset)
                    chunk = handle.read()
            except OSError:
                chunk = b""
            if chunk:
                complete = chunk[:chunk.rfind(b"\n") + 1] if not done else chunk
                offset += len(complete)
                for line in complete.decode(errors="replace").splitlines():
                    line = line.removeprefix("training: ").strip()
                    if not line:
                        continue
                    tail.append(line[:500])
                    found = PROGRESS.search(line)
                    if found:
                        percent, message = min(int(found.group(1)), 100), found.group(2)[:500]
                self._runs.update_run(run_id, progress=percent / 100, message=message, log_tail=list(tail))
            if done:
                break
            if self._stop.wait(self._poll):
                return  # monitoring stops: the run stays RUNNING and the next monitoring resumes it
        self._finish(run_id, folder, list(tail))

    def _finish(self, run_id: str, folder: pathlib.Path, tail: list[str]) -> None:
        run = self._runs.get_run(run_id)
        try:
            result = json.loads((folder / "result.json").read_text())
        except (OSError, ValueError):
            error = "training failed: " + (" | ".join(tail[-5:]) or "it printed nothing")
            self._runs.update_run(run_id, state=LS.FAILED, error=error[:4000], finished_at=utcnow())
            self._runs.add_event(LS.RETRAIN_FAILED, run.started_by, run_id=run_id, detail=error[:1000])
            log.warning("training run %s failed", run_id)
            return
        version, error = str(result["version"]), ""
        try:  # with monitoring's own credential: the run may outlive its starter's token, or monitoring itself
            self._reload(R.ALIAS_STAGING, "")
        except NotReady as exc:
            error = exc.message
        self._runs.update_run(run_id, state=LS.SUCCEEDED, progress=1.0, model_version=version,
                              metrics=result.get("metrics", {}), error=error, finished_at=utcnow())
        scores = ", ".join(f"{k}={v:.4f}" for k, v in sorted(result.get("metrics", {}).items()))
        self._runs.add_event(LS.RETRAIN_FINISHED, run.started_by, run_id=run_id, model_version=version,
                             previous_version=run.parent_version, detail=f"staging -> {version}; {scores}"[:1000])
        log.info("training run %s registered version %s", run_id, version)
