"""The per-worker pre-training loop (torchtune's setup / train / save / cleanup split, as functions).

No Ray import: everything the loop needs from the outside (rank, device, data shards, the latest checkpoint,
reporting a checkpoint) comes through the small :class:`Session` protocol. ``protclip.ray_session`` implements
it with Ray Train; tests can implement it with a plain gloo process group.

Every collective is called by every rank in the same order: data exhaustion, the NaN guard and validation
batches are agreed with an all-reduce first (a collective reached by only some ranks hangs the others).
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Protocol

import torch
import torch.distributed as dist

from protclip.dist import all_ranks, mean_over_ranks, sum_over_ranks
from protclip.model.losses import ProtCLIPLoss
from protclip.model.protclip import build_model
from protclip.storage import filesystem
from protclip.tracking import logger_for_rank, secrets_of
from protclip.train.checkpoint import TrainState, load_checkpoint, save_checkpoint
from protclip.train.config import TrainRunConfig
from protclip.train.faults import maybe_inject
from protclip.train.flops import peak_flops
from protclip.train.meter import StepMeter, step_flops_fn
from protclip.train.optim import build_optimizer, guarded_step
from protclip.train.parallelize import parallelize
from protclip.train.run_folder import checkpoint_name, round_done_marker, wait_for_round_end
from protclip.train.schedule import WarmupDecay, build_scheduler, warmup_steps_for
from protclip.train.step import forward_backward
from protclip.train.validate import validate

_log = logging.getLogger(__name__)

__all__ = ["Session", "LoopConfig", "train_worker", "total_steps_for"]


class Session(Protocol):
    """What the loop needs from its runtime (Ray Train or a plain process group)."""

    rank: int
    world_size: int
    device: torch.device

    def train_batches(self, skip: int) -> Iterator[dict[str, torch.Tensor]]: ...
    def val_batches(self) -> Iterator[dict[str, torch.Tensor]] | None: ...
    def latest_checkpoint(self) -> contextlib.AbstractContextManager[str | None]: ...
    def report(self, metrics: dict[str, float], checkpoint_dir: str | None, name: str | None) -> None: ...


@dataclass(kw_only=True)
class LoopConfig:
    """Run facts the driver knows and the workers need besides the config."""

    total_steps: int  # schedule length (max_steps or estimated from the data)
    start_epoch: int = 0  # first epoch of the dataset the driver built (resume skips whole epochs)
    run_id: str | None = None  # MLflow run opened by the driver
    tracking_uri: str | None = None
    export_uri: str | None = None  # where rank 0 copies the exported towers (storage_path/name/export)
    score_attribute: str | None = None  # metric of the best checkpoint (val/loss) when validation runs
    # validate and checkpoint the untrained model as step 0 before the first update of a fresh run, so "before
    # pre-training" is measured by the same validation and eval tasks as every later step
    checkpoint_at_start: bool = False
    # which run the checkpoints belong to (run key, MLflow run id, config fingerprint), recorded in each one so a
    # relaunch continues the MLflow run only when it resumes that run's checkpoint (train/run_folder.py)
    run_identity: dict | None = None
    # with checkpoint_at_start: the run folder whose step-0 eval round the workers wait for before the first
    # update, and for how long at most (eval.wait_at_start); None = do not wait
    wait_start_round_in: str | None = None
    wait_start_round_s: float = 0.0


def total_steps_for(cfg: TrainRunConfig, micro_batches_per_rank: int) -> int:
    """Schedule length: ``train.max_steps`` or whole steps in the estimated data of all epochs."""
    if cfg.train.max_steps is not None:
        return cfg.train.max_steps
    return max(1, (micro_batches_per_rank * cfg.data.num_epochs) // cfg.train.accum_steps)


def _take(it: Iterator[dict[str, torch.Tensor]], n: int) -> list[dict[str, torch.Tensor]]:
    out = []
    for _ in range(n):
        try:
            out.append(next(it))
        except StopIteration:
            break
    return out


def _skip_count(state: TrainState, start_epoch: int) -> int:
    """Micro-batches of the driver's dataset (which starts at ``start_epoch``) this rank already consumed."""
    if state.step and state.epoch < start_epoch:
        raise RuntimeError(f"the checkpoint being resumed is at epoch {state.epoch} but the dataset was built "
                           f"from epoch {start_epoch}; delete the newer, unregistered checkpoint folders")
    per_epoch = {int(k): int(v) for k, v in state.extra.get("epoch_micro_batches", {}).items()}
    return sum(n for e, n in per_epoch.items() if e >= start_epoch)


def train_worker(cfg: TrainRunConfig, session: Session, lc: LoopConfig) -> TrainState:
    """Build, shard, (resume), train, validate, checkpoint and export; returns the final state."""
    tc, device = cfg.train, session.device
    rank, world = session.rank, session.world_size
    torch.manual_seed(tc.seed)  # identical init on every rank before sharding
    model = build_model(cfg.model, cfg.loss).to(device)
    flops_of = step_flops_fn(model, cfg)
    parallelize(model, device_type=device.type, param_dtype=torch.bfloat16 if tc.bf16 else None,
                activation_checkpointing=tc.activation_checkpointing)
    model.train()
    loss_fn = ProtCLIPLoss(cfg.loss, cfg.model)
    opt = build_optimizer(model, tc.lr, tc.protein_lr_ratio, tc.weight_decay, tc.betas, tc.eps)
    schedule = WarmupDecay(lc.total_steps, warmup_steps_for(lc.total_steps, tc.warmup_steps, tc.warmup_ratio),
                           tc.schedule, tc.min_lr_ratio)
    sched = build_scheduler(opt, schedule)
    torch.manual_seed(tc.seed * 1_000_003 + 1 + rank)  # per-rank in-model randomness (Gumbel noise)

    state = TrainState(world_size=world)
    with session.latest_checkpoint() as ckpt_dir:
        if ckpt_dir is not None:
            state = load_checkpoint(ckpt_dir, model, opt, sched)
            _log.info("rank %d resumed from %s at step %d", rank, ckpt_dir, state.step)
    attempt = [f"{int(time.time() * 1000):x}"]
    if world > 1:
        dist.broadcast_object_list(attempt, src=0)  # one checkpoint name for all ranks of this attempt
    logger = logger_for_rank(rank, lc.run_id, lc.tracking_uri, secrets_of(cfg))
    if lc.run_identity is not None:  # every checkpoint of this launch names its run (also the step-0 one)
        state.extra["run"] = lc.run_identity
    stop = min(lc.total_steps, tc.stop_at_step or lc.total_steps)
    epoch_mb = {int(k): int(v) for k, v in state.extra.get("epoch_micro_batches", {}).items()}
    batches = session.train_batches(_skip_count(state, lc.start_epoch))
    meter = StepMeter(peak=peak_flops(device), world=world)
    consecutive_skips, last_ckpt_step, last_metrics = 0, state.step if state.step else -1, {}
    if lc.checkpoint_at_start and state.step == 0:
        val_metrics = _run_validation(model, loss_fn, session, tc.val_max_batches, device) if tc.val_every else {}
        logger.log_metrics(val_metrics, step=0)
        model.train()
        _checkpoint(model, opt, sched, state, session, lc, val_metrics, {}, attempt[0])
        last_ckpt_step = 0
        if lc.wait_start_round_in:
            state.extra["start_round"] = _wait_for_start_round(lc, cfg, attempt[0], rank)

    while state.step < stop:
        maybe_inject(state.step, rank)  # reliability tests only (inert unless PROTCLIP_FAULT_AT_STEP)
        t0 = time.perf_counter()
        mbs = _take(batches, tc.accum_steps)
        t_data = time.perf_counter() - t0
        if not all_ranks(len(mbs) == tc.accum_steps, device):
            _log.info("rank %d: training data exhausted at step %d", rank, state.step)
            break
        terms = forward_backward(model, loss_fn, mbs)
        outcome = guarded_step(model, opt, sched, terms.values["loss"], tc.grad_clip, device, tc.nan_guard)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t_step = time.perf_counter() - t0
        state.step += 1
        for mb in mbs:
            e = int(mb["epoch"].reshape(-1)[0]) if "epoch" in mb else state.epoch
            epoch_mb[e] = epoch_mb.get(e, 0) + 1
            state.epoch, state.micro_batches_total = e, state.micro_batches_total + 1
        state.micro_batches_in_epoch = epoch_mb.get(state.epoch, 0)
        state.extra["epoch_micro_batches"] = {str(k): v for k, v in epoch_mb.items()}
        state.extra["total_steps"] = lc.total_steps
        # global pairs: packed micro-batches hold a different number of pairs on every rank
        state.pairs_seen += round(sum_over_ranks({"rows": terms.rows}, device)["rows"])
        state.skipped_steps += int(outcome.skipped)
        consecutive_skips = consecutive_skips + 1 if outcome.skipped else 0
        meter.update(mbs, t_step, t_data, flops_of(mbs))

        if state.step % tc.log_every == 0 or state.step == stop:
            metrics = {f"train/{k}": v for k, v in mean_over_ranks(terms.values, device).items()}
            metrics.update(meter.metrics(device))
            metrics.update({"train/grad_norm": outcome.grad_norm, "train/skipped_steps": state.skipped_steps,
                            "train/epoch": state.epoch,
                            "train/pairs_seen": state.pairs_seen})
            for g in opt.param_groups:
                metrics[f"train/lr_{g.get('name', 'group')}"] = g["lr"]
            logger.log_metrics(metrics, step=state.step)
            last_metrics = metrics
        if consecutive_skips >= tc.max_consecutive_skips:
            raise FloatingPointError(f"{consecutive_skips} consecutive steps had NaN/inf loss or gradients "
                                     f"(step {state.step}); lower train.lr or check the data")
        due_ckpt = tc.ckpt_every and state.step % tc.ckpt_every == 0
        due_val = tc.val_every and (state.step % tc.val_every == 0 or due_ckpt)
        val_metrics: dict[str, float] = {}
        if due_val:
            val_metrics = _run_validation(model, loss_fn, session, tc.val_max_batches, device)
            logger.log_metrics(val_metrics, step=state.step)
            model.train()
        if due_ckpt:
            _checkpoint(model, opt, sched, state, session, lc, val_metrics, last_metrics, attempt[0])
            last_ckpt_step = state.step

    if state.step != last_ckpt_step:  # always leave a checkpoint of the final state (resume, export)
        val_metrics = _run_validation(model, loss_fn, session, tc.val_max_batches, device) if tc.val_every else {}
        logger.log_metrics(val_metrics, step=state.step)
        _checkpoint(model, opt, sched, state, session, lc, val_metrics, last_metrics, attempt[0])
    finished = state.step >= lc.total_steps or tc.stop_at_step is None
    if tc.export and finished:
        _export(model, cfg, lc, rank, logger)
    return state


def _run_validation(model, loss_fn, session: Session, max_batches: int | None, device) -> dict[str, float]:
    it = session.val_batches()
    if it is None:
        return {}
    return validate(model, loss_fn, it, device, max_batches=max_batches)


def _checkpoint(model, opt, sched, state: TrainState, session: Session, lc: LoopConfig,
                val_metrics: dict[str, float], last_metrics: dict[str, float], attempt: str) -> None:
    """Save the sharded checkpoint into a local temp dir per rank and report it (every rank)."""
    if lc.score_attribute and lc.score_attribute in val_metrics:
        score = val_metrics[lc.score_attribute]
        if math.isfinite(score) and (state.best_score is None or score < state.best_score):
            state.best_score = score
    metrics = {"step": float(state.step), "epoch": float(state.epoch)}
    metrics.update({k: v for k, v in last_metrics.items() if k.startswith("train/loss")})
    metrics.update(val_metrics)
    if lc.score_attribute and lc.score_attribute not in metrics:
        metrics[lc.score_attribute] = math.inf  # not validated: never "best"
    with tempfile.TemporaryDirectory(prefix="protclip-ckpt-") as d:
        save_checkpoint(d, model, opt, sched, state)
        session.report(metrics, d, checkpoint_name(state.step, attempt))


def _wait_for_start_round(lc: LoopConfig, cfg: TrainRunConfig, attempt: str, rank: int) -> str:
    """Wait (every rank on its own, no collective) until the driver marks the step-0 eval round as ended;
    returns "ended" or "timeout" (recorded in the checkpoints' state)."""
    marker = round_done_marker(lc.wait_start_round_in or "", checkpoint_name(0, attempt))
    t0 = time.monotonic()
    if rank == 0:
        _log.info("waiting for the step-0 eval round to end (eval.wait_at_start, at most %.0f s)",
                  lc.wait_start_round_s)
    if wait_for_round_end(marker, cfg.storage.access(), lc.wait_start_round_s):
        if rank == 0:
            _log.info("step-0 eval round ended after %.1f s: training starts", time.monotonic() - t0)
        return "ended"
    _log.warning("rank %d: the step-0 eval round has not ended after %.0f s (eval.start_wait_timeout_s); training "
                 "starts beside it", rank, lc.wait_start_round_s)
    return "timeout"


def _export(model, cfg: TrainRunConfig, lc: LoopConfig, rank: int, logger) -> None:
    """Gather the full state dict (collective, CPU offloaded); rank 0 writes both towers with their tokenizers,
    logs them to MLflow (``export/``) and copies them to ``lc.export_uri``."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    from protclip.model.protclip import export_towers

    sd = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    if rank == 0:
        with tempfile.TemporaryDirectory(prefix="protclip-export-") as d:
            export_towers(model, d, state_dict=sd)
            _fix_architectures(d)
            logger.log_artifact(os.path.join(d, "protein"), "export")
            logger.log_artifact(os.path.join(d, "text"), "export")
            logger.log_artifact(os.path.join(d, "heads.safetensors"), "export")
            if lc.export_uri:
                fs, path = filesystem(lc.export_uri, cfg.storage.access())
                fs.put(d.rstrip("/") + "/", path, recursive=True)
                _log.info("exported towers to %s", lc.export_uri)
    del sd
    if dist.is_initialized():
        dist.barrier()


def _fix_architectures(export_dir: str) -> None:
    """``save_pretrained`` on an FSDP2-wrapped tower records ``FSDPEsmModel``; plain transformers wants the
    original class name in ``architectures``."""
    for sub in ("protein", "text"):
        path = os.path.join(export_dir, sub, "config.json")
        if not os.path.isfile(path):
            continue
        with open(path) as f:
            conf = json.load(f)
        archs = conf.get("architectures") or []
        fixed = [a[len("FSDP"):] if a.startswith("FSDP") else a for a in archs]
        if fixed != archs:
            conf["architectures"] = fixed
            with open(path, "w") as f:
                json.dump(conf, f, indent=2, sort_keys=True)

