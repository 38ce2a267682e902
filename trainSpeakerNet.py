#!/usr/bin/env python
"""Train a speaker-embedding network, or score a trial list with ``--eval`` (voxceleb_trainer's command line).

    python trainSpeakerNet.py --config configs/DTDY_ResNet34_half_ASP.yaml
    python trainSpeakerNet.py --config configs/DTDY_ResNet34_half_ASP.yaml --eval
    python trainSpeakerNet.py --config configs/demo.yaml --seeds 1 2 3      # one run per seed, then a table

``--save_path`` gets ``config.yaml``, ``model/`` (``last.model`` every epoch, ``modelNNNNNNNNN.model`` per evaluation)
and ``result/`` (a folder per trial list: dtdysv/evaluation/results.py); rerunning resumes from ``model/last.model``.
With ``--seeds`` each seed's run is such a folder, ``<save_path>/seed<k>/``, and ``<save_path>/seeds.md`` and
``seeds.csv`` tabulate their results.
"""

from __future__ import annotations

import dataclasses
import logging
import sys
from contextlib import nullcontext
from functools import partial
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.distributed.elastic.multiprocessing.errors import ChildFailedError

from augment import spec_augment
from config import Config, parse_args, save_config
from DatasetLoader import get_data_loader
from dtdysv.data.lists import read_train_list, read_trial_list
from dtdysv.errors import UserError, message_of
from dtdysv.evaluation.embed import run_extract
from dtdysv.evaluation.normalise import check_cohort_size
from dtdysv.evaluation.pipeline import check_eval_options, check_trial_lists, evaluate, score_from_cache
from dtdysv.evaluation.results import RAW
from dtdysv.runtime import checkpoint as ckpt
from dtdysv.runtime import distributed, plugins
from dtdysv.runtime.allocator import tune_cpu_allocator
from dtdysv.runtime.clock import RunClock
from dtdysv.runtime.distributed import DistEnv, barrier
from dtdysv.runtime.fileio import run_lock
from dtdysv.runtime.setup import (
    build_embedder,
    build_net,
    compile_model,
    load_weights,
    pick_device,
    seed_everything,
    setup_logging,
    test_normalize,
    weights_path,
)
from dtdysv.summary import write_summary
from scheduler._margin import MarginSchedule
from SpeakerNet import Embedder, ModelTrainer, SpeakerNet

log = logging.getLogger("trainSpeakerNet")

# Settings a resumed run must share with its checkpoint (besides config.MODEL_KEYS and the options its optimizer and
# scheduler read): their values live in the checkpoint's states or in the order of the data, so a change could not
# take effect. Every other setting may change on a resume and takes effect from there.
RESUME_KEYS = ("trainfunc", "nClasses", "optimizer", "scheduler", "batch_size", "nPerSpeaker", "max_seg_per_spk",
               "seed", "train_list", "speed_perturb", "mixedprec", "mixedprec_dtype")


def resume_keys(cfg: Config) -> tuple[str, ...]:
    return tuple(dict.fromkeys([*RESUME_KEYS, *plugins.options_of("optimizer", cfg.optimizer),
                                *plugins.options_of("scheduler", cfg.scheduler)]))


def changed_settings(stored: dict, cfg: Config) -> list[str]:
    """'key: before -> now' for every option a resumed run changes (each takes effect from the resume on)."""
    now = cfg.to_dict()
    return [f"{key}: {stored[key]!r} -> {now[key]!r}" for key in now if key in stored and stored[key] != now[key]]


def headline(metrics: dict[str, dict]) -> dict[str, float]:
    """EER and minDCF of the raw scores of an evaluation's first list (its test list), from ``evaluate``'s list name
    -> metrics; {} on DDP ranks other than 0."""
    if not metrics:
        return {}
    raw = next(iter(metrics.values()))["variants"][RAW]
    return {k: v for k, v in raw.items() if k.startswith(("eer", "min_dcf"))}


def run_eval(cfg: Config, device: torch.device, env: DistEnv) -> dict[str, dict]:
    """--eval: score the trial lists with the weights of --initial_model (else the newest checkpoint) into
    result/<list>/; returns list name -> its metrics. The log goes to result/eval.log and the first list's figures
    to TensorBoard as well, as in training."""
    result_dir = Path(cfg.save_path) / "result"
    trials = check_trial_lists([read_trial_list(p, cfg.test_path, check_files=not cfg.score_from_cache)
                                for p in cfg.test_list])
    if env.is_main:
        setup_logging(result_dir / "eval.log")
    if cfg.score_from_cache:
        metrics = score_from_cache(cfg, trials, result_dir, checkpoint=weights_path(cfg))
    else:
        embedder, net, path = build_embedder(cfg, device, env)
        metrics = evaluate(embedder, trials, cfg, result_dir, test_normalize(net.loss), checkpoint=path)
    board = Board(Path(cfg.save_path) / "tensorboard", cfg.tensorboard and env.is_main)
    board.add({f"eval_standalone/{k}": v for k, v in headline(metrics).items()}, 0)
    board.close()
    return metrics


class Board:
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


def add_spec_augment(net: SpeakerNet, cfg: Config) -> None:
    """--spec_augment: SpecAugment on the model's features through its ``feature_augment`` hook."""
    if not cfg.spec_augment:
        return
    if not hasattr(net.model, "feature_augment"):
        raise UserError(f"--spec_augment needs a model with a feature_augment hook; '{cfg.model}' has none.")
    net.model.feature_augment = partial(spec_augment, freq_masks=cfg.spec_freq_masks, freq_width=cfg.spec_freq_width,
                                        time_masks=cfg.spec_time_masks, time_width=cfg.spec_time_width,
                                        prob=cfg.spec_prob)


def margin_schedule(cfg: Config, loss: nn.Module) -> MarginSchedule | None:
    """The margin ramp of --margin_rampup_start/--margin_rampup_end for a loss with a margin, else None."""
    try:
        schedule = MarginSchedule(cfg.margin, cfg.margin_rampup_start, cfg.margin_rampup_end)
    except ValueError as err:
        raise UserError(f"--margin_rampup_start/--margin_rampup_end: {err}") from None
    if not (schedule.enabled and hasattr(loss, "margin")):
        return None
    if schedule.end > cfg.max_epoch + 1:
        log.warning("--margin_rampup_end %g is after the last epoch (--max_epoch %d): the margin never reaches %g",
                    schedule.end, cfg.max_epoch, cfg.margin)
    return schedule


def run_train(cfg: Config, device: torch.device, env: DistEnv) -> dict[str, dict]:
    """Train; every --test_interval epochs (and at the last) evaluate the test lists into result/<list>/. Returns the
    last evaluation's list name -> metrics ({} if none ran)."""
    save = Path(cfg.save_path)
    last = ckpt.latest_checkpoint(save)
    resume = ckpt.read(last) if last else None
    if resume is not None:
        ckpt.check_compatible(resume.get("config"), cfg, last, resume_keys(cfg))
    train = read_train_list(cfg.train_list, cfg.train_path)
    check_cohort_size(cfg, len(train.speakers))
    trials = check_trial_lists([read_trial_list(p, cfg.test_path) for p in cfg.test_list])
    loader, sampler = get_data_loader(train, cfg, env, pin_memory=device.type == "cuda")
    steps = sampler.batches_per_epoch()

    net = build_net(cfg)
    add_spec_augment(net, cfg)
    optimizer = plugins.build("optimizer", cfg.optimizer, cfg, named_parameters=list(net.named_parameters()))
    scheduler, step_per = plugins.build("scheduler", cfg.scheduler, cfg, optimizer=optimizer, iters_per_epoch=steps)
    margin = margin_schedule(cfg, net.loss)
    net.to(device)
    if resume is None and cfg.initial_model:
        load_weights(net, cfg.initial_model, cfg, with_loss=True)
    compile_model(net, cfg)
    wrapped = nn.parallel.DistributedDataParallel(net, device_ids=[device] if device.type == "cuda" else None) \
        if env.enabled else net
    board = Board(save / "tensorboard", cfg.tensorboard and env.is_main)

    def on_read(step: int, loss: float, acc: float) -> None:  # every --log_interval steps
        board.add({"step/loss": loss, "step/accuracy": acc, "step/lr": optimizer.param_groups[0]["lr"]}, step)

    trainer = ModelTrainer(wrapped, optimizer, scheduler, step_per, device, cfg.mixedprec, cfg.mixedprec_dtype, env,
                           margin=margin.at if margin else None, log_interval=cfg.log_interval, on_read=on_read)
    start, first_step = ckpt.restore_training(resume, trainer, last) if resume is not None else (1, 0)

    if env.is_main:
        ckpt.remove_stale_temporaries(save)
        save_config(cfg, save / "config.yaml")
        setup_logging(save / "result" / "train.log")
    if resume is not None:
        log.info("resuming from %s after epoch %d%s", last, start - 1, f", step {first_step}" if first_step else "")
        if changes := changed_settings(resume.get("config") or {}, cfg):
            log.info("resumed with changed settings, in effect from here (config.yaml records them): %s",
                     "; ".join(changes))
    log.info("%d utterances of %d speakers; %d steps per epoch of %d processes x %d speakers x %d crops; "
             "%.2fM parameters", len(train.files), len(train.speakers), steps, env.world_size, cfg.batch_size,
             cfg.nPerSpeaker, sum(p.numel() for p in net.model.parameters()) / 1e6)
    embedder = Embedder(net.model, device, env, cfg.mixedprec, cfg.mixedprec_dtype,
                        cfg.fast_cpu_inference and not cfg.compile)
    saver = ckpt.Saver(save, cfg, trainer, steps, cfg.checkpoint_minutes, env.is_main)

    def evaluate_epoch(epoch: int) -> dict[str, dict]:
        metrics = evaluate(embedder, trials, cfg, save / "result", test_normalize(net.loss),
                           checkpoint=ckpt.checkpoint_path(save, epoch))
        board.add({f"eval/{k}": v for k, v in headline(metrics).items()}, epoch)
        return metrics

    metrics: dict[str, dict] = {}
    if resume is not None and resume.get("owes_evaluation") and not first_step:
        log.info("epoch %d was saved but not evaluated: evaluating it first", start - 1)
        metrics = evaluate_epoch(start - 1)
        saver.settle(resume)
    if start > cfg.max_epoch:
        log.info("training already finished (%d epochs); nothing to do", cfg.max_epoch)
    clock = RunClock(start, cfg.max_epoch)
    for epoch in range(start, cfg.max_epoch + 1):
        sampler.set_epoch(epoch, first_step)
        stats = trainer.train_network(loader, epoch, steps, first_step, on_step=saver.timed, label=clock.label(epoch))
        first_step = 0
        lr = optimizer.param_groups[0]["lr"]
        log.info("epoch %d: loss %.4f, accuracy %.2f%%, %.1f utterances/s, lr %.3g", epoch, stats["loss"],
                 stats["acc"], stats["utt_per_s"], lr)
        board.add({"train/loss": stats["loss"], "train/accuracy": stats["acc"], "train/utt_per_s": stats["utt_per_s"],
                   "train/lr": lr, "train/margin": float(getattr(net.loss, "margin", float("nan")))}, epoch)
        evaluating = epoch % cfg.test_interval == 0 or epoch == cfg.max_epoch
        numbered = evaluating or (cfg.save_interval > 0 and epoch % cfg.save_interval == 0)
        saver.epoch_end(epoch, numbered, evaluating)
        if evaluating:
            metrics = evaluate_epoch(epoch)
            saver.settle()
        barrier(env)
        clock.epoch_done()
        log.info("epoch %d/%d done: %s", epoch, cfg.max_epoch, clock.summary(epoch))
    board.close()
    return metrics


def seed_runs(cfg: Config) -> list[Config]:
    """The runs of one command: the command itself, or with --seeds one run per seed in its own experiment folder
    ``<save_path>/seed<k>/`` (resumed like any run, so a finished seed is not trained again)."""
    if not cfg.seeds:
        return [cfg]
    if cfg.extract:
        raise UserError("--seeds runs a training or an evaluation per seed; --extract embeds with one model: give the "
                        "checkpoint of one seed's run (--initial_model <save_path>/seed<k>/model/last.model).")
    return [dataclasses.replace(cfg, seed=seed, seeds=[], save_path=str(Path(cfg.save_path) / f"seed{seed}"))
            for seed in cfg.seeds]


def write_seed_table(cfg: Config) -> None:
    """<save_path>/seeds.md and seeds.csv: each seed's EER and minDCF with their intervals, their mean and std."""
    save = Path(cfg.save_path)
    table = write_summary([save / f"seed{seed}" for seed in cfg.seeds], save / "seeds.md", save / "seeds.csv")
    log.info("results of %d seeds (%s, seeds.csv):\n%s", len(cfg.seeds), save / "seeds.md", table)


def run(cfg: Config, device: torch.device, env: DistEnv) -> None:
    """One run: --extract, --eval or training, in its --save_path."""
    seed_everything(cfg.seed)
    # One run writes in --save_path at a time (rank 0 holds the lock for all ranks); --extract writes elsewhere.
    with run_lock(cfg.save_path) if env.is_main and not cfg.extract else nullcontext():
        if cfg.extract:
            embedder, _, path = build_embedder(cfg, device, env)
            run_extract(cfg, embedder, checkpoint=path)
        elif cfg.eval:
            run_eval(cfg, device, env)
        else:
            run_train(cfg, device, env)


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
        runs = seed_runs(cfg)
        if cfg.threads > 0:
            torch.set_num_threads(cfg.threads)
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
        for number, one in enumerate(runs, start=1):
            if cfg.seeds:
                log.info("seed %d (run %d of %d) in %s", one.seed, number, len(runs), one.save_path)
            run(one, device, env)
        if cfg.seeds and env.is_main:
            setup_logging()
            write_seed_table(cfg)
    except UserError as err:
        log.error("%s", message_of(err))
        return 2
    finally:
        distributed.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
