"""The training step does not wait for the device: host syncs are counted, non-finite steps skipped on the device.

On CPU a "sync" is any read of a tensor's value by the host (``item``, ``tolist``, ``bool``, ``float``, ``int``,
``numpy``); on CUDA each of these waits for the GPU. The counting wrappers see every such read, in our code and in
torch's Python code alike, during whole epochs of ModelTrainer on a tiny ResNet.
"""

from __future__ import annotations

import warnings

import pytest
import torch

from config import Config
from dtdysv.errors import UserError
from dtdysv.runtime import plugins
from SpeakerNet import ModelTrainer, NonFiniteLossError, SpeakerNet

SPEAKERS, PER_SPEAKER, SAMPLES = 3, 2, 4_000
HOST_READS = ("item", "tolist", "__bool__", "__float__", "__int__", "numpy")


@pytest.fixture(autouse=True)
def _threads(one_thread):
    yield


def tiny_trainer(log_interval: int, optimizer: str = "adam", scaler: bool = False, scheduler: str = "cosine",
                 device: str = "cpu") -> ModelTrainer:
    cfg = Config(model="ResNet34_quarter", encoder_type="SAP", n_mels=40, nOut=32, nClasses=6, optimizer=optimizer)
    torch.manual_seed(0)
    net = SpeakerNet(plugins.build("model", cfg.model, cfg), plugins.build("loss", "softmaxproto", cfg)).to(device)
    opt = plugins.build("optimizer", cfg.optimizer, cfg, named_parameters=list(net.named_parameters()))
    sched, step_per = plugins.build("scheduler", scheduler, cfg, optimizer=opt, iters_per_epoch=8)
    trainer = ModelTrainer(net, opt, sched, step_per, torch.device(device), mixedprec=False, log_interval=log_interval)
    if scaler:  # the fp16 path's dynamic scaler, here on fp32 CPU maths: the scaler's skipping is what is tested
        trainer.scaler = torch.amp.GradScaler(device, init_scale=2.0**10)
    return trainer


def batches(n: int, device: str = "cpu") -> list[tuple[torch.Tensor, torch.Tensor]]:
    gen = torch.Generator().manual_seed(1)
    return [(0.1 * torch.randn(SPEAKERS, PER_SPEAKER, SAMPLES, generator=gen).to(device),
             torch.randperm(6, generator=gen)[:SPEAKERS].to(device)) for _ in range(n)]


class HostReads:
    """Counts the host reads of tensor values while active (a monkeypatch of the Tensor methods)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.count = 0
        for name in HOST_READS:
            real = getattr(torch.Tensor, name)

            def counting(tensor, *args, _real=real, **kwargs):
                self.count += 1
                return _real(tensor, *args, **kwargs)

            monkeypatch.setattr(torch.Tensor, name, counting)


@pytest.mark.parametrize("optimizer, scaler", [("adam", False), ("sgd", False), ("adamw", True)])
def test_one_host_read_per_log_interval_and_none_per_step(monkeypatch, optimizer, scaler):
    """8 steps, log_interval 4: two reads (one per interval; the epoch's last is the second), whatever the optimizer
    and with or without the gradient scaler, with a learning rate set at every step (cosine); log_interval 1 reads
    after every step."""
    data = batches(8)
    counts = {}
    for interval in (4, 1):
        trainer = tiny_trainer(interval, optimizer, scaler)
        trainer.train_network(data[:1], epoch=1, steps=1, show_progress=False)  # first-call set-up, not counted
        reads = HostReads(monkeypatch)
        stats = trainer.train_network(data, epoch=2, steps=8, show_progress=False)
        counts[interval] = reads.count - (1 if scaler else 0)  # the epoch's scale in the log: once per epoch
        monkeypatch.undo()
        assert stats["skipped_steps"] == 0 and stats["loss"] > 0 and 0 <= stats["acc"] <= 100
    assert counts == {4: 2, 1: 8}


def test_loss_and_accuracy_are_the_means_of_the_steps(monkeypatch):
    """The device sums read per interval give the same epoch means as reading every step."""
    data = batches(6)
    seen = []
    real = SpeakerNet.forward

    def spy(self, *args):
        loss, acc = real(self, *args)
        seen.append((float(loss.detach()), float(acc)))
        return loss, acc

    monkeypatch.setattr(SpeakerNet, "forward", spy)
    stats = tiny_trainer(4).train_network(data, epoch=1, steps=6, show_progress=False)  # reads at 4 and 6
    assert stats["loss"] == pytest.approx(sum(s[0] for s in seen) / 6, rel=1e-6)
    assert stats["acc"] == pytest.approx(sum(s[1] for s in seen) / 6, rel=1e-6)


def poison(monkeypatch: pytest.MonkeyPatch, bad_calls: set[int]) -> None:
    """SpeakerNet.forward returns a NaN loss on the given calls (counted from 0)."""
    real = SpeakerNet.forward
    calls = []

    def poisoned(self, *args):
        loss, acc = real(self, *args)
        calls.append(1)
        return (loss * float("nan"), acc) if len(calls) - 1 in bad_calls else (loss, acc)

    monkeypatch.setattr(SpeakerNet, "forward", poisoned)


def parameters(trainer: ModelTrainer) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in trainer.speaker_net.named_parameters()}


@pytest.mark.parametrize("scaler", [False, True])
def test_a_nan_step_stops_within_the_interval_and_changes_no_weight(monkeypatch, scaler):
    """A NaN loss at step 3 of 8 (log_interval 4): the step is skipped on the device, step 4 trains on, and the read
    after step 4 stops training; the weights equal those of a run that never saw batch 3 (at the same learning rate:
    steplr steps per epoch)."""
    data = batches(8)
    clean = tiny_trainer(4, scaler=scaler, scheduler="steplr")
    clean.train_network([data[i] for i in (0, 1, 3)], epoch=1, steps=3, show_progress=False)

    trainer = tiny_trainer(4, scaler=scaler, scheduler="steplr")
    poison(monkeypatch, {2})
    done = []
    with pytest.raises(NonFiniteLossError, match=r"epoch 1, step 3 on rank 0.*changed no weight.*last good"):
        trainer.train_network(data, epoch=1, steps=8, on_step=lambda e, d: done.append(d), show_progress=False)
    assert done == [1, 2, 3]  # stopped at the read after step 4, before on_step(4)
    ours, expected = parameters(trainer), parameters(clean)
    assert all(torch.isfinite(v).all() for v in ours.values())
    assert all(torch.equal(ours[k], expected[k]) for k in ours)
    a, b = trainer.optimizer.state_dict()["state"], clean.optimizer.state_dict()["state"]
    assert all(torch.equal(a[i]["step"], b[i]["step"]) for i in a)  # the skipped step is not counted by Adam


def test_a_timed_checkpoint_sees_an_unread_nan_step(monkeypatch):
    """steps_so_far_finite: False right after a NaN step whose interval is not read yet, True before it."""
    trainer = tiny_trainer(10)
    poison(monkeypatch, {1})
    answers = []
    with pytest.raises(NonFiniteLossError):
        trainer.train_network(batches(3), epoch=1, steps=3, show_progress=False,
                              on_step=lambda e, d: answers.append(trainer.steps_so_far_finite()))
    assert answers == [True, False, False]


def test_gradient_scaler_skips_are_counted_and_logged(monkeypatch, caplog):
    """With the scaler, a step whose gradient overflows is skipped (normal in fp16) and logged with its number."""
    trainer = tiny_trainer(4, scaler=True)
    real = torch.Tensor.backward
    calls = []

    def overflow_once(self, gradient=None, *args, **kwargs):
        calls.append(1)
        if len(calls) == 2:  # an infinite gradient with a finite loss, as an fp16 overflow gives
            gradient = torch.full_like(self, float("inf"))
        return real(self, gradient, *args, **kwargs)

    monkeypatch.setattr(torch.Tensor, "backward", overflow_once)
    before = trainer.scaler.get_scale()
    with caplog.at_level("INFO"):
        stats = trainer.train_network(batches(5), epoch=1, steps=5, show_progress=False)
    assert stats["skipped_steps"] == 1 and trainer.scaler.get_scale() == before / 2
    assert "skipped 1 of 5 steps (steps 2)" in caplog.text


def test_an_optimizer_without_a_fused_step_still_skips_non_finite_steps(monkeypatch):
    trainer = tiny_trainer(4)
    params = [p for group in trainer.optimizer.param_groups for p in group["params"]]
    trainer.optimizer = torch.optim.Adam(params, lr=1e-3)  # the per-parameter loop: no found_inf input
    trainer.skips_on_device = False
    trainer.scheduler, trainer.step_per = torch.optim.lr_scheduler.StepLR(trainer.optimizer, 1), "epoch"
    poison(monkeypatch, {0})
    before = parameters(trainer)
    with pytest.raises(NonFiniteLossError, match="step 1 on rank 0"):
        trainer.train_network(batches(2), epoch=1, steps=2, show_progress=False)
    after = parameters(trainer)
    assert any(not torch.equal(before[k], after[k]) for k in before)  # step 2 trained
    assert all(torch.isfinite(v).all() for v in after.values())


def _ddp_worker(rank: int, init_file: str, out: str) -> None:
    """One of two gloo ranks: rank 1's loss is NaN at step 2 of 4 (log_interval 4)."""
    import torch.distributed as dist

    from dtdysv.runtime.distributed import DistEnv

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    try:
        trainer = tiny_trainer(4, scheduler="steplr")
        trainer.net = torch.nn.parallel.DistributedDataParallel(trainer.net)
        trainer.env = DistEnv(rank=rank, local_rank=rank, world_size=2, local_world_size=2)
        if rank == 1:
            poison(pytest.MonkeyPatch(), {1})
        error = ""
        try:
            trainer.train_network(batches(4 * (rank + 1))[4 * rank:], epoch=1, steps=4, show_progress=False)
        except NonFiniteLossError as err:
            error = str(err)
        torch.save({"error": error, "params": parameters(trainer)}, f"{out}/{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_a_nan_step_on_one_rank_stops_every_rank_and_is_skipped_everywhere(tmp_path):
    """DDP over gloo: the NaN loss of rank 1 reaches rank 0 as NaN gradients, both ranks skip the step, stop at the
    same read and keep identical, finite weights."""
    import torch.multiprocessing as mp

    mp.spawn(_ddp_worker, args=(str(tmp_path / "init"), str(tmp_path)), nprocs=2, join=True)
    results = [torch.load(tmp_path / f"{rank}.pt") for rank in (0, 1)]
    assert "step 2 on rank 1" in results[1]["error"]
    assert "step 2 on rank 0" in results[0]["error"]  # its averaged gradient was NaN
    a, b = results[0]["params"], results[1]["params"]
    assert all(torch.isfinite(v).all() and torch.equal(v, b[k]) for k, v in a.items())
    start = parameters(tiny_trainer(4))
    assert any(not torch.equal(v, start[k]) for k, v in a.items())  # the finite steps trained


def test_log_interval_below_one_is_a_clear_error():
    with pytest.raises(UserError, match="--log_interval must be at least 1"):
        tiny_trainer(0)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_no_synchronising_cuda_call_inside_an_interval():
    """torch.cuda.set_sync_debug_mode warns at every synchronising CUDA call: within an epoch of 8 steps at
    log_interval 8, only the epoch's one read may warn."""
    trainer = tiny_trainer(8, device="cuda")
    data = batches(8, "cuda")
    trainer.train_network(data, epoch=1, steps=8, show_progress=False)  # warm-up: cuDNN, allocator
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("warn")
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            trainer.train_network(data, epoch=2, steps=8, show_progress=False)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    syncs = [w for w in caught if "synchroniz" in str(w.message)]
    assert len(syncs) <= 1, [str(w.message) for w in syncs]
