"""``train_loop_per_worker``: the one training loop, for Ray Train workers and for ``--local``.

Ray appears only at the edge (``RaySession``); the epoch, the evaluation and the losses are plain
PyTorch. Every source of randomness is explicit: model init from ``torch.manual_seed(seed)``,
data order and augmentation from (seed, epoch, rank) inside the reader. A checkpoint holds the
RNG state as well, so a resumed run ends where an uninterrupted run ends.

Every rank reads the same number of training batches (``equal_ranks``: floor(N / W) rows each,
see :mod:`ltray.data.stream.partition`), so all ranks take the same optimiser steps at the same
learning rates and their replicas (model, optimiser momentum, learned loss parameters) stay
identical: rank 0's state is every rank's state, and that is what a checkpoint saves. With
``storage.checkpoint_every_steps`` a checkpoint is also saved inside an epoch, and a restore
resumes the data stream at the batch after it.

MLflow gets an epoch only once a checkpoint holding it is durable, so a restart never redoes
an epoch that MLflow already has: each metric has one value per step, the finished run's.
"""

from __future__ import annotations

import contextlib
import copy
import itertools
import math
import os
import time
from collections.abc import Iterator
from typing import Any

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from ltray.analysis.analyze import RunHistory, log_run_figures, run_label
from ltray.config import JobConfig
from ltray.data import read_manifest
from ltray.data.profiles import shot_groups
from ltray.errors import LtrayError
from ltray.losses import build_loss, head_for
from ltray.losses.base import effective_number_weights
from ltray.models import build_model
from ltray.secrets import join_secrets, redact_url
from ltray.tracking import make_tracker
from ltray.train.classifier_stage import RETRAINED, retrain_classifier
from ltray.train.classifier_stage import SAMPLER as STAGE2_SAMPLER
from ltray.train.decoupled import accuracy, collect_features, tau_norm
from ltray.train.device import Normalizer, Placement, SyncCheck, wants_gpu
from ltray.train.divergence import (
    FAILURE_FILE,
    NonFiniteLoss,
    first_bad_step,
    gradients_finite,
    raise_if_any_rank_diverged,
)
from ltray.train.evaluate import EvalCounts, evaluate
from ltray.train.input_path import SplitInput, loader_workers, open_split
from ltray.train.run_identity import check_class_count
from ltray.train.run_info import (
    Predictor,
    final_step,
    finished_line,
    log_training_data,
    model_contract,
    progress_line,
    run_params,
    run_tags,
    worker_nodes,
)
from ltray.train.schedule import lr_at, scaled_lr
from ltray.train.session import LocalSession, RaySession, Session, fetch_secrets
from ltray.train.storage import Storage
from ltray.train.train_module import TrainModule, compile_failures_named, compile_step

# "warn" or "error": any host synchronisation inside the step loop is reported from its third
# step on, by torch on a GPU and by ltray.train.host_reads elsewhere (bench/gpu_check.sh and
# the suite set it; the loop reads the device only at log_every_steps, and a mid-epoch
# checkpoint's save)
SYNC_DEBUG_ENV = "LTRAY_SYNC_DEBUG"


def _device(session: Session, job: JobConfig) -> torch.device:
    if not wants_gpu(job.scaling):
        return torch.device("cpu")
    return torch.device("cuda", session.local_rank % torch.cuda.device_count())


class Trainer:
    def __init__(
        self,
        job: JobConfig,
        session: Session,
        run_name: str,
        fresh: bool = False,
        tags: dict[str, str] | None = None,
    ) -> None:
        """``tags``: added to the MLflow run's own (a sweep trial's parent run and trial id)."""
        # wall time of this attempt since its start or its last epoch record (time/wall_s)
        self._clock = time.perf_counter()
        self.job = job
        self.extra_tags = dict(tags or {})
        self.fresh = fresh
        self.session = session
        self.run_name = run_name
        self.rank, self.world = session.rank, session.world_size
        self.distributed = dist.is_available() and dist.is_initialized() and self.world > 1

        data = job.data
        self.manifest = read_manifest(data.url, storage_options=data.storage_options)
        self.num_classes = self.manifest.num_classes
        check_class_count(job, self.num_classes)
        self.train_counts = self.manifest.class_counts(data.train_split)
        self.manifest.check_train_shares(data.train_split, self.world)
        self.groups = shot_groups(self.train_counts, data.many_threshold, data.few_threshold)
        val = data.val_split or ("val" if self.manifest.has_split("val") else None)
        for split in (data.train_split, val or data.test_split, data.test_split):
            if not self.manifest.has_split(split):
                raise LtrayError(f"data set {redact_url(data.url)} has no split {split!r}")
        # per-epoch evaluation runs on the validation split, or on test where there is none;
        # selection (select_by, tau_norm's tau) never looks at test
        self.val_split = val
        self.eval_split, self.eval_prefix = (val, "val") if val else (data.test_split, "test")
        if job.schedule.select_by and val is None:
            raise LtrayError(
                f"schedule.select_by={job.schedule.select_by!r} needs a validation split; "
                f"data set {redact_url(data.url)} has none (selection never uses test)"
            )

        torch.manual_seed(job.seed)
        self.placement = Placement.create(_device(session, job), job.scaling, job.model)
        self.criterion = build_loss(job.loss, self.train_counts)
        self.model = build_model(job.model, self.num_classes, head=head_for(job.loss, job.model))
        self.module = self.placement.prepare_module(TrainModule(self.model, self.criterion))
        if job.scaling.compile:
            compile_step(self.module)
        self.ddp: torch.nn.Module = self.module
        if self.distributed:
            device_ids = (
                [self.placement.device.index] if self.placement.device.type == "cuda" else None
            )
            self.ddp = DistributedDataParallel(self.module, device_ids=device_ids)
        self.peak_lr = scaled_lr(job.optim, self.world)
        self.optimizer = self._optimizer()
        self.normalize = Normalizer(self.placement, data.mean, data.std)
        self.workers = loader_workers(data, session.local_world_size)
        self._inputs: dict[tuple, SplitInput] = {}
        tracking = job.tracking
        self.tracker = make_tracker(
            tracking.uri, tracking.experiment, self.rank, tracking.artifact_location
        )
        self.history: list[dict[str, float]] = []
        self.start_epoch = 0
        self.resume: dict[str, Any] = {}  # a mid-epoch checkpoint's stream position and sums
        self.final: dict[str, float] = {}

    # --- set-up ------------------------------------------------------------------------------
    def _optimizer(self) -> torch.optim.Optimizer:
        optim = self.job.optim
        groups = [
            {"params": list(self.model.parameters()), "weight_decay": optim.weight_decay},
            {"params": list(self.criterion.parameters()), "weight_decay": 0.0},
        ]
        groups = [g for g in groups if g["params"]]
        # torch's fused kernels, on GPUs: one launch for all parameters instead of several
        fused = {"fused": True} if self.placement.device.type == "cuda" else {}
        if optim.name == "adamw":
            return torch.optim.AdamW(groups, lr=self.peak_lr, **fused)
        return torch.optim.SGD(
            groups, lr=self.peak_lr, momentum=optim.momentum, nesterov=optim.nesterov, **fused
        )

    def _input(
        self,
        split: str,
        train: bool,
        batch_size: int | None = None,
        sampler: str | None = None,
        workers: int | None = None,
    ) -> SplitInput:
        """A split's input (:mod:`ltray.train.input_path`), opened once per run: a split held
        on the device is read and decoded once."""
        workers = self.workers if workers is None else workers
        key = (split, train, batch_size, sampler, workers)
        if key not in self._inputs:
            self._inputs[key] = open_split(
                self.job.data,
                self.manifest,
                split,
                train=train,
                device=self.placement.device,
                workers=workers,
                batch_size=batch_size or self.job.optim.batch_size,
                rank=self.rank,
                world_size=self.world,
                seed=self.job.seed,
                sampler=sampler,
                say=self._say,
            )
        return self._inputs[key]

    def close(self) -> None:
        """Stop what the inputs started ahead (a run that ends before its last epoch)."""
        for source in self._inputs.values():
            source.close()

    def _say(self, line: str) -> None:
        if self.rank == 0:
            self.session.say(line)

    # --- checkpoints -------------------------------------------------------------------------
    def state(
        self,
        epoch: int,
        final: dict[str, float] | None = None,
        stream: dict[str, int] | None = None,
        partial: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        """The checkpoint after finished epoch ``epoch``; ``stream`` and ``partial`` for one
        inside the next epoch (see :mod:`ltray.train.checkpoint`)."""
        cuda_rng = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []
        workers = self.workers
        return {
            "epoch": epoch,
            "stream": stream or {"epoch": epoch + 1, "batch": 0, "loader_workers": workers},
            "partial": partial or {},
            "num_classes": self.num_classes,
            "model": self.model.state_dict(),
            "criterion": self.criterion.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scaler": {},  # bf16 autocast needs no loss scaling; kept for the format's sake
            "rng": {"torch": torch.get_rng_state(), "cuda": cuda_rng},
            "history": self.history,
            "final": final or {},
            "mlflow_run_id": self.tracker.run_id,
        }

    def restore(self, state: dict[str, Any]) -> None:
        if state["num_classes"] != self.num_classes:
            raise LtrayError(
                f"checkpoint of run {self.run_name} has {state['num_classes']} classes, "
                f"data set {redact_url(self.job.data.url)} has {self.num_classes}"
            )
        self.history = list(state["history"])
        stream = state.get("stream") or {"epoch": int(state["epoch"]) + 1, "batch": 0}
        self.start_epoch = int(stream["epoch"])
        if int(stream["batch"]) > 0:
            self.resume = {
                "batch": int(stream["batch"]),
                "loader_workers": int(stream["loader_workers"]),
                "partial": dict(state["partial"]),
            }
        self.final = dict(state["final"])
        if self.final:
            return  # a finished run: nothing to train, and its head may be a stage-2 head
        self.model.load_state_dict(state["model"])
        self.criterion.load_state_dict(state["criterion"])
        self.optimizer.load_state_dict(state["optimizer"])
        torch.set_rng_state(state["rng"]["torch"])
        if state["rng"]["cuda"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["rng"]["cuda"])

    # --- the epoch ---------------------------------------------------------------------------
    def train_epoch(self, epoch: int) -> dict[str, float]:
        """One epoch of training, from the restored mid-epoch position if there is one."""
        resume, self.resume = self.resume, {}
        start_batch = resume.get("batch", 0)
        # a resumed epoch keeps the loader workers it began with: the batch order depends on them
        workers = resume.get("loader_workers", self.workers)
        self.ddp.train()
        self.criterion.set_epoch(float(epoch))
        source = self._input(self.job.data.train_split, train=True, workers=workers)
        source.fallback.clear()
        steps = source.num_batches()
        cap = self.job.schedule.max_steps_per_epoch
        steps = min(steps, cap) if cap else steps
        check_every = self.job.schedule.log_every_steps
        save_every = self.job.storage.checkpoint_every_steps
        device = self.placement.device
        sync_check = SyncCheck(device, os.environ.get(SYNC_DEBUG_ENV))
        compiled = self.job.scaling.compile
        compile_errors = compile_failures_named if compiled else contextlib.nullcontext

        partial = resume.get("partial", {}) if self.rank == 0 else {}
        # running sums; a mid-epoch checkpoint saves them summed over ranks, restored on rank 0
        term_sums: dict[str, torch.Tensor] = {
            k: torch.tensor(v, device=device, dtype=torch.float64)
            for k, v in partial.get("terms", {}).items()
        }
        seen = torch.tensor(partial.get("seen", 0.0), device=device, dtype=torch.float64)
        bad_step = torch.full((), -1, device=device, dtype=torch.long)
        elapsed_before = float(resume.get("partial", {}).get("elapsed", 0.0))
        started = time.perf_counter()
        # the next epoch's loader starts as this one ends, if that epoch reads this source
        following = epoch + 1 < self.job.schedule.epochs and workers == self.workers
        batches = source.epoch(
            epoch, start_batch, then=epoch + 1 if following else None, steps=steps
        )
        with contextlib.closing(batches), sync_check:
            # at most `steps` in all: a capped epoch takes no batch it will not train on
            taken = itertools.islice(batches, max(0, steps - start_batch))
            for step, batch in enumerate(taken, start=start_batch):
                sync_check.at(step - start_batch)
                lr = lr_at(epoch + (step + 1) / steps, self.peak_lr, self.job.schedule)
                for group in self.optimizer.param_groups:
                    group["lr"] = lr
                self.criterion.set_epoch(epoch + step / steps)
                images = self.normalize(batch["image"])
                labels = batch["label"].to(device, non_blocking=True)
                with compile_errors():
                    with self.placement.autocast():
                        result = self.ddp(images, labels)
                    self.optimizer.zero_grad(set_to_none=True)
                    result.total.backward()
                finite = gradients_finite(self.module, self.placement.device) & torch.isfinite(
                    result.total.detach()
                )
                bad_step = torch.where((bad_step < 0) & ~finite, step, bad_step)
                self.optimizer.step()
                self.criterion.after_step(self.model)
                n = len(labels)
                seen += n
                for name, value in {"total": result.total, **result.terms}.items():
                    term_sums[name] = term_sums.get(name, 0.0) + value.detach().double() * n
                done = step + 1
                save = save_every is not None and done % save_every == 0 and done < steps
                if done % check_every == 0 or save:
                    # the one read of the device per logging interval
                    with sync_check.paused():
                        diverged = first_bad_step(bad_step, self.distributed) is not None
                    if diverged:
                        break  # every rank stops here, so collectives stay matched
                if save:
                    elapsed = elapsed_before + time.perf_counter() - started
                    with sync_check.paused():  # it reads the sums and saves the state
                        self._save_mid_epoch(epoch, done, workers, seen, term_sums, elapsed)
        elapsed = elapsed_before + time.perf_counter() - started

        raise_if_any_rank_diverged(epoch, bad_step, self.distributed)
        sums = self._summed(seen, term_sums)
        total_seen = max(sums[0].item(), 1.0)
        names = sorted(term_sums)
        losses = zip(names, sums[1:], strict=True)
        metrics = {f"train/loss_{k}": v.item() / total_seen for k, v in losses}
        metrics["train/lr"] = self.optimizer.param_groups[0]["lr"]
        metrics["train/images_per_s"] = total_seen / max(elapsed, 1e-9)
        metrics["train/epoch_s"] = elapsed
        if source.fallback:  # the GPU decode path's images that nvjpeg did not take
            fallback = source.fallback
            metrics["train/decoded_on_cpu"] = float(sum(fallback.values()))
            reasons = ", ".join(f"{n} {why}" for why, n in sorted(fallback.items()))
            self._say(
                f"[ltray] epoch {epoch}: {sum(fallback.values())} images decoded on the "
                f"CPU, not the GPU ({reasons})"
            )
        return metrics

    def _summed(self, seen: torch.Tensor, term_sums: dict[str, torch.Tensor]) -> torch.Tensor:
        """[seen, *term sums in name order], summed over ranks."""
        sums = torch.stack([seen] + [term_sums[k] for k in sorted(term_sums)])
        sums = sums.to(self.placement.device)
        if self.distributed:
            dist.all_reduce(sums)
        return sums

    def _save_mid_epoch(
        self,
        epoch: int,
        batch: int,
        workers: int,
        seen: torch.Tensor,
        term_sums: dict[str, torch.Tensor],
        elapsed: float,
    ) -> None:
        """Checkpoint after ``batch`` batches of ``epoch`` (every rank calls it: it reduces)."""
        sums = self._summed(seen, term_sums).tolist()
        partial = {
            "seen": sums[0],
            "terms": dict(zip(sorted(term_sums), sums[1:], strict=True)),
            "elapsed": elapsed,
        }
        stream = {"epoch": epoch, "batch": batch, "loader_workers": workers}
        state = self.state(epoch - 1, stream=stream, partial=partial)
        self.session.report({"stream/epoch": float(epoch), "stream/batch": float(batch)}, state)

    # --- evaluation --------------------------------------------------------------------------
    def _agree_on_buffers(self) -> None:
        """Every rank takes rank 0's buffers (BatchNorm's running statistics) before it
        evaluates. DDP sends them only at the start of a training forward, and each rank's last
        step then moved its own copy with its own batch: without this, each rank would evaluate
        its part of a split with a model slightly different from rank 0's, which is the one
        checkpointed and logged, and the numbers would differ from ``ltray eval``'s."""
        if self.distributed:
            for buffer in self.module.buffers():
                dist.broadcast(buffer, src=0)

    def evaluate_split(self, split: str, prefix: str) -> tuple[dict[str, float], EvalCounts]:
        self._agree_on_buffers()
        counts = evaluate(
            self.model,
            self.criterion,
            self._input(split, train=False).epoch(0),
            self.normalize,
            self.placement,
            self.num_classes,
            max_batches=self.job.schedule.max_eval_batches,
        )
        counts.all_reduce(self.placement.device)
        return counts.metrics(self.groups, self.manifest.classes, prefix), counts

    def _epoch_record(self, epoch: int, train_metrics: dict[str, float]) -> tuple[dict, Any]:
        record = {"epoch": float(epoch), **train_metrics}
        decomposition = None
        last = epoch == self.job.schedule.epochs - 1
        if (epoch + 1) % self.job.schedule.eval_every == 0 or last:
            started = time.perf_counter()
            metrics, counts = self.evaluate_split(self.eval_split, self.eval_prefix)
            record.update(metrics)
            weight = self.model.head.weight.detach().float()
            decomposition = counts.decomposition_table(
                weight, self.train_counts, self.groups, self.manifest.classes
            )
            record.update(decomposition["metrics"])
            record["time/eval_s"] = time.perf_counter() - started
        return record, decomposition

    # --- stage 2 (crt, lws, tau_norm) --------------------------------------------------------
    def _features(self, split: str) -> tuple[torch.Tensor, torch.Tensor]:
        self._agree_on_buffers()
        return collect_features(
            self.model,
            self._input(split, train=False).epoch(0),
            self.normalize,
            self.placement,
            self.job.schedule.max_eval_batches,
            self.world if self.distributed else 1,
        )

    def run_stage2(self) -> dict[str, float]:
        """crt, lws and weight_balancing train the classifier on augmented images through the
        frozen backbone (:mod:`ltray.train.classifier_stage`); tau_norm rescales it with a tau
        chosen on the val split's features (:mod:`ltray.train.decoupled`)."""
        self._agree_on_buffers()  # the frozen backbone is rank 0's on every rank
        method = self.job.loss.name
        if method in RETRAINED:
            head, info = self._retrain_classifier(method)
        else:
            if self.val_split is not None:
                val_f, val_y = self._features(self.val_split)
            else:  # no val split: nothing is selected (tau_norm needs a given tau), never test
                val_f = torch.empty(0, self.model.feature_dim)
                val_y = torch.empty(0, dtype=torch.long)
            head, info = tau_norm(self.model.head.cpu(), val_f, val_y, self.job.loss.decoupled)
        self.model.head = self.placement.prepare_module(head)
        numbers = {k: float(v) for k, v in info.items() if isinstance(v, int | float)}
        for name, table in info.items():  # tau_norm's val accuracy of every tau it tried
            if isinstance(table, dict):
                numbers.update({f"{name}/{key:g}": float(v) for key, v in table.items()})
        return {f"stage2/{k}": v for k, v in numbers.items() if not math.isnan(v)}

    def _retrain_classifier(self, method: str) -> tuple[torch.nn.Module, dict[str, float]]:
        cfg = self.job.loss.decoupled
        source = self._input(
            self.job.data.train_split,
            train=True,
            batch_size=max(1, cfg.batch_size // self.world),  # a global batch, as the authors'
            sampler=STAGE2_SAMPLER[method],
        )
        cap = self.job.schedule.max_steps_per_epoch
        steps = source.num_batches()
        steps = min(steps, cap) if cap else steps

        def epoch_batches(stage2_epoch: int) -> Iterator[dict[str, torch.Tensor]]:
            # the order's epochs continue after stage 1's, so stage 2 draws its own samples
            with contextlib.closing(source.epoch(self.job.schedule.epochs + stage2_epoch)) as it:
                yield from itertools.islice(it, steps)

        head, info = retrain_classifier(
            method,
            self.model,
            epoch_batches,
            steps,
            self.normalize,
            self.placement,
            cfg,
            self.job.seed,
            self.distributed,
            class_weights=(
                effective_number_weights(self.train_counts, self.job.loss.beta)
                if method == "weight_balancing"
                else None
            ),
        )
        if self.val_split is not None:
            val_f, val_y = self._features(self.val_split)
            info["val_acc"] = accuracy(head.cpu(), val_f, val_y)
        return head, info

    # --- the run -----------------------------------------------------------------------------
    def fit(self) -> dict[str, float]:
        state = self.session.latest_state()
        if state is not None:
            self.restore(state)
        fresh = self.fresh and state is None
        nodes = worker_nodes(self.session, self.distributed)
        params = run_params(self.job, self.run_name, self.world, self.peak_lr)
        tags = {**run_tags(self.job, nodes, self.manifest.fingerprint), **self.extra_tags}
        self.tracker.start(self.run_name, params, tags, fresh=fresh)
        log_training_data(self.tracker, self.job, self.manifest.fingerprint)
        self.tracker.fill_missing(self.history)
        if state is not None and not self.final:
            self._announce_resume()
        # the final metrics and model were logged before this checkpoint (log_final logs the
        # metrics again only into a store that lacks them). A finished run given again is
        # answered on the driver (ltray.train.finished_run); this is Ray restoring the final
        # checkpoint after a worker failed on the way out
        if self.final:
            if self.rank == 0:
                self.session.say(finished_line(self.run_name))
            step, already_logged = final_step(self.job, self.history, self.final)
            self.tracker.log_final(step, self.final, None, already_logged)
            self.session.report(self.final, None)
            self.tracker.finish()
            return self.final

        kept: dict[int, dict] = {}  # the first and the latest decomposition: the end figures
        for epoch in range(self.start_epoch, self.job.schedule.epochs):
            train_metrics = self.train_epoch(epoch)
            record, decomposition = self._epoch_record(epoch, train_metrics)
            now = time.perf_counter()
            record["time/wall_s"], self._clock = now - self._clock, now
            self.history.append(record)
            due = (epoch + 1) % self.job.storage.checkpoint_every == 0
            last = epoch == self.job.schedule.epochs - 1
            self.session.report(record, self.state(epoch) if due or last else None)
            if due or last:  # the checkpoint holding these epochs is durable: log them
                self.tracker.fill_missing(self.history)
            if decomposition is not None:
                self.tracker.log_json(f"decomposition/epoch_{epoch:04d}.json", decomposition)
                first = next(iter(kept.items()), (epoch, decomposition))
                kept = dict([first, (epoch, decomposition)])
            if self.rank == 0:
                self.session.say(progress_line(record, self.eval_prefix))

        final, step, already_logged = self._final_metrics()
        # logged before the last checkpoint, once: a restart after that checkpoint logs
        # nothing more, a restart before it recomputes the same numbers and skips them
        model = self._predictor if self.job.tracking.log_model else None
        self.tracker.log_final(step, final, model, already_logged)
        if self.rank == 0 and self.tracker.run_id is not None and kept:
            label = run_label(self.run_name, self.job.loss.name, self.job.seed)
            history = RunHistory(self.tracker.run_id, label, kept)
            log_run_figures(self.tracker, history, self.session.say)
        self.session.report(final, self.state(self.job.schedule.epochs - 1, final))
        self.tracker.finish()
        return final

    def _final_metrics(self) -> tuple[dict[str, float], int, set[str]]:
        """(the final metrics, the step they belong to, those the last epoch logged already:
        :func:`final_step`). Where the last epoch was evaluated on test (no val split) and
        nothing ran since, its test metrics are the final ones: not evaluated again."""
        last = self.history[-1] if self.history else {}
        final: dict[str, float] = {}
        if self.job.loss.is_decoupled:
            final.update(self.run_stage2())
        if not self.job.loss.is_decoupled and self.eval_prefix == "test" and "test/acc" in last:
            final.update({k: v for k, v in last.items() if k.startswith("test/")})
        else:
            final.update(self.evaluate_split(self.job.data.test_split, "test")[0])
        if self.job.schedule.select_by:
            final.update(self._selected())
        return final, *final_step(self.job, self.history, final)

    def _announce_resume(self) -> None:
        """Say where the run resumes, and tag its MLflow run with it."""
        where = f"epoch {self.start_epoch} batch {self.resume.get('batch', 0)}"
        self.tracker.set_tags({"ltray.resumed_at": where})
        if self.rank == 0:
            self.session.say(f"[ltray] run {self.run_name} resumes from its checkpoint at {where}")

    def _selected(self) -> dict[str, float]:
        key = self.job.schedule.select_by
        scored = [r for r in self.history if key in r]
        if not scored:
            raise LtrayError(f"schedule.select_by: no epoch logged metric {key!r}")
        best = max(scored, key=lambda r: r[key])
        return {"selected/epoch": best["epoch"], f"selected/{key}": best[key]}

    def _predictor(self) -> tuple[torch.nn.Module, Any, dict[str, Any]]:
        """The model MLflow serves (a copy on the CPU), an input example and its contract."""
        size = self.job.data.image_size
        example = torch.zeros(2, 3, size, size)
        predictor = Predictor(self.model, self.criterion, self.job.data.mean, self.job.data.std)
        contract = model_contract(self.job, self.manifest.classes, self.criterion.output_kind)
        return copy.deepcopy(predictor).cpu().eval(), example.numpy(), contract


def train_loop_per_worker(config: dict[str, Any]) -> None:
    """Entry point: ``TorchTrainer(train_loop_per_worker, train_loop_config=config)`` or
    ``--local``. ``config``: {"job": JobConfig as JSON with its secrets masked, "secrets": what
    :func:`ltray.secrets.split_secrets` took out (on Ray, a reference to them), "run_name": str,
    "local": bool, "console": the launcher's queue for rank 0's lines (on Ray), "tags": extra
    MLflow tags (a sweep trial's)}."""
    secrets = fetch_secrets(config.get("secrets"))
    job = JobConfig.model_validate(join_secrets(config["job"], secrets))
    run_name = config["run_name"]
    storage = Storage(job.storage.url, job.storage.storage_options)
    if config.get("local"):
        session: Session = LocalSession(storage, run_name, job.storage.keep)
    else:
        session = RaySession(config.get("console"))
    trainer = Trainer(
        job, session, run_name, fresh=bool(config.get("fresh")), tags=config.get("tags")
    )
    try:
        final = trainer.fit()
    except NonFiniteLoss as exc:
        trainer.tracker.finish("FAILED")
        if config.get("local"):
            raise LtrayError(str(exc)) from None
        # left for the launcher, not raised: Ray would retry a deterministic failure
        # max_failures times (and Ray keeps only checkpointed reports' metrics)
        if session.rank == 0:
            storage.write_bytes(f"{run_name}/{FAILURE_FILE}", str(exc).encode())
        return
    finally:
        trainer.close()
    if config.get("local"):
        config["result"] = final
