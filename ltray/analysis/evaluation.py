"""``ltray eval``: a trained model on one split of a data set, as training evaluates it.

Where the model and its job come from:

- an MLflow run id: the job is the run's params (:func:`ltray.train.run_info.job_from_params`:
  what training logged, not a second record), the classes are its logged model's contract, the
  weights are the logged model's (a ``torch.export`` graph: its tensors are loaded into the
  model the job builds); a run that logged no model falls back to its last checkpoint in
  ``storage.url``;
- a checkpoint (a ``state.pt``, a checkpoint folder, or a run folder in storage, whose latest
  checkpoint is taken): a checkpoint holds no job, but it names the MLflow run that trained
  it (``mlflow_run_id``), whose params are the job; ``--job JOB.yaml`` gives the job instead
  (a run trained with ``tracking.uri: none``).

The evaluation is training's (:func:`ltray.train.evaluate.evaluate`, the same counts), on the
GPU where there is one, with top-5 and the expected calibration error added, and a confusion
figure. ``--tau-norm`` rescales the linear head's rows (Kang et al. 2020), tau chosen on the
val split's balanced accuracy only, and evaluates the split again with it.
"""

from __future__ import annotations

import io
import json
import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ltray import fs
from ltray.analysis.confusion import confusion_matrix, plot_confusion, shown_confusion
from ltray.config import JobConfig
from ltray.data import Manifest, read_manifest
from ltray.data.profiles import GROUPS, shot_groups
from ltray.errors import LtrayError
from ltray.losses import build_loss, head_for
from ltray.models import LinearHead, build_model, tau_normalized
from ltray.models.classifier import Classifier, ModelOutput
from ltray.secrets import public_url, redact_url
from ltray.tracking import RecordedRun
from ltray.train.checkpoint import CHECKPOINT_FILE, load_state
from ltray.train.decoupled import collect_features
from ltray.train.device import Normalizer, Placement
from ltray.train.evaluate import EvalCounts, evaluate
from ltray.train.input_path import SplitInput, loader_workers, open_split
from ltray.train.run_info import job_from_params
from ltray.train.session import LOCAL_FOLDER

TAU_SUFFIX = "_taunorm"


# --- where the model comes from --------------------------------------------------------------
@dataclass
class Source:
    """A trained model ready to evaluate, and what it came with."""

    job: JobConfig
    model: Classifier
    criterion: nn.Module
    classes: list[str]  # in label order, as the model was trained
    train_counts: list[int]  # per class, of the training split: the shot groups
    name: str  # the run's name, for the default output folder
    run: RecordedRun | None = None  # the MLflow run named as the input


def looks_like_run_id(text: str) -> bool:
    """MLflow's run ids are 32 hex digits."""
    return len(text) == 32 and all(c in "0123456789abcdef" for c in text.lower())


def open_source(
    target: str,
    tracking_uri: str,
    job: JobConfig | None = None,
    data_url: str | None = None,
) -> Source:
    """The model named by ``target``: an MLflow run id in ``tracking_uri``, or a checkpoint
    path or URL. ``job`` (from ``--job``) replaces the recorded job; ``data_url`` is where the
    training set's class counts are read if the job's own data set cannot be."""
    if looks_like_run_id(target) and not fs.exists(target):
        return from_run(RecordedRun(tracking_uri, target), job, data_url)
    return _from_checkpoint(target, tracking_uri, job, data_url)


def from_run(run: RecordedRun, job: JobConfig | None = None, data_url: str | None = None) -> Source:
    """The model of an MLflow run already opened (see :func:`open_source`)."""
    job = job or job_from_params(run.params, f"MLflow run {run.run_id}'s params")
    contract = run.model_contract()
    if contract is None:  # a run without a logged model (tracking.log_model: false)
        state, where = _latest_state(fs.join_url(job.storage.url, run.run_name))
        source = _build(job, state, where, state["num_classes"], None, data_url)
    else:
        tensors = run.model_state()
        state = {
            "model": _with_prefix(tensors, "model."),
            "criterion": _with_prefix(tensors, "criterion."),
        }
        where = f"the model of MLflow run {run.run_id}"
        classes = list(contract["classes"])
        source = _build(job, state, where, len(classes), classes, data_url)
    source.name, source.run = run.run_name, run
    return source


def _from_checkpoint(
    target: str, tracking_uri: str, job: JobConfig | None, data_url: str | None
) -> Source:
    state, where = _latest_state(target)
    name = _run_folder_name(target)
    if job is None:
        run_id = state.get("mlflow_run_id")
        if not run_id:
            raise LtrayError(
                f"{where} names no MLflow run (trained with tracking.uri: none), so its job "
                "is recorded nowhere: give it with --job JOB.yaml"
            )
        try:
            run = RecordedRun(tracking_uri, run_id)
        except LtrayError as exc:
            raise LtrayError(
                f"{where} was trained in MLflow run {run_id}, whose params hold its job: {exc} "
                "(or give the job with --job JOB.yaml)"
            ) from None
        job = job_from_params(run.params, f"MLflow run {run_id}'s params")
        name = run.run_name
    if job.model.num_classes is not None and job.model.num_classes != state["num_classes"]:
        raise LtrayError(
            f"{where} has {state['num_classes']} classes, the job's model.num_classes is "
            f"{job.model.num_classes}"
        )
    source = _build(job, state, where, int(state["num_classes"]), None, data_url)
    source.name = name
    return source


def _run_folder_name(target: str) -> str:
    """The run folder's name from a checkpoint path: RUN[/local]/checkpoint_*[/state.pt]."""
    parts = [p for p in target.rstrip("/").split("/") if p]
    while parts and (
        parts[-1] == CHECKPOINT_FILE
        or parts[-1].startswith("checkpoint_")
        or parts[-1] == LOCAL_FOLDER
    ):
        parts.pop()
    return parts[-1] if parts else "checkpoint"


def _with_prefix(tensors: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)}


def find_checkpoint(url: str) -> str:
    """The ``state.pt`` that ``url`` names: the file itself, a checkpoint folder's, or the
    latest checkpoint of a run folder (``RUN/checkpoint_*`` on Ray, ``RUN/local/...``)."""
    shown = redact_url(url)
    if not fs.exists(url):
        raise LtrayError(f"checkpoint {shown} does not exist")
    if url.rstrip("/").endswith(CHECKPOINT_FILE):
        return url
    if fs.exists(fs.join_url(url, CHECKPOINT_FILE)):
        return fs.join_url(url, CHECKPOINT_FILE)
    found: list[tuple[str, str]] = []
    for folder in (url, fs.join_url(url, LOCAL_FOLDER)):
        if not fs.exists(folder):
            continue
        for name in fs.list_names(folder):
            state = fs.join_url(folder, name, CHECKPOINT_FILE)
            if name.startswith("checkpoint_") and fs.exists(state):
                found.append((name, state))
    if not found:
        raise LtrayError(
            f"{shown} holds no checkpoint: give a run folder in storage, one of its "
            f"checkpoint_* folders or a {CHECKPOINT_FILE}"
        )
    return max(found)[1]  # names sort by stream position; _final after its position


def _latest_state(url: str) -> tuple[dict[str, Any], str]:
    path = find_checkpoint(url)
    where = f"checkpoint {redact_url(path)}"
    try:
        return load_state(io.BytesIO(fs.read_bytes(path))), where
    except (ValueError, RuntimeError, OSError, KeyError) as exc:
        raise LtrayError(f"{where} cannot be read: {str(exc).splitlines()[0]}") from None


def _build(
    job: JobConfig,
    state: dict[str, Any],
    where: str,
    num_classes: int,
    classes: list[str] | None,
    data_url: str | None,
) -> Source:
    """The job's model and loss with the trained tensors (``state["model"]``,
    ``state["criterion"]``) loaded; a model of another architecture (or head, or class count)
    than the job's is refused."""
    train_manifest = _training_manifest(job, data_url)
    train_counts = train_manifest.class_counts(job.data.train_split)
    if len(train_counts) != num_classes:
        raise LtrayError(
            f"{where} has {num_classes} classes, its training set "
            f"{redact_url(job.data.url)} has {len(train_counts)}"
        )
    head = head_for(job.loss, job.model)
    model = build_model(job.model, num_classes, head=head)
    try:
        model.load_state_dict(state["model"])
    except RuntimeError as exc:
        raise LtrayError(
            f"{where} is not the job's model (model.arch={job.model.arch}, a {head} head, "
            f"{num_classes} classes): {_first_mismatch(exc)}"
        ) from None
    criterion = build_loss(job.loss, train_counts)
    try:
        criterion.load_state_dict(state["criterion"])
    except RuntimeError as exc:
        raise LtrayError(
            f"{where} does not hold the job's loss {job.loss.name!r}: {_first_mismatch(exc)}"
        ) from None
    model.eval()
    classes = classes or list(train_manifest.classes)
    return Source(job, model, criterion, classes, train_counts, "run")


def _first_mismatch(exc: RuntimeError) -> str:
    """PyTorch's load_state_dict error, cut to its first finding."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    detail = lines[1] if len(lines) > 1 else (lines[0] if lines else "tensors differ")
    return detail if len(detail) < 240 else detail[:237] + "..."


def _training_manifest(job: JobConfig, data_url: str | None) -> Manifest:
    """The training set's manifest (its class counts make the shot groups); where the job's
    data set cannot be read here, the evaluated data set's own train split."""
    try:
        return read_manifest(job.data.url, storage_options=job.data.storage_options)
    except LtrayError:
        if data_url is None:
            raise
        return read_manifest(data_url)


# --- the evaluated data set ------------------------------------------------------------------
def check_same_classes(manifest: Manifest, classes: Sequence[str], data_url: str) -> None:
    """The evaluated data set's classes must be the model's, in the same order."""
    theirs = list(manifest.classes)
    if theirs == list(classes):
        return
    shown = redact_url(data_url)
    if len(theirs) != len(classes):
        missing = [c for c in classes if c not in theirs][:3]
        extra = [c for c in theirs if c not in classes][:3]
        detail = ", ".join(
            part
            for part in (
                f"not in it: {', '.join(missing)}" if missing else "",
                f"not the model's: {', '.join(extra)}" if extra else "",
            )
            if part
        )
        raise LtrayError(
            f"data set {shown} has {len(theirs)} classes, the model {len(classes)}"
            + (f" ({detail})" if detail else "")
        )
    i = next(i for i, (a, b) in enumerate(zip(theirs, classes, strict=True)) if a != b)
    raise LtrayError(
        f"data set {shown} has other classes than the model: its class {i} is {theirs[i]!r}, "
        f"the model's is {classes[i]!r} (same classes, same order needed)"
    )


def check_split(manifest: Manifest, split: str, data_url: str, why: str = "") -> None:
    if not manifest.has_split(split):
        raise LtrayError(
            f"data set {redact_url(data_url)} has no split {split!r}{why} "
            f"(it has {', '.join(manifest.split_names) or 'none'})"
        )


# --- the evaluation --------------------------------------------------------------------------
@dataclass
class SplitPass:
    """One pass over a split: training's counts, and per batch what tau-norm and the confusion
    matrix need (features are kept only when asked)."""

    counts: EvalCounts
    labels: list[torch.Tensor] = field(default_factory=list)
    predicted: list[torch.Tensor] = field(default_factory=list)
    features: list[torch.Tensor] = field(default_factory=list)

    def confusion(self, num_classes: int) -> torch.Tensor:
        return confusion_matrix(torch.cat(self.labels), torch.cat(self.predicted), num_classes)


@dataclass
class Evaluator:
    """The model placed on this machine's device, and how it reads a data set."""

    source: Source
    data_url: str
    manifest: Manifest
    storage_options: dict[str, Any]
    placement: Placement
    normalize: Normalizer
    inputs: dict[str, SplitInput] = field(default_factory=dict)

    @classmethod
    def create(cls, source: Source, data_url: str, manifest: Manifest) -> Evaluator:
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        scaling = source.job.scaling
        trained_on = "cuda" if scaling.use_gpu is True else "cpu"
        if trained_on != device.type:  # bf16 where it trained on GPUs and we run on the CPU
            scaling = scaling.model_copy(update={"precision": "auto"})
        placement = Placement.create(device, scaling, source.job.model)
        source.model = placement.prepare_module(source.model)
        source.criterion = source.criterion.to(device)
        same_data = public_url(data_url) == public_url(source.job.data.url)
        options = source.job.data.storage_options if same_data else {}
        normalize = Normalizer(placement, source.job.data.mean, source.job.data.std)
        return cls(source, data_url, manifest, dict(options), placement, normalize)

    def _batches(self, split: str) -> Iterator[dict[str, Any]]:
        """``split`` read as training's evaluation reads it (:mod:`ltray.train.input_path`):
        held on the GPU or decoded there where the job's data settings say so, streamed and
        decoded by loader processes on the CPU; opened once, so a held split is decoded once."""
        if split not in self.inputs:
            data = self.source.job.data.model_copy(
                update={"url": self.data_url, "storage_options": self.storage_options}
            )
            self.inputs[split] = open_split(
                data,
                self.manifest,
                split,
                train=False,
                device=self.placement.device,
                workers=loader_workers(data, local_world_size=1),
                batch_size=self.source.job.optim.batch_size,
                rank=0,
                world_size=1,
                seed=self.source.job.seed,
                sampler="plain",
            )
        return self.inputs[split].epoch(0)

    def run(self, split: str, keep_features: bool = False) -> SplitPass:
        """Training's evaluation of ``split`` (:func:`ltray.train.evaluate.evaluate`)."""
        kept = SplitPass(EvalCounts.empty(len(self.source.classes)))

        def observe(out: ModelOutput, logits: torch.Tensor, labels: torch.Tensor) -> None:
            kept.labels.append(labels.cpu())
            kept.predicted.append(logits.argmax(dim=1).cpu())
            if keep_features:
                kept.features.append(out.features.detach().float().cpu())

        kept.counts = evaluate(
            self.source.model,
            self.source.criterion,
            self._batches(split),
            self.normalize,
            self.placement,
            len(self.source.classes),
            observe=observe,
        )
        return kept

    def features(self, split: str) -> tuple[torch.Tensor, torch.Tensor]:
        """The frozen model's features and labels of ``split`` (what tau is chosen on)."""
        return collect_features(
            self.source.model, self._batches(split), self.normalize, self.placement, None, 1
        )

    def scores(self, head: nn.Module, features: torch.Tensor) -> torch.Tensor:
        """What the prediction is made from, for ``head`` on these features (on the CPU)."""
        device = self.placement.device
        features = features.to(device)
        with torch.no_grad():
            logits = head.to(device)(features)
            out = ModelOutput(logits, features)
            return self.source.criterion.predict_logits(out).float().cpu()

    def rescored(self, passed: SplitPass, head: nn.Module) -> SplitPass:
        """The same split's kept features through another head: counts and predictions."""
        out = SplitPass(EvalCounts.empty(len(self.source.classes)))
        for features, labels in zip(passed.features, passed.labels, strict=True):
            logits = self.scores(head, features)
            out.counts.add_predictions(logits, labels)
            out.labels.append(labels)
            out.predicted.append(logits.argmax(dim=1))
        return out


def check_tau_norm_possible(source: Source) -> None:
    """tau-norm rescales the rows of a linear head; a cosine head normalises them itself."""
    head = source.model.head
    if isinstance(head, LinearHead):
        return
    kind = getattr(head, "kind", type(head).__name__)
    if kind == "cosine":
        raise LtrayError(
            f"--tau-norm: the model has a cosine head (loss {source.job.loss.name!r}), which "
            "divides every row by its norm before scoring: w_j / ||w_j||^tau scores the same "
            "for every tau, so tau-norm would change nothing"
        )
    raise LtrayError(f"--tau-norm needs a linear head with a weight matrix, the model has {kind}")


def balanced_accuracy(logits: torch.Tensor, labels: torch.Tensor, num_classes: int) -> float:
    """Mean per-class top-1 in percent, over the classes with images, as training's counts
    compute it (``{prefix}/acc_balanced``)."""
    counts = EvalCounts.empty(num_classes)
    counts.add_predictions(logits, labels)
    evaluated = counts.seen > 0
    return 100.0 * (counts.correct[evaluated] / counts.seen[evaluated]).mean().item()


def choose_tau(
    head: LinearHead,
    val_features: torch.Tensor,
    val_labels: torch.Tensor,
    grid: Sequence[float],
    score: Callable[[nn.Module, torch.Tensor], torch.Tensor] | None = None,
) -> tuple[float, dict[float, float]]:
    """The tau of ``grid`` with the best balanced accuracy on the VAL features given (ties:
    the first in the grid), and every tau's score. It sees no other split. ``score(head,
    features)`` gives the scores a prediction is made from (default: the head's logits)."""
    if not grid or min(grid) < 0:
        raise LtrayError(f"loss.decoupled.tau_grid must be non-empty and >= 0, got {list(grid)}")
    score = score or (lambda h, f: h(f))
    num_classes = head.out_features
    with torch.no_grad():
        scores = {
            tau: balanced_accuracy(
                score(tau_normalized(head, tau), val_features), val_labels, num_classes
            )
            for tau in grid
        }
    return max(grid, key=lambda tau: scores[tau]), scores


# --- the report ------------------------------------------------------------------------------
@dataclass
class Report:
    """What ``ltray eval`` found: flat metrics (``eval/{split}/...``, and with tau-norm
    ``eval/{split}_taunorm/...``), and the row-normalised confusion figures to draw."""

    split: str
    metrics: dict[str, float]
    figures: dict[str, tuple[torch.Tensor, list[str], str]]  # file name -> rates, labels, title
    tau: float | None = None
    tau_scores: dict[float, float] = field(default_factory=dict)


def run_evaluation(
    source: Source,
    data_url: str | None = None,
    split: str = "test",
    tau_norm: bool = False,
) -> Report:
    """Evaluate ``split`` of the job's data set (or ``data_url``: same classes, same order)."""
    if tau_norm:
        check_tau_norm_possible(source)
    job = source.job
    url = data_url or job.data.url
    options = job.data.storage_options if data_url is None else {}
    manifest = read_manifest(url, storage_options=options)
    check_same_classes(manifest, source.classes, url)
    check_split(manifest, split, url)
    val_split = job.data.val_split or "val"
    if tau_norm:
        check_split(manifest, val_split, url, " (--tau-norm chooses tau on the val split only)")
    groups = shot_groups(source.train_counts, job.data.many_threshold, job.data.few_threshold)
    evaluator = Evaluator.create(source, url, manifest)
    classes = source.classes
    num_classes = len(classes)

    passed = evaluator.run(split, keep_features=tau_norm)
    prefix = f"eval/{split}"
    metrics = passed.counts.metrics(groups, classes, prefix, detailed=True)
    figures = {
        f"confusion_{split}.png": (
            *shown_confusion(passed.confusion(num_classes), groups, classes),
            f"{source.name}: {split}",
        )
    }
    report = Report(split, metrics, figures)
    if tau_norm:
        head = source.model.head
        assert isinstance(head, LinearHead)
        val_features, val_labels = evaluator.features(val_split)
        grid = job.loss.decoupled.tau_grid
        tau, scores = choose_tau(head, val_features, val_labels, grid, evaluator.scores)
        normed = evaluator.rescored(passed, tau_normalized(head, tau))
        tau_prefix = f"{prefix}{TAU_SUFFIX}"
        metrics.update(normed.counts.metrics(groups, classes, tau_prefix, detailed=True))
        metrics[f"{tau_prefix}/tau"] = tau
        metrics[f"{tau_prefix}/val_acc_balanced"] = scores[tau]
        figures[f"confusion_{split}{TAU_SUFFIX}.png"] = (
            *shown_confusion(normed.confusion(num_classes), groups, classes),
            f"{source.name}: {split}, tau-norm (tau={tau:g})",
        )
        report.tau, report.tau_scores = tau, scores
    return report


def write_report(report: Report, folder: Path) -> list[Path]:
    """metrics.json and the confusion PNGs in ``folder`` (made if missing); the files."""
    folder.mkdir(parents=True, exist_ok=True)
    written = [folder / "metrics.json"]
    payload = {k: (None if math.isnan(v) else v) for k, v in sorted(report.metrics.items())}
    written[0].write_text(json.dumps(payload, indent=1) + "\n")
    for name, (rates, labels, title) in report.figures.items():
        plot_confusion(rates, labels, title, folder / name)
        written.append(folder / name)
    return written


def log_report(run: RecordedRun, report: Report, files: list[Path]) -> None:
    """The metrics into the run, the figures as artifacts under ``eval/``."""
    run.log_metrics({k: v for k, v in report.metrics.items() if not math.isnan(v)})
    for path in files:
        if path.suffix == ".png":
            run.log_file(path, "eval")


def table(report: Report) -> list[str]:
    """The numbers as aligned text: overall and per shot group, top-1, top-5 and ECE (%)."""
    lines = []
    sections = [(f"eval/{report.split}", report.split)]
    if report.tau is not None:
        tau_title = f"{report.split}, tau-norm (tau={report.tau:g}, chosen on val)"
        sections.append((f"eval/{report.split}{TAU_SUFFIX}", tau_title))
    for prefix, title in sections:
        lines.append(f"{title}:")
        lines.append(f"  {'':10} {'top-1':>7} {'top-5':>7} {'ECE':>7}")
        for group in ("", *GROUPS):
            suffix = f"_{group}" if group else ""
            row = [report.metrics.get(f"{prefix}/{m}{suffix}") for m in ("acc", "acc5", "ece")]
            if row[0] is None:
                continue
            cells = " ".join(f"{v:7.2f}" if v is not None else f"{'-':>7}" for v in row)
            lines.append(f"  {group or 'overall':10} {cells}")
        balanced = report.metrics.get(f"{prefix}/acc_balanced")
        if balanced is not None:
            lines.append(f"  {'balanced':10} {balanced:7.2f}")
    return lines
