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
import random
import sys
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader

import checkpoint as ckpt
import plugins
from config import Config, UserError, parse_args, save_config
from DatasetLoader import SpeakerBalancedSampler, TrainDataset, read_train_list, read_trial_list
from evaluation import evaluate
from loss._margin import margin_at
from SpeakerNet import ModelTrainer, SpeakerNet

log = logging.getLogger("trainSpeakerNet")

# Settings a resumed run must share with its checkpoint (besides config.MODEL_KEYS): the states must fit.
RESUME_KEYS = ("trainfunc", "nClasses", "optimizer", "scheduler")


class _RunLog(logging.FileHandler):
    """The log file of one run (replaced when the same process starts another run)."""


def setup_logging(log_file: Path | None = None) -> None:
    """Console logging at INFO; with ``log_file``, also a copy of the log in that file."""
    root = logging.getLogger()
    if not root.handlers:
        logging.basicConfig(format="%(asctime)s %(levelname)s %(message)s", datefmt="%H:%M:%S")
    root.setLevel(logging.INFO)
    for handler in [h for h in root.handlers if isinstance(h, _RunLog)]:
        root.removeHandler(handler)
        handler.close()
    if log_file is not None:
        log_file.parent.mkdir(parents=True, exist_ok=True)
        handler = _RunLog(log_file)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        root.addHandler(handler)


def pick_device(name: str) -> torch.device:
    if name == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda was asked for but no CUDA GPU is available; use --device cpu or auto.")
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def build_net(cfg: Config) -> SpeakerNet:
    """Model and loss head from their plugins, checking the loss's needs against the config."""
    model = plugins.build("model", cfg.model, cfg)
    loss = plugins.build("loss", cfg.trainfunc, cfg)
    need = getattr(loss, "min_per_speaker", 1)
    if cfg.nPerSpeaker < need:
        raise UserError(f"--trainfunc {cfg.trainfunc} needs --nPerSpeaker {need} or more (crops of each speaker in "
                        f"a batch); it is {cfg.nPerSpeaker}.")
    return SpeakerNet(model, loss)


def load_weights(net: SpeakerNet, path: str | Path, cfg: Config, with_loss: bool) -> dict:
    """Load model (and, when it fits, loss-head) weights from a checkpoint of ours or of the official code."""
    obj = ckpt.read(path)
    model_sd, loss_sd, stored = ckpt.split_weights(obj, path, list(net.model.state_dict()))
    ckpt.check_compatible(stored, cfg, path, ())
    ckpt.load_into(net.model, model_sd, "model", path)
    if with_loss:
        same_head = stored is None or all(stored.get(k) == getattr(cfg, k) for k in ("trainfunc", "nClasses"))
        if same_head and loss_sd:
            ckpt.load_into(net.loss, loss_sd, "loss head", path)
        else:
            log.info("loss head of '%s' not loaded (another --trainfunc or --nClasses): it starts afresh", path)
    log.info("loaded weights from %s", path)
    return obj


def checkpoint_state(net: SpeakerNet, trainer: ModelTrainer, epoch: int, cfg: Config) -> dict:
    return {"format": ckpt.FORMAT, "version": 1, "epoch": epoch, "model": net.model.state_dict(),
            "loss": net.loss.state_dict(), "optimizer": trainer.optimizer.state_dict(),
            "scheduler": trainer.scheduler.state_dict(), "scaler": trainer.scaler.state_dict(),
            "rng": ckpt.rng_state(), "config": cfg.to_dict()}


def run_eval(cfg: Config, device: torch.device) -> dict:
    path = cfg.initial_model or ckpt.latest_checkpoint(cfg.save_path)
    if not path:
        raise UserError(f"--eval needs weights: give --initial_model, or train first so that "
                        f"'{Path(cfg.save_path) / 'model'}' holds a checkpoint.")
    trials = [read_trial_list(path, cfg.test_path) for path in cfg.test_list]
    net = build_net(cfg)
    load_weights(net, path, cfg, with_loss=False)
    net.to(device)
    trainer = ModelTrainer(net, None, None, "epoch", device, cfg.mixedprec)
    return evaluate(trainer, trials, cfg, Path(cfg.save_path) / "result", net.loss)


def run_train(cfg: Config, device: torch.device) -> dict:
    save = Path(cfg.save_path)
    last = ckpt.latest_checkpoint(save)
    resume = ckpt.read(last) if last else None
    if resume is not None:
        ckpt.check_compatible(resume.get("config"), cfg, last, RESUME_KEYS)
    train = read_train_list(cfg.train_list, cfg.train_path)
    trials = [read_trial_list(path, cfg.test_path) for path in cfg.test_list]
    if len(train.speakers) > cfg.nClasses:
        raise UserError(f"The train list '{cfg.train_list}' has {len(train.speakers)} speakers but --nClasses is "
                        f"{cfg.nClasses}; set --nClasses {len(train.speakers)}.")

    net = build_net(cfg)
    sampler = SpeakerBalancedSampler(train.labels, cfg.nPerSpeaker, cfg.max_seg_per_spk, cfg.batch_size, cfg.seed)
    steps = sampler.batches_per_epoch()
    if steps == 0:
        raise UserError(f"An epoch of '{cfg.train_list}' has no full batch of {cfg.batch_size} speakers x "
                        f"{cfg.nPerSpeaker} crops; lower --batch_size or --nPerSpeaker.")
    loader = DataLoader(TrainDataset(train, cfg.max_frames), batch_size=cfg.batch_size, sampler=sampler,
                        num_workers=cfg.nDataLoaderThread, drop_last=True, pin_memory=device.type == "cuda",
                        persistent_workers=cfg.nDataLoaderThread > 0)
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
    trainer = ModelTrainer(net, optimizer, scheduler, step_per, device, cfg.mixedprec, on_iteration=set_margin)
    start = 1
    if resume is not None:
        ckpt.load_into(net.model, resume["model"], "model", last)
        ckpt.load_into(net.loss, resume["loss"], "loss head", last)
        optimizer.load_state_dict(resume["optimizer"])
        scheduler.load_state_dict(resume["scheduler"])
        trainer.scaler.load_state_dict(resume["scaler"])
        ckpt.set_rng_state(resume["rng"])
        start = resume["epoch"] + 1
        log.info("resuming from %s after epoch %d", last, resume["epoch"])
    elif cfg.initial_model:
        load_weights(net, cfg.initial_model, cfg, with_loss=True)

    save_config(cfg, save / "config.yaml")
    setup_logging(save / "result" / "train.log")
    log.info("%d utterances of %d speakers; %d steps of %d speakers x %d crops per epoch; %.2fM parameters",
             len(train.files), len(train.speakers), steps, cfg.batch_size, cfg.nPerSpeaker,
             sum(p.numel() for p in net.model.parameters()) / 1e6)
    metrics: dict = {}
    if start > cfg.max_epoch:
        log.info("training already finished (%d epochs); nothing to do", cfg.max_epoch)
    for epoch in range(start, cfg.max_epoch + 1):
        sampler.set_epoch(epoch)
        stats = trainer.train_network(loader, epoch, sampler.batches_per_epoch())
        log.info("epoch %d: loss %.4f, accuracy %.2f%%, %.1f utterances/s, lr %.3g", epoch, stats["loss"],
                 stats["acc"], stats["utt_per_s"], optimizer.param_groups[0]["lr"])
        state = checkpoint_state(net, trainer, epoch, cfg)
        ckpt.atomic_save(state, save / "model" / "last.model")
        if epoch % cfg.test_interval == 0 or epoch == cfg.max_epoch:
            ckpt.atomic_save(state, ckpt.checkpoint_path(save, epoch))
            metrics = evaluate(trainer, trials, cfg, save / "result", net.loss)
    return metrics


def main(argv: list[str] | None = None) -> int:
    setup_logging()
    try:
        cfg = parse_args(argv)
        device = pick_device(cfg.device)
        seed_everything(cfg.seed)
        run_eval(cfg, device) if cfg.eval else run_train(cfg, device)
    except UserError as err:
        log.error("%s", err)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
