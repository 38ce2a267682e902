#!/usr/bin/env python
"""Train a speaker-embedding network, or score a trial list with ``--eval`` (voxceleb_trainer's command line).

    python trainSpeakerNet.py --config configs/DTDY_ResNet34_half_ASP.yaml
    python trainSpeakerNet.py --config configs/DTDY_ResNet34_half_ASP.yaml --eval

Outputs under ``--save_path``: ``config.yaml`` (the resolved options), ``model/`` (checkpoints: ``last.model``
every epoch, ``modelNNNNNNNNN.model`` at every evaluation), ``result/train.log``, ``result/scores.txt`` and
``result/metrics.json``. Running the same command again resumes from ``model/last.model``.
"""

from __future__ import annotations

import logging
import sys
import time
from functools import partial
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
from torch.utils.data import DataLoader

import checkpoint as ckpt
import distributed
import plugins
from allocator import tune_cpu_allocator
from augment import Augmenter, spec_augment
from config import Config, UserError, parse_args, save_config
from datalists import read_train_list, read_trial_list
from DatasetLoader import SpeakerBalancedSampler, TrainDataset
from distributed import DistEnv, barrier
from embedder import Embedder
from embedding import run_extract
from evaluation import check_eval_options, evaluate, score_from_cache
from loss._margin import margin_at
from runtime import (
    build_embedder,
    build_net,
    compile_model,
    load_weights,
    loader_workers,
    pick_device,
    seed_everything,
    setup_logging,
    test_normalize,
    weights_path,
)
from SpeakerNet import ModelTrainer

log = logging.getLogger("trainSpeakerNet")

# Settings a resumed run must share with its checkpoint (besides config.MODEL_KEYS): the states must fit.
RESUME_KEYS = ("trainfunc", "nClasses", "optimizer", "scheduler")
# Batches each DataLoader worker keeps ready: a GPU step is shorter than the jitter of reading and cropping a batch.
LOADER_PREFETCH = 4


def checkpoint_state(trainer: ModelTrainer, epoch: int, step: int, cfg: Config) -> dict:
    """Everything to continue exactly: ``epoch`` epochs finished and ``step`` batches of the next one done."""
    net = trainer.speaker_net
    return {"format": ckpt.FORMAT, "version": 1, "epoch": epoch, "step": step, "model": net.model.state_dict(),
            "loss": net.loss.state_dict(), "optimizer": trainer.optimizer.state_dict(),
            "scheduler": trainer.scheduler.state_dict(), "scaler": trainer.scaler.state_dict(),
            "rng": ckpt.rng_state(), "config": cfg.to_dict()}


def run_eval(cfg: Config, device: torch.device, env: DistEnv) -> dict:
    result_dir = Path(cfg.save_path) / "result"
    trials = [read_trial_list(p, cfg.test_path, check_files=not cfg.score_from_cache) for p in cfg.test_list]
    if cfg.score_from_cache:
        return score_from_cache(cfg, trials, result_dir, checkpoint=weights_path(cfg))
    embedder, net, path = build_embedder(cfg, device, env)
    return evaluate(embedder, trials, cfg, result_dir, test_normalize(net.loss), checkpoint=path)


class _Board:
    """TensorBoard scalars on rank 0 (a no-op elsewhere or when --no-tensorboard)."""

    def __init__(self, folder: Path, enabled: bool) -> None:
        self.writer = None
        if enabled:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(str(folder))

    def add(self, scalars: dict[str, float], step: int) -> None:
        if self.writer is not None:
            for key, value in scalars.items():
                if isinstance(value, int | float) and np.isfinite(value):
                    self.writer.add_scalar(key, value, step)
            self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def run_train(cfg: Config, device: torch.device, env: DistEnv) -> dict:
    save = Path(cfg.save_path)
    last = ckpt.latest_checkpoint(save)
    resume = ckpt.read(last) if last else None
    if resume is not None:
        ckpt.check_compatible(resume.get("config"), cfg, last, RESUME_KEYS)
    train = read_train_list(cfg.train_list, cfg.train_path)
    trials = [read_trial_list(p, cfg.test_path) for p in cfg.test_list]
    augmenter = Augmenter(cfg.musan_path, cfg.rir_path, cfg.resample, cfg.aug_prob) if cfg.augment else None
    dataset = TrainDataset(train, cfg.max_frames, augmenter=augmenter, speed_perturb=cfg.speed_perturb,
                           resample=cfg.resample)
    if dataset.num_classes > cfg.nClasses:
        speeds = " x 3 speeds of --speed_perturb" if cfg.speed_perturb else ""
        raise UserError(f"The train list '{cfg.train_list}' has {len(train.speakers)} speakers{speeds}, "
                        f"{dataset.num_classes} classes, but --nClasses is {cfg.nClasses}; set --nClasses "
                        f"{dataset.num_classes}.")

    net = build_net(cfg)
    if cfg.spec_augment:
        if not hasattr(net.model, "feature_augment"):
            raise UserError(f"--spec_augment needs a model with a feature_augment hook; '{cfg.model}' has none.")
        net.model.feature_augment = partial(spec_augment, freq_masks=cfg.spec_freq_masks,
                                            freq_width=cfg.spec_freq_width, time_masks=cfg.spec_time_masks,
                                            time_width=cfg.spec_time_width, prob=cfg.spec_prob)
    sampler = SpeakerBalancedSampler(train.labels, cfg.nPerSpeaker, cfg.max_seg_per_spk, cfg.batch_size, cfg.seed,
                                     rank=env.rank, world_size=env.world_size)
    steps = sampler.batches_per_epoch()
    if steps == 0:
        raise UserError(f"An epoch of '{cfg.train_list}' has no full batch of {cfg.batch_size} speakers x "
                        f"{cfg.nPerSpeaker} crops per process ({env.world_size} processes); lower --batch_size or "
                        f"--nPerSpeaker.")
    # Crop positions come from the sampler's seeds; the generator only keeps DataLoader off the global RNG.
    workers = loader_workers(cfg.nDataLoaderThread, env.local_world_size)
    loader = DataLoader(dataset, batch_size=cfg.batch_size, sampler=sampler, num_workers=workers, drop_last=True,
                        pin_memory=device.type == "cuda", persistent_workers=workers > 0,
                        prefetch_factor=LOADER_PREFETCH if workers > 0 else None,
                        generator=torch.Generator().manual_seed(cfg.seed))
    optimizer = plugins.build("optimizer", cfg.optimizer, cfg, named_parameters=list(net.named_parameters()))
    scheduler, step_per = plugins.build("scheduler", cfg.scheduler, cfg, optimizer=optimizer, iters_per_epoch=steps)

    scheduled_margin = hasattr(net.loss, "margin") and (cfg.margin_rampup_start > 0 or cfg.margin_rampup_end > 0)
    if scheduled_margin:
        try:
            margin_at(0.0, cfg.margin, cfg.margin_rampup_start, cfg.margin_rampup_end)
        except ValueError as err:
            raise UserError(f"--margin_rampup_start/--margin_rampup_end: {err}") from None

    def set_margin(epoch: float) -> None:
        if scheduled_margin:
            net.loss.margin = margin_at(epoch, cfg.margin, cfg.margin_rampup_start, cfg.margin_rampup_end)

    net.to(device)
    start, first_step = 1, 0
    if resume is not None:
        ckpt.load_into(net.model, resume["model"], "model", last)
        ckpt.load_into(net.loss, resume["loss"], "loss head", last)
        optimizer.load_state_dict(resume["optimizer"])
        scheduler.load_state_dict(resume["scheduler"])
        start, first_step = resume["epoch"] + 1, resume.get("step", 0)
    elif cfg.initial_model:
        load_weights(net, cfg.initial_model, cfg, with_loss=True)
    compile_model(net, cfg)
    wrapped = nn.parallel.DistributedDataParallel(net, device_ids=[device] if device.type == "cuda" else None) \
        if env.enabled else net
    trainer = ModelTrainer(wrapped, optimizer, scheduler, step_per, device, cfg.mixedprec, cfg.mixedprec_dtype, env,
                           on_iteration=set_margin, log_interval=cfg.log_interval)
    if resume is not None:
        trainer.scaler.load_state_dict(resume["scaler"])
        ckpt.set_rng_state(resume["rng"])

    if env.is_main:
        ckpt.remove_stale_temporaries(save)
        save_config(cfg, save / "config.yaml")
        setup_logging(save / "result" / "train.log")
    if resume is not None:
        log.info("resuming from %s after epoch %d%s", last, resume["epoch"],
                 f", step {first_step}" if first_step else "")
    log.info("%d utterances of %d speakers; %d steps per epoch of %d processes x %d speakers x %d crops; "
             "%.2fM parameters", len(train.files), len(train.speakers), steps, env.world_size, cfg.batch_size,
             cfg.nPerSpeaker, sum(p.numel() for p in net.model.parameters()) / 1e6)
    board = _Board(save / "tensorboard", cfg.tensorboard and env.is_main)
    embedder = Embedder(net.model, device, env, cfg.mixedprec, cfg.mixedprec_dtype,
                        cfg.fast_cpu_inference and not cfg.compile)
    last_save = time.monotonic()

    def timed_checkpoint(epoch: int, done: int) -> None:
        """With --checkpoint_minutes, save the position inside a long epoch now and then."""
        nonlocal last_save
        due = time.monotonic() - last_save > 60 * cfg.checkpoint_minutes
        if cfg.checkpoint_minutes > 0 and done < steps and due:
            if env.is_main and trainer.steps_so_far_finite():  # never a state touched by a non-finite step
                ckpt.atomic_save(checkpoint_state(trainer, epoch - 1, done, cfg), save / "model" / "last.model")
            last_save = time.monotonic()

    metrics: dict = {}
    if start > cfg.max_epoch:
        log.info("training already finished (%d epochs); nothing to do", cfg.max_epoch)
    for epoch in range(start, cfg.max_epoch + 1):
        sampler.set_epoch(epoch, first_step)
        stats = trainer.train_network(loader, epoch, steps, first_step, on_step=timed_checkpoint)
        first_step = 0
        lr = optimizer.param_groups[0]["lr"]
        log.info("epoch %d: loss %.4f, accuracy %.2f%%, %.1f utterances/s, lr %.3g", epoch, stats["loss"],
                 stats["acc"], stats["utt_per_s"], lr)
        board.add({"train/loss": stats["loss"], "train/accuracy": stats["acc"], "train/utt_per_s": stats["utt_per_s"],
                   "train/lr": lr, "train/margin": float(getattr(net.loss, "margin", float("nan")))}, epoch)
        state = checkpoint_state(trainer, epoch, 0, cfg)
        if env.is_main:
            ckpt.atomic_save(state, save / "model" / "last.model")
        evaluating = epoch % cfg.test_interval == 0 or epoch == cfg.max_epoch
        if env.is_main and (evaluating or (cfg.save_interval > 0 and epoch % cfg.save_interval == 0)):
            ckpt.atomic_save(state, ckpt.checkpoint_path(save, epoch))
        if evaluating:
            metrics = evaluate(embedder, trials, cfg, save / "result", test_normalize(net.loss),
                               checkpoint=ckpt.checkpoint_path(save, epoch))
            board.add({f"eval/{k}": v for k, v in metrics.items() if k.startswith(("eer", "min_dcf"))}, epoch)
        barrier(env)
    board.close()
    return metrics


def _worker(argv: list[str]) -> None:
    """Entry point of each process started by --distributed."""
    code = main(argv)
    if code:
        sys.exit(code)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    setup_logging()
    env = distributed.from_environment()
    try:
        cfg = parse_args(argv)
        check_eval_options(cfg)
        device = pick_device(cfg.device)
        if cfg.distributed and env is None:
            nproc = cfg.nproc_per_node or (torch.cuda.device_count() if device.type == "cuda" else 0)
            if nproc < 1:
                raise UserError("--distributed found no GPU; give --nproc_per_node N to run N CPU processes, or "
                                "start the job with torchrun.")
            try:
                distributed.launch(_worker, argv, nproc, cfg.port)
            except ChildFailedError as err:
                log.error("a distributed worker failed: %s", err.format_msg() if hasattr(err, "format_msg") else err)
                return 1
            return 0
        env = env or DistEnv()
        if not env.is_main:
            logging.getLogger().setLevel(logging.WARNING)
        device = distributed.init(env, device.type) if env.enabled else device
        if device.type == "cpu":
            tune_cpu_allocator()
        seed_everything(cfg.seed)
        if cfg.extract:
            embedder, _, path = build_embedder(cfg, device, env)
            run_extract(cfg, embedder, checkpoint=path)
        elif cfg.eval:
            run_eval(cfg, device, env)
        else:
            run_train(cfg, device, env)
    except UserError as err:
        log.error("%s", err)
        return 2
    finally:
        distributed.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
