"""MLflow: the only module that talks to it. Rank 0 logs; other ranks get a ``NullTracker``.

A run is found again by its tag ``ltray.run_name``, so a resumed or re-submitted job continues
the same MLflow run. Epoch metrics carry ``step=epoch`` and an ``epoch`` marker logged last.
Every epoch appears exactly once, with the value of the attempt that finished: the loop logs an
epoch only once a checkpoint holding it is durable (so no restart redoes it: MLflow metrics are
append-only, a value logged cannot be replaced), and on resume the epochs that the checkpoint's
history has but MLflow lacks (a crash after the checkpoint, before the log) are logged first.
The final metrics and the model are logged once, marked by the tag ``ltray.final_logged``.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import re
import tempfile
import time
import urllib.error
import urllib.request
import warnings
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

from ltray.errors import LtrayError
from ltray.fs import local_lock
from ltray.secrets import public_url, redact_url, scrub, url_credentials

RUN_NAME_TAG = "ltray.run_name"
# a sweep: its parent run, tagged as one and, once complete, with its best trial; each trial's run
# nested under it (MLflow's own parent tag: the UI nests the child under its parent)
SWEEP_KIND_TAG = "ltray.kind"
BEST_TRIAL_TAG = "ltray.best_trial"
PARENT_TAG = "mlflow.parentRunId"
TRIAL_TAG = "ltray.trial_id"
SWEEP_TAG = "ltray.sweep"
SUPERSEDED = "@superseded"
FINAL_TAG = "ltray.final_logged"  # "metrics", then "model": what of the final step is logged
EPOCH_METRIC = "epoch"
MAX_PARAM_LENGTH = 6000


def resolve_tracking_uri(uri: str) -> str:
    """Make a relative ``sqlite:///file.db`` absolute, so Ray workers (whose working folder is
    not the caller's) write to the same file."""
    prefix = "sqlite:///"
    if uri.startswith(prefix) and not uri.startswith(prefix + "/"):
        return prefix + str(Path(uri[len(prefix) :]).resolve())
    return uri


def default_artifact_location(uri: str) -> str | None:
    """``mlartifacts/`` beside a SQLite store, as an absolute path. Left to MLflow, it would be
    ``./mlruns`` in the working folder of whichever process creates the experiment: inside a
    Ray worker that is a temporary session folder, and the artifacts would be lost."""
    if uri.startswith("sqlite:///"):
        return str(Path(uri[len("sqlite:///") :]).resolve().parent / "mlartifacts")
    return None


def create_sqlite_folder(uri: str) -> None:
    """A ``sqlite:///runs/mlflow.db`` store's folder is made on first use, like the file."""
    if uri.startswith("sqlite:///"):
        Path(uri[len("sqlite:///") :]).parent.mkdir(parents=True, exist_ok=True)


@contextlib.contextmanager
def sqlite_schema_lock(uri: str) -> Iterator[None]:
    """Hold ``<file>.lock`` beside a SQLite store while MLflow creates or upgrades its tables.
    MLflow does that on a process's first use of the file; two processes doing it at once (two
    ``ltray train`` started together on a new file) collide ("duplicate column name: step") and
    one of them fails. Other stores need no lock: a server migrates once, at its start."""
    if not uri.startswith("sqlite:///"):
        yield
        return
    create_sqlite_folder(uri)
    with local_lock(uri[len("sqlite:///") :] + ".lock"):
        yield


def check_reachable(uri: str, timeout_s: float = 5.0) -> None:
    """Fail before training starts, naming the URI, if the tracking store cannot be used.
    A server URI's ``user:password@`` is sent as basic auth, as MLflow's client sends it."""
    shown = redact_url(uri)
    if uri.startswith(("http://", "https://")):
        request = urllib.request.Request(public_url(uri).rstrip("/") + "/health")
        user, password = url_credentials(uri)
        if user is not None or password is not None:
            token = base64.b64encode(f"{user or ''}:{password or ''}".encode()).decode()
            request.add_header("Authorization", f"Basic {token}")
        try:
            with urllib.request.urlopen(request, timeout=timeout_s) as response:
                if response.status != 200:
                    raise LtrayError(f"MLflow server {shown} answered {response.status} on /health")
        except urllib.error.HTTPError as exc:
            raise LtrayError(f"MLflow server {shown} answered {exc.code} on /health") from None
        except (urllib.error.URLError, OSError) as exc:
            reason = scrub(str(getattr(exc, "reason", exc)), [password or ""])
            raise LtrayError(f"MLflow server {shown} cannot be reached: {reason}") from None
    elif uri.startswith("sqlite:///"):
        folder = Path(uri[len("sqlite:///") :]).parent
        if not folder.is_dir() or not os.access(folder, os.W_OK):
            raise LtrayError(f"MLflow store {shown}: folder {folder} is missing or not writable")


def use_url_credentials(uri: str) -> str:
    """The URI to give MLflow: a server URI's ``user:password@`` becomes
    MLFLOW_TRACKING_USERNAME / MLFLOW_TRACKING_PASSWORD of this process, which MLflow sends as
    basic auth. Left in the URI, MLflow would print it in every "View run at" line."""
    if not uri.startswith(("http://", "https://")):
        return uri
    user, password = url_credentials(uri)
    if user is not None:
        os.environ["MLFLOW_TRACKING_USERNAME"] = user
    if password is not None:
        os.environ["MLFLOW_TRACKING_PASSWORD"] = password
    return public_url(uri)


def metric_key(name: str) -> str:
    """MLflow accepts letters, digits, _ - . space / in names; anything else becomes '_'."""
    return re.sub(r"[^A-Za-z0-9_\-. /]", "_", name)


class NullTracker:
    """Ranks other than 0, and ``tracking.uri: none``."""

    run_id: str | None = None

    def start(self, *args: Any, **kwargs: Any) -> None: ...

    def log_epoch(self, epoch: int, metrics: dict[str, float]) -> None: ...

    def log_metrics(self, step: int, metrics: dict[str, float]) -> None: ...

    def fill_missing(self, history: Iterable[dict[str, float]]) -> None: ...

    def log_json(self, name: str, payload: Any) -> None: ...

    def log_model(self, model: Any, example: Any, contract: dict[str, Any]) -> None: ...

    def log_final(
        self, step: int, metrics: dict[str, float], model: Any = None, already_logged: Any = ()
    ) -> None: ...

    def log_dataset(self, url: str, name: str, digest: str, context: str = "training") -> None: ...

    def set_tags(self, tags: dict[str, str]) -> None: ...

    def finish(self, status: str = "FINISHED") -> None: ...


class MlflowTracker:
    def __init__(self, uri: str, experiment: str, artifact_location: str | None = None) -> None:
        import mlflow

        self.mlflow = mlflow
        self.uri = use_url_credentials(uri)
        self.experiment = experiment
        self.artifact_location = artifact_location or default_artifact_location(uri)
        self.run_id: str | None = None
        self._logged: set[int] = set()
        mlflow.set_tracking_uri(self.uri)
        with sqlite_schema_lock(self.uri):
            self.client = mlflow.MlflowClient(self.uri)
            self.client.search_experiments(max_results=1)  # makes or upgrades a SQLite store

    def _experiment_id(self) -> str:
        found = self.client.get_experiment_by_name(self.experiment)
        if found is not None:
            return found.experiment_id
        try:
            return self.client.create_experiment(
                self.experiment, artifact_location=self.artifact_location
            )
        except self.mlflow.exceptions.MlflowException:
            # another process created it between the lookup and here
            found = self.client.get_experiment_by_name(self.experiment)
            if found is None:
                raise
            return found.experiment_id

    def _find_run(self, experiment_id: str, run_name: str) -> str | None:
        runs = self.client.search_runs(
            [experiment_id], filter_string=f"tags.`{RUN_NAME_TAG}` = '{run_name}'", max_results=1
        )
        return runs[0].info.run_id if runs else None

    def start(
        self, run_name: str, params: dict[str, Any], tags: dict[str, str], fresh: bool = False
    ) -> None:
        """Start the run, or continue the one this job logged to before. ``fresh`` keeps the old
        run but moves its name tag aside, so the next resume finds the new one, and names the
        new one visibly apart in the UI: ``NAME-fresh1``, ``NAME-fresh2``, ..."""
        experiment_id = self._experiment_id()
        self.run_id = self._find_run(experiment_id, run_name)
        shown = run_name
        if fresh and self.run_id is not None:
            self.client.set_tag(self.run_id, RUN_NAME_TAG, f"{run_name}{SUPERSEDED}")
            self.run_id = None
            superseded = self.client.search_runs(
                [experiment_id], filter_string=f"tags.`{RUN_NAME_TAG}` = '{run_name}{SUPERSEDED}'"
            )
            shown = f"{run_name}-fresh{len(superseded)}"
        if self.run_id is None:
            run = self.client.create_run(
                experiment_id, run_name=shown, tags={RUN_NAME_TAG: run_name, **tags}
            )
            self.run_id = run.info.run_id
        else:
            self.client.update_run(self.run_id, status="RUNNING")
            self.set_tags(tags)
        self._log_new_params(params)
        self._logged = self.logged_epochs()

    def recorded_identity(self, run_name: str, tag: str) -> tuple[str, dict[str, Any]] | None:
        """(run id, the identity recorded in its tag ``tag``; {} if none) of the run this job
        would continue, or None when there is no such run."""
        found = self.client.get_experiment_by_name(self.experiment)
        run_id = self._find_run(found.experiment_id, run_name) if found else None
        if run_id is None:
            return None
        recorded = self.client.get_run(run_id).data.tags.get(tag)
        return run_id, json.loads(recorded) if recorded else {}

    def _log_new_params(self, params: dict[str, Any]) -> None:
        """MLflow refuses to change a logged param; on resume only new keys are added."""
        logged = self.client.get_run(self.run_id).data.params
        fresh = {
            k: str(v)[:MAX_PARAM_LENGTH] for k, v in params.items() if metric_key(k) not in logged
        }
        items = [self.mlflow.entities.Param(metric_key(k), v) for k, v in fresh.items()]
        for start in range(0, len(items), 100):
            self.client.log_batch(self.run_id, params=items[start : start + 100])

    def log_dataset(self, url: str, name: str, digest: str, context: str = "training") -> None:
        """The data set as an MLflow dataset input (source URL, name, the manifest's
        fingerprint as digest), once per run; the UI lists it with the run."""
        from mlflow.data.dataset_source_registry import resolve_dataset_source
        from mlflow.data.meta_dataset import MetaDataset
        from mlflow.entities import DatasetInput, InputTag
        from mlflow.exceptions import MlflowException

        if self.client.get_run(self.run_id).inputs.dataset_inputs:
            return
        try:
            with warnings.catch_warnings():  # MLflow registers its local source type twice
                warnings.simplefilter("ignore", UserWarning)
                source = resolve_dataset_source(url)
        except MlflowException:  # a scheme MLflow has no source type for (memory://, ...)
            return
        dataset = MetaDataset(source=source, name=name, digest=digest[:36] or None)
        tags = [InputTag(key="mlflow.data.context", value=context)]
        inputs = [DatasetInput(dataset._to_mlflow_entity(), tags)]
        # MLflow looks for the experiment's row of this data set, then inserts it: two runs
        # logging it at once (a sweep's trials) collide on its key, and one gets an integrity
        # error; a second try finds the row the other wrote.
        for attempt in range(3):
            try:
                self.client.log_inputs(self.run_id, inputs)
                return
            except Exception as exc:
                said = f"{type(exc).__name__} {exc}".lower()
                if attempt == 2 or not any(w in said for w in ("integrity", "unique", "duplicate")):
                    raise
                time.sleep(0.2 * (attempt + 1))

    def set_tags(self, tags: dict[str, str]) -> None:
        for key, value in tags.items():
            self.client.set_tag(self.run_id, key, value)

    def logged_epochs(self) -> set[int]:
        history = self.client.get_metric_history(self.run_id, EPOCH_METRIC)
        return {int(m.step) for m in history}

    def log_metrics(self, step: int, metrics: dict[str, float], epoch_marker: bool = False) -> None:
        from mlflow.entities import Metric

        timestamp = int(1000 * time.time())
        items = [Metric(metric_key(k), float(v), timestamp, step) for k, v in metrics.items()]
        if epoch_marker:
            # the marker goes last, so an epoch counts as logged only once all of it is
            items.append(Metric(EPOCH_METRIC, float(step), timestamp, step))
        for start in range(0, len(items), 1000):
            self.client.log_batch(self.run_id, metrics=items[start : start + 1000])

    def log_epoch(self, epoch: int, metrics: dict[str, float]) -> None:
        """Log an epoch unless MLflow has it already: a worker can die after logging an epoch
        but before Ray registered that epoch's checkpoint, and the rerun must not log it twice."""
        if epoch in self._logged:
            return
        self.log_metrics(epoch, metrics, epoch_marker=True)
        self._logged.add(epoch)

    def fill_missing(self, history: Iterable[dict[str, float]]) -> None:
        """Log the epochs of a checkpoint's history that MLflow does not have yet."""
        for record in history:
            self.log_epoch(int(record["epoch"]), {k: v for k, v in record.items() if k != "epoch"})

    def log_json(self, name: str, payload: Any) -> None:
        with tempfile.TemporaryDirectory() as folder:
            path = Path(folder) / Path(name).name
            path.write_text(json.dumps(payload, indent=1))
            parent = str(Path(name).parent)
            self.client.log_artifact(self.run_id, str(path), None if parent == "." else parent)

    def log_model(self, model: Any, example: Any, contract: dict[str, Any]) -> None:
        """The model as a ``torch.export`` graph, with a signature (float32 images of the
        example's shape, any batch, in; [batch, classes] scores out) and ``contract`` (see
        :func:`ltray.train.run_info.model_contract`) as its metadata."""
        import numpy as np
        import torch
        from mlflow.models import ModelSignature
        from mlflow.types import Schema, TensorSpec

        classes = len(contract["classes"])
        signature = ModelSignature(
            inputs=Schema([TensorSpec(np.dtype(np.float32), (-1, *example.shape[1:]))]),
            outputs=Schema([TensorSpec(np.dtype(np.float32), (-1, classes))]),
        )
        with self.mlflow.start_run(run_id=self.run_id):
            self.mlflow.pytorch.log_model(
                model,
                name="model",
                input_example=example,
                signature=signature,
                metadata={"ltray": contract},
                # torch.export's graph: no pickle to trust, no ltray needed to load it; the
                # example's batch of 2 keeps the batch dimension dynamic
                serialization_format="pt2",
                pip_requirements=[f"torch=={torch.__version__.split('+')[0]}"],
            )

    def log_final(
        self,
        step: int,
        metrics: dict[str, float],
        model: Callable[[], tuple[Any, Any, dict[str, Any]]] | None = None,
        already_logged: Iterable[str] = (),
    ) -> None:
        """The final metrics (at ``step``), ``final_metrics.json`` and, when ``model`` is given
        (a function returning the model, an input example and its contract), the model: each
        once; metrics named in ``already_logged`` (the last epoch's own) are not logged again.
        The tag ``ltray.final_logged`` records what is done, so a run restarted between these
        logs and its last checkpoint does not log them twice."""
        done = self.client.get_run(self.run_id).data.tags.get(FINAL_TAG, "")
        if done not in ("metrics", "model"):
            skip = set(already_logged)
            self.log_metrics(step, {k: v for k, v in metrics.items() if k not in skip})
            self.log_json("final_metrics.json", metrics)
            self.client.set_tag(self.run_id, FINAL_TAG, "metrics")
        if model is not None and done != "model":
            self.log_model(*model())
            self.client.set_tag(self.run_id, FINAL_TAG, "model")

    def log_file(self, path: str | Path, folder: str | None = None) -> None:
        self.client.log_artifact(self.run_id, str(path), folder)

    def close_run(self, run_name: str, status: str, tags: dict[str, str]) -> None:
        """Tag and end the run named ``run_name`` (a sweep's child run whose trial was stopped
        early or failed, from outside the trial), if it exists and is still running."""
        found = self.client.get_experiment_by_name(self.experiment)
        run_id = self._find_run(found.experiment_id, run_name) if found else None
        if run_id is None:
            return
        for key, value in tags.items():
            self.client.set_tag(run_id, key, value)
        if self.client.get_run(run_id).info.status == "RUNNING":
            self.client.set_terminated(run_id, status=status)

    def child_runs(self) -> list[Any]:
        """The runs nested under this one (tag ``mlflow.parentRunId``)."""
        found = self.client.get_experiment_by_name(self.experiment)
        return self.client.search_runs(
            [found.experiment_id], filter_string=f"tags.`mlflow.parentRunId` = '{self.run_id}'"
        )

    def finish(self, status: str = "FINISHED") -> None:
        if self.run_id is not None:
            self.client.set_terminated(self.run_id, status=status)


def make_tracker(
    uri: str, experiment: str, rank: int, artifact_location: str | None = None
) -> MlflowTracker | NullTracker:
    if rank != 0 or uri.lower() == "none":
        return NullTracker()
    return MlflowTracker(uri, experiment, artifact_location)


DEFAULT_TRACKING_URI = "sqlite:///mlflow.db"
MODEL_ARTIFACT = "model"


def tracking_uri_or_default(uri: str | None) -> str:
    """``uri``, else ``MLFLOW_TRACKING_URI``, else ``sqlite:///mlflow.db`` (the job's default),
    a relative SQLite path made absolute."""
    return resolve_tracking_uri(
        uri or os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_TRACKING_URI
    )


@contextlib.contextmanager
def no_progress_bars() -> Iterator[None]:
    """MLflow draws artifact downloads as progress bars on stderr: the console is the user's."""
    key = "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"
    before = os.environ.get(key)
    os.environ[key] = "false"
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = before


def open_store(uri: str) -> Any:
    """An ``MlflowClient`` on a store that is there, for reading what runs logged: a SQLite file
    that does not exist (which MLflow would create, empty) or a server that cannot be reached is
    an error naming the store, its credentials masked."""
    shown = redact_url(uri)
    if uri.startswith("sqlite:///") and not Path(uri[len("sqlite:///") :]).is_file():
        raise LtrayError(
            f"no MLflow store at {shown} (the file does not exist): pass --tracking-uri "
            "or set MLFLOW_TRACKING_URI to the store the run was logged to"
        )
    if uri.startswith(("http://", "https://")):
        check_reachable(uri)
    import mlflow

    return mlflow.MlflowClient(use_url_credentials(uri))


class RecordedRun:
    """A run read back from MLflow (what ``ltray eval`` evaluates and logs to): its params,
    tags, logged model, and a way to add metrics and files to it.

    Opening one never creates anything: a SQLite store that is not there, a server that
    cannot be reached or a run id the store does not hold is an error naming the store (with
    its credentials masked).
    """

    def __init__(self, uri: str, run_id: str) -> None:
        import mlflow
        from mlflow.exceptions import MlflowException

        self.mlflow = mlflow
        self.client = open_store(uri)
        self.uri = use_url_credentials(uri)
        self.shown_uri = shown = redact_url(uri)
        try:
            run = self.client.get_run(run_id)
        except MlflowException:
            raise LtrayError(f"no MLflow run {run_id!r} in {shown}") from None
        self.run_id = run.info.run_id
        self.params: dict[str, str] = dict(run.data.params)
        self.tags: dict[str, str] = dict(run.data.tags)
        self.run_name = self.tags.get(RUN_NAME_TAG) or run.info.run_name or self.run_id

    def model_contract(self) -> dict[str, Any] | None:
        """The ``ltray`` metadata of the run's logged model (its contract), or None when the
        run logged no model."""
        from mlflow.exceptions import MlflowException

        try:
            with no_progress_bars():
                info = self.mlflow.models.get_model_info(f"runs:/{self.run_id}/{MODEL_ARTIFACT}")
        except (MlflowException, OSError):
            return None
        return (info.metadata or {}).get("ltray")

    def model_state(self) -> dict[str, Any]:
        """The tensors of the run's logged model (a ``torch.export`` graph, loaded without
        pickle), by their names in the model that was exported."""
        from mlflow.exceptions import MlflowException

        self.mlflow.set_tracking_uri(self.uri)
        try:
            with no_progress_bars():
                module = self.mlflow.pytorch.load_model(f"runs:/{self.run_id}/{MODEL_ARTIFACT}")
        except (MlflowException, OSError) as exc:
            line = redact_url(str(exc).strip().splitlines()[0]) if str(exc).strip() else ""
            raise LtrayError(
                f"the model of MLflow run {self.run_id} in {self.shown_uri} cannot be loaded: "
                f"{line or type(exc).__name__}"
            ) from None
        return {k: v.detach().cpu() for k, v in module.state_dict().items()}

    def log_metrics(self, metrics: dict[str, float], step: int = 0) -> None:
        from mlflow.entities import Metric

        timestamp = int(1000 * time.time())
        items = [Metric(metric_key(k), float(v), timestamp, step) for k, v in metrics.items()]
        for start in range(0, len(items), 1000):
            self.client.log_batch(self.run_id, metrics=items[start : start + 1000])

    def log_file(self, path: str | Path, folder: str | None = None) -> None:
        self.client.log_artifact(self.run_id, str(path), folder)
