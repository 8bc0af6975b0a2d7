"""The per-worker LoRA fine-tuning loop. No Ray here: it runs against the same
:class:`~protclip.train.loop.Session` as pre-training (:class:`protclip.ray_session.RaySession` inside Ray Train
workers; a plain stand-in on gloo ranks in tests). The process group must already be initialised.

Per step every rank takes its slice of the ``(seed, epoch)`` permutation, so the data position is the step
number; the checkpoint holds adapter + head + optimizer + scheduler + RNG, so a resumed run continues
bit for bit. Evaluation runs on all ranks in lockstep (FSDP2/DDP forwards are collectives) and every rank
computes the same metrics from the all-gathered outputs, so best-state decisions agree without a broadcast.
"""

from __future__ import annotations

import logging
import resource
import tempfile
import time
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from protclip.dist import gather_objects, sum_over_ranks
from protclip.finetune.checkpoint import (
    load_adapter_checkpoint,
    restore_trainable,
    save_adapter_checkpoint,
    trainable_state,
)
from protclip.finetune.config import FinetuneConfig, FinetuneTrainConfig
from protclip.finetune.data import Collator, TaskData, eval_batches, steps_per_epoch, train_batch
from protclip.finetune.evaluate import batch_outputs, compute_metrics, prediction_rows
from protclip.finetune.export import export_run, gather_trainable, rebuild_trained
from protclip.finetune.model import (
    TaskSpec,
    attach_lora,
    build_task_model,
    cast_frozen,
    task_loss,
    trainable_report,
)
from protclip.finetune.parallel import shard_lora_fsdp2, wrap_ddp
from protclip.train.checkpoint import TrainState
from protclip.train.loop import Session
from protclip.train.schedule import WarmupDecay, build_scheduler, warmup_steps_for

_log = logging.getLogger(__name__)

__all__ = ["JobInputs", "StepPlan", "plan_step", "LoraWorker", "run_worker", "LOWER_IS_BETTER"]

#: selection metrics where lower is better (everything else: higher is better)
LOWER_IS_BETTER = ("loss", "mae", "rmse")


@dataclass
class JobInputs:
    """What the driver prepared for the workers (all picklable)."""

    tower: str  # local dir or hub id of the base tower (remote folders are localised per worker)
    spec: TaskSpec
    class_weights: list[float] | None = None
    run_id: str | None = None  # MLflow run the rank-0 worker logs into
    tracking_uri: str | None = None
    secrets: list[str] = field(default_factory=list)  # config secret values to scrub from logged text


@dataclass(frozen=True)
class StepPlan:
    """What follows a training step; a pure function of the step number and the config, so all ranks agree."""

    evaluate: bool  # validation (a collective)
    checkpoint: bool
    stop: bool  # train.stop_at_step reached: checkpoint and leave, resumable
    log: bool  # training metrics (a collective: summed over ranks)


def plan_step(step: int, total: int, steps_per_epoch: int, tc: FinetuneTrainConfig) -> StepPlan:
    """The plan after step ``step`` (1-based) of ``total``; the last step is handled by the final evaluation."""
    end_of_epoch = step % steps_per_epoch == 0
    evaluate = step < total and bool((tc.eval_every and step % tc.eval_every == 0)
                                     or (not tc.eval_every and end_of_epoch))
    checkpoint = step < total and (evaluate if not tc.checkpoint_every else step % tc.checkpoint_every == 0)
    stop = tc.stop_at_step is not None and total > step >= tc.stop_at_step
    return StepPlan(evaluate, checkpoint, stop, evaluate or checkpoint or stop or step % 10 == 0 or step == total)


def _precision(cfg: FinetuneConfig, device: torch.device) -> torch.dtype | None:
    p = cfg.train.precision
    if p == "auto":
        p = "bf16" if device.type == "cuda" else "fp32"
    return torch.bfloat16 if p == "bf16" else None


def _param_groups(model: torch.nn.Module, cfg: FinetuneConfig) -> list[dict[str, Any]]:
    """LoRA matrices at ``lr`` and the head at ``head_lr``; weight decay on matrices only."""
    groups: dict[tuple[str, bool], list[torch.nn.Parameter]] = {}
    for name, p in model.named_parameters():
        if p.requires_grad:
            groups.setdefault(("lora" if ".lora_" in name else "head", p.ndim >= 2), []).append(p)
    lrs = {"lora": cfg.train.lr, "head": cfg.train.head_lr or cfg.train.lr}
    return [{"name": f"{kind}{'_decay' if decay else ''}", "params": ps, "lr": lrs[kind],
             "weight_decay": cfg.train.weight_decay if decay else 0.0}
            for (kind, decay), ps in sorted(groups.items())]


def _wrap(peft: torch.nn.Module, cfg: FinetuneConfig, device: torch.device, dtype: torch.dtype | None,
          world_size: int) -> tuple[torch.nn.Module, Callable[[], AbstractContextManager]]:
    """The parallel model (FSDP2 with LoRA units of their own, or DDP) and the autocast its forward runs in."""
    if cfg.train.strategy == "fsdp2":
        model = shard_lora_fsdp2(peft, device_type=device.type, param_dtype=dtype,
                                 activation_checkpointing=cfg.train.activation_checkpointing)
        return model, nullcontext
    if cfg.train.activation_checkpointing:
        from protclip.train.parallelize import apply_activation_checkpointing

        apply_activation_checkpointing(peft)
    model = wrap_ddp(peft, device) if world_size > 1 else peft
    if dtype is None:
        return model, nullcontext
    return model, lambda: torch.autocast(device.type, dtype=dtype)


def _improves(score: float | None, best: float | None, metric: str, ties: bool = False) -> bool:
    """Whether ``score`` beats ``best`` for ``metric`` (NaN/None never does; no best yet: any finite score)."""
    if score is None or not np.isfinite(score):
        return False
    if best is None:
        return True
    if ties and score == best:
        return True
    return score < best if metric in LOWER_IS_BETTER else score > best


def _plain(d: dict[str, Any]) -> dict[str, Any]:
    return {k: (float(v) if isinstance(v, (np.floating, np.integer)) else v) for k, v in d.items()}


class _Throughput:
    """Training loss and sequences/tokens per second since the last log (evaluation time excluded)."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.losses: list[float] = []
        self.tokens = self.seqs = 0
        self.restart_clock()

    def restart_clock(self) -> None:
        self.t0 = time.perf_counter()

    def add(self, loss: float, batch: dict[str, torch.Tensor]) -> None:
        self.losses.append(loss)
        self.tokens += int(batch["attention_mask"].sum())
        self.seqs += batch["input_ids"].shape[0]


class LoraWorker:
    """One rank's LoRA run: the wrapped model, optimizer, data and session, with the steps of :meth:`run` as
    methods (every method that runs a forward or touches metrics is a collective: call it on all ranks)."""

    def __init__(self, cfg: FinetuneConfig, job: JobInputs, data: TaskData, session: Session) -> None:
        from protclip.model.attention import resolve_backend
        from protclip.pretrained import localize_tower
        from protclip.tracking import logger_for_rank

        self.cfg, self.job, self.data, self.session, self.spec = cfg, job, data, session, job.spec
        self.device = torch.device(session.device)
        self.dtype = _precision(cfg, self.device)
        self.tower = localize_tower(job.tower, cfg.storage)
        self.log = logger_for_rank(session.rank, job.run_id, job.tracking_uri, job.secrets)
        self.collate = Collator(self.spec.type, self.spec.num_outputs, self.spec.max_length, self.spec.crop,
                                self.spec.target_mean, self.spec.target_std)
        self.weights = (torch.tensor(job.class_weights, device=self.device)
                        if job.class_weights is not None else None)

        torch.manual_seed(cfg.train.seed)  # identical head/LoRA init on every rank
        model = build_task_model(self.tower, self.spec, head_dropout=cfg.task.head_dropout,
                                 revision=cfg.base.revision, attention=resolve_backend(cfg.base.attention,
                                                                                       self.device))
        self.peft = attach_lora(model, cfg.lora, self.spec)
        self.params = trainable_report(self.peft)
        if self.dtype is not None:
            cast_frozen(self.peft, self.dtype)
        self.peft.to(self.device)
        self.model, self.autocast = _wrap(self.peft, cfg, self.device, self.dtype, session.world_size)
        self.trainable = [p for p in self.model.parameters() if p.requires_grad]
        self.opt = torch.optim.AdamW(_param_groups(self.model, cfg), lr=cfg.train.lr)
        self.train_idx = data.indices("train")
        self.spe = steps_per_epoch(len(self.train_idx), session.world_size, cfg.train.batch_size)
        self.total = cfg.train.max_steps or cfg.train.epochs * self.spe
        warm = warmup_steps_for(self.total, None, cfg.train.warmup_ratio)
        self.sched = build_scheduler(self.opt, WarmupDecay(self.total, warm, cfg.train.schedule))

    # ------------------------------------------------------------------------------------------- pieces
    def batch(self, idx: np.ndarray, with_labels: bool = True) -> dict[str, torch.Tensor]:
        """Collate the examples ``idx`` onto this rank's device."""
        seqs = [self.data.sequences[i] for i in idx]
        tg = [self.data.targets[i] for i in idx] if with_labels else None
        return {k: v.to(self.device) for k, v in self.collate(seqs, tg).items()}

    def forward(self, b: dict[str, torch.Tensor]) -> torch.Tensor:
        """The task head's logits for a collated batch (under the run's autocast)."""
        with self.autocast():
            return self.model(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits

    def evaluate(self, split: str) -> tuple[dict[str, float], list[int], list[Any]]:
        """Metrics of a split (identical on every rank) plus the outputs in split order."""
        idx = self.data.indices(split)
        if len(idx) == 0:
            return {}, [], []
        self.model.eval()
        mine: list[tuple[int, Any]] = []
        loss_sum, n_units = 0.0, 0
        rank, world = self.session.rank, self.session.world_size
        with torch.no_grad():
            for part in eval_batches(idx, rank, world, self.cfg.train.batch_size):
                real = len(part) > 0
                b = self.batch(part if real else idx[:1])  # a dummy batch keeps the collectives in step
                logits = self.forward(b)
                if not real:
                    continue
                units = int((b["labels"] != -100).sum()) if self.spec.type == "per_residue" else len(part)
                loss_sum += float(task_loss(logits, b["labels"], self.spec.type)) * units
                n_units += units
                mine.extend(zip(part.tolist(), batch_outputs(logits, b["attention_mask"], self.spec), strict=True))
        self.model.train()
        gathered = gather_objects((mine, loss_sum, n_units))
        pairs = sorted((p for g in gathered for p in g[0]), key=lambda t: t[0])
        order = [i for i, _ in pairs]
        outputs = [o for _, o in pairs]
        kept = self._kept(order)
        m = compute_metrics(self.spec, [self.data.targets[i] for i in order], outputs, kept)
        total_units = sum(g[2] for g in gathered)
        m["loss"] = sum(g[1] for g in gathered) / max(total_units, 1)
        return m, order, outputs

    def _kept(self, order: list[int]) -> list[Any] | None:
        if self.spec.type != "per_residue":
            return None
        return [self.collate.kept(self.data.sequences[i]) for i in order]

    def checkpoint(self, state: TrainState, best: dict[str, torch.Tensor] | None, metrics: dict[str, Any]) -> None:
        """Save adapter, head, optimizer, scheduler and RNG and report them with the numeric ``metrics``."""
        numeric = {k: v for k, v in metrics.items() if isinstance(v, (int, float))}
        with tempfile.TemporaryDirectory(prefix="protclip_lora_ckpt_") as d:
            save_adapter_checkpoint(d, self.model, self.opt, self.sched, state, best)
            self.session.report(numeric, d, None)

    def resume(self) -> tuple[TrainState, dict[str, torch.Tensor] | None]:
        """The state (and best-state snapshot) of the session's checkpoint, loaded into the model; else fresh."""
        with self.session.latest_checkpoint() as d:
            if d is None:
                return TrainState(), None
            state, best = load_adapter_checkpoint(d, self.model, self.opt, self.sched)
            _log.info("resumed from %s at step %d", d, state.step)
            return state, best

    def start(self, state: TrainState) -> None:
        """A fresh run: log the parameter counts and (``train.eval_at_start``) the untrained head's metrics."""
        self.log.log_params({f"model.{k}": v for k, v in self.params.items()})
        if self.cfg.train.eval_at_start:
            untrained = {f"valid/{k}": v for k, v in self.evaluate("valid")[0].items()}
            untrained.update({f"test/{k}": v for k, v in self.evaluate("test")[0].items()})
            state.extra["untrained"] = untrained
            self.log.log_metrics(untrained, step=0)

    def train_step(self, step: int) -> tuple[float, torch.Tensor, dict[str, torch.Tensor]]:
        """One optimizer step on this rank's slice of step ``step``: (loss, gradient norm, the batch)."""
        tc = self.cfg.train
        b = self.batch(train_batch(self.train_idx, step, self.spe, tc.seed, self.session.rank,
                                   self.session.world_size, tc.batch_size))
        loss = task_loss(self.forward(b), b["labels"], self.spec.type, self.weights)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        gnorm = (torch.nn.utils.clip_grad_norm_(self.trainable, tc.grad_clip)
                 if tc.grad_clip > 0 else torch.tensor(0.0))
        self.opt.step()
        self.sched.step()
        return loss.detach().item(), gnorm, b

    def train_metrics(self, step: int, window: _Throughput, gnorm: torch.Tensor) -> dict[str, Any]:
        """Collective: loss averaged over ranks and throughput summed over ranks since the last log; logged."""
        t = sum_over_ranks({"loss": float(np.mean(window.losses)), "tokens": window.tokens, "seqs": window.seqs},
                           self.device)
        dt = time.perf_counter() - window.t0
        metrics = {"step": step, "epoch": (step - 1) // self.spe, "train/loss": t["loss"] / self.session.world_size,
                   "train/lr": self.sched.get_last_lr()[0], "train/grad_norm": float(gnorm),
                   "train/seqs_per_s": t["seqs"] / dt, "train/tokens_per_s": t["tokens"] / dt}
        self.log.log_metrics(metrics, step=step)
        return metrics

    def validate(self, state: TrainState, best: dict[str, torch.Tensor] | None,
                 last: dict[str, Any]) -> dict[str, torch.Tensor] | None:
        """Collective: validation metrics into ``last`` and the log; a new best score updates ``state`` and (with
        ``train.select: best``) returns a snapshot of the trainable tensors, else ``best`` unchanged."""
        metric = self.cfg.task.selection_metric
        m, _, _ = self.evaluate("valid")
        last.update({f"valid/{k}": v for k, v in m.items()})
        self.log.log_metrics({f"valid/{k}": v for k, v in m.items()}, step=state.step)
        if _improves(m.get(metric), state.best_score, metric):
            state.best_score, state.extra["best_step"] = float(m[metric]), state.step
            if self.cfg.train.select == "best":
                return trainable_state(self.model)
        return best

    # ------------------------------------------------------------------------------------------- run
    def run(self) -> dict[str, Any]:
        """Resume or start, train to the end (or ``train.stop_at_step``), then :meth:`finish`."""
        state, best = self.resume()
        if state.step == 0:
            self.start(state)
        last: dict[str, Any] = {}
        window = _Throughput()
        while state.step < self.total:
            loss, gnorm, b = self.train_step(state.step)
            step = state.step + 1
            window.add(loss, b)
            plan = plan_step(step, self.total, self.spe, self.cfg.train)
            if plan.log:
                last = self.train_metrics(step, window, gnorm)
                window.reset()
            state.step, state.epoch = step, step // self.spe
            state.micro_batches_in_epoch = step % self.spe
            if plan.evaluate:
                best = self.validate(state, best, last)
            if plan.checkpoint or plan.stop:
                self.checkpoint(state, best, last)
            if plan.evaluate or plan.checkpoint:
                window.restart_clock()  # throughput counts training time only
            if plan.stop:
                _log.info("stopping at step %d as asked (train.stop_at_step); resume continues from here", step)
                return {"stopped_at": step, **last}
        return self.finish(state, best, last)

    def finish(self, state: TrainState, best: dict[str, torch.Tensor] | None, last: dict[str, Any]) -> dict[str, Any]:
        """Collective: select last or best, evaluate valid and test, export (rank 0), report the final checkpoint."""
        cfg = self.cfg
        m_valid, _, _ = self.evaluate("valid")
        metric = cfg.task.selection_metric
        if cfg.train.select == "best" and best is not None:
            if not _improves(m_valid.get(metric), state.best_score, metric, ties=True):
                restore_trainable(self.model, best)  # the final step is worse than the best validation step
                m_valid, _, _ = self.evaluate("valid")
                state.extra["restored_best_step"] = state.extra.get("best_step")
        m_test, order, outputs = self.evaluate("test")
        final: dict[str, Any] = {**last, "step": state.step}
        final.update({f"valid/{k}": v for k, v in m_valid.items()})
        final.update({f"test/{k}": v for k, v in m_test.items()})
        final.update({f"untrained/{k}": v for k, v in state.extra.get("untrained", {}).items()})
        final["selected_step"] = state.extra.get("restored_best_step") or state.step
        final.update({f"model/{k}": v for k, v in self.params.items()})
        final["sys/peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        if self.device.type == "cuda":
            final["sys/peak_gpu_mem_mb"] = torch.cuda.max_memory_allocated(self.device) / 2**20
        trained = gather_trainable(self.model)  # collective
        if self.session.rank == 0:
            peft_model = rebuild_trained(self.tower, self.spec, cfg, trained)
            preds = prediction_rows(self.spec, [self.data.ids[i] for i in order], outputs, self._kept(order))
            final["output_dir"] = export_run(peft_model, self.spec, cfg, _plain(final), preds, self.log)
            self.log.log_metrics({k: v for k, v in final.items()
                                  if k.startswith(("valid/", "test/", "untrained/", "sys/"))}, step=state.step)
        dist.barrier()
        self.checkpoint(state, best, final)
        return final


def run_worker(cfg: FinetuneConfig, job: JobInputs, data: TaskData, session: Session) -> dict[str, Any]:
    """Train, evaluate and (rank 0) export; returns the final (or stop-time) metrics of this rank."""
    if not dist.is_initialized():
        raise RuntimeError("run_worker needs an initialised process group (Ray Train or init_process_group)")
    return LoraWorker(cfg, job, data, session).run()
