"""Train stage: BCE pre-training of the generator, then adversarial training (Pan et al. 2017 Sec. 3-4).

``salgan train`` (or ``python -m salgan.train``) reads params.yaml. With ``train.nproc`` above 1 it
relaunches itself under torchrun (``--standalone``, one process per GPU; gloo on CPU, nccl on GPU);
started by torchrun directly it joins that process group, so the cluster form is the same module
under ``torchrun --nnodes=N --rdzv-backend=c10d --rdzv-endpoint=HOST:PORT``.

Every epoch ends with an atomic checkpoint; rerunning the same command resumes from it, and a run that
already finished does nothing more. Only rank 0 writes files and prints.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DistributedSampler

from salgan import checkpoint
from salgan.config import Params, load_params, to_dict
from salgan.data import PreparedSplit, images_to_float, load_split, maps_to_float
from salgan.distributed import (
    DistInfo,
    all_reduce_sum,
    barrier,
    cleanup,
    init_distributed,
    resolve_device,
    resolve_nproc,
    under_torchrun,
)
from salgan.losses import content_loss, discriminator_loss, generator_loss
from salgan.models import build_discriminator, build_generator

CHECKPOINT_FILE = "checkpoint.pt"
GENERATOR_FILE = "generator.pt"
HISTORY_FILE = "history.json"
SNAPSHOT_DIR = "snapshots"
# Settings that change what is trained; a checkpoint made under other values is not resumed.
RESUME_IRRELEVANT = {"nproc", "device", "compile", "output", "data", "snapshot_image"}


@dataclass
class Models:
    """The raw modules (saved, evaluated) and the handles used in the step (DDP- or compile-wrapped)."""

    generator: torch.nn.Module
    discriminator: torch.nn.Module
    g_step: torch.nn.Module
    d_step: torch.nn.Module
    opt_g: torch.optim.Optimizer
    opt_d: torch.optim.Optimizer


def fingerprint(params: Params) -> str:
    """Hash of the settings that determine the trained weights."""
    train = {k: v for k, v in to_dict(params.train).items() if k not in RESUME_IRRELEVANT}
    blob = json.dumps({"model": to_dict(params.model), "train": train, "size": params.prepare.size}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def autocast(device: torch.device):
    """bf16 autocast on CUDA; full precision on the CPU (bf16 CPU kernels are slower there)."""
    if device.type == "cuda":
        return torch.autocast(device_type="cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def build_models(params: Params, size: tuple[int, int], info: DistInfo) -> Models:
    torch.manual_seed(params.train.seed)  # identical initial weights on every rank
    generator = build_generator(params.model).to(info.device)
    discriminator = build_discriminator(params.model, size).to(info.device)
    if info.device.type == "cuda":
        generator = generator.to(memory_format=torch.channels_last)
        discriminator = discriminator.to(memory_format=torch.channels_last)
    adagrad = {"weight_decay": params.train.weight_decay}
    if info.device.type == "cuda":  # multi-tensor kernels; fused AdaGrad is CPU-only in torch 2.11
        adagrad["foreach"] = True
    opt_g = torch.optim.Adagrad(
        [p for p in generator.parameters() if p.requires_grad], lr=params.train.lr_generator, **adagrad
    )
    opt_d = torch.optim.Adagrad(discriminator.parameters(), lr=params.train.lr_discriminator, **adagrad)
    g_step, d_step = generator, discriminator
    if info.distributed:
        ids = [info.device.index] if info.device.type == "cuda" else None
        g_step = DistributedDataParallel(generator, device_ids=ids)
        d_step = DistributedDataParallel(discriminator, device_ids=ids)
    if params.train.compile:
        g_step, d_step = torch.compile(g_step), torch.compile(d_step)
    return Models(generator, discriminator, g_step, d_step, opt_g, opt_d)


def train_one_epoch(
    models: Models, split: PreparedSplit, batches: list[torch.Tensor], adversarial: bool, params: Params
) -> dict[str, float]:
    """One pass over this rank's batches; returns mean losses over the epoch and all ranks."""
    cfg, device = params.train, split.images.device
    models.generator.train()
    models.discriminator.train()
    totals = torch.zeros(4, dtype=torch.float64, device=device)  # g_loss, content, d_loss, batches
    for indices in _progress(batches, adversarial):
        images = images_to_float(split.images[indices])
        targets = maps_to_float(split.maps[indices])
        with autocast(device):
            predicted = models.g_step(images)  # one generator forward serves both steps
        if adversarial:
            # 1. Discriminator step on real maps and the detached generated ones (Eq. 3); real and fake
            #    go through in one batch: one DDP reduction, larger kernels.
            with autocast(device):
                fake = predicted.detach().to(targets.dtype)
                logits = models.d_step(torch.cat([images, images]), torch.cat([targets, fake]))
            d_loss = discriminator_loss(*logits.chunk(2))
            models.opt_d.zero_grad(set_to_none=True)
            d_loss.backward()
            models.opt_d.step()
            # 2. Generator step through the updated, frozen discriminator (Eq. 2). The raw module is used
            #    so DDP does not all-reduce discriminator gradients that the next batch discards.
            models.discriminator.requires_grad_(False)
            with autocast(device):
                fake_logits = models.discriminator(images, predicted)
            g_loss, content = generator_loss(predicted, targets, fake_logits, cfg.alpha, cfg.content_downsample)
            models.discriminator.requires_grad_(True)
        else:
            # BCE-only pre-training of the generator (Eq. 1).
            content = content_loss(predicted, targets, cfg.content_downsample)
            g_loss, d_loss = content, torch.zeros((), device=device)
        models.opt_g.zero_grad(set_to_none=True)
        g_loss.backward()
        models.opt_g.step()
        totals += torch.stack([g_loss.detach(), content.detach(), d_loss.detach(), torch.ones((), device=device)])
    g_sum, content_sum, d_sum, count = all_reduce_sum(totals).tolist()  # the epoch's one host sync
    result = {"g_loss": g_sum / count, "content_loss": content_sum / count}
    if adversarial:
        result["d_loss"] = d_sum / count
    return result


@torch.no_grad()
def evaluate(models: Models, split: PreparedSplit, info: DistInfo, params: Params) -> dict[str, float]:
    """Validation content loss (BCE/4), images sharded over ranks and the sums reduced."""
    models.generator.eval()
    indices = torch.arange(info.rank, len(split), info.world_size, device=split.images.device)
    totals = torch.zeros(2, dtype=torch.float64, device=split.images.device)
    for chunk in indices.split(max(1, params.train.batch_size // info.world_size)):
        with autocast(split.images.device):
            predicted = models.generator(images_to_float(split.images[chunk]))
        loss = content_loss(predicted, maps_to_float(split.maps[chunk]), params.train.content_downsample)
        totals += torch.stack([loss.double() * len(chunk), torch.tensor(len(chunk), device=totals.device)])
    loss_sum, count = all_reduce_sum(totals).tolist()
    return {"val_content_loss": loss_sum / max(count, 1)}


def epoch_batches(sampler: DistributedSampler, epoch: int, per_rank: int, device: torch.device) -> list:
    """This rank's index batches; rank r of W takes every W-th index of one seeded global permutation,
    so a global batch holds the same images whatever the world size."""
    sampler.set_epoch(epoch)
    order = torch.tensor(list(sampler), dtype=torch.long)
    full = len(order) // per_rank * per_rank  # drop the last partial batch: equal batches on every rank
    return [chunk.to(device) for chunk in order[:full].split(per_rank)]


def _progress(batches: list, adversarial: bool):
    if not (sys.stderr.isatty() and int(os.environ.get("RANK", "0")) == 0):
        return batches
    try:
        from tqdm import tqdm
    except ImportError:
        return batches
    return tqdm(batches, desc="adversarial" if adversarial else "bce", leave=False, unit="batch")


def save_snapshot(models: Models, split: PreparedSplit, index: int, path: Path) -> None:
    """The generator's map for one fixed val image, as an 8-bit PNG (seed paper Fig. 3)."""
    from PIL import Image

    models.generator.eval()
    with torch.no_grad(), autocast(split.images.device):
        predicted = models.generator(images_to_float(split.images[index : index + 1]))
    array = (predicted[0, 0].float().clamp(0, 1) * 255).round().byte().cpu().numpy()
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array, mode="L").save(path)


def _rng_state() -> dict:
    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _resume(models: Models, path: Path, params: Params, log) -> tuple[int, list[dict]]:
    """Load the last checkpoint if it was made with the same training settings; else start afresh."""
    if not path.is_file():
        return 0, []
    state = checkpoint.load(path)
    if state.get("fingerprint") != fingerprint(params):
        log(f"{path}: made with other training settings; starting a new run")
        return 0, []
    models.generator.load_state_dict(state["generator"])
    models.discriminator.load_state_dict(state["discriminator"])
    models.opt_g.load_state_dict(state["opt_g"])
    models.opt_d.load_state_dict(state["opt_d"])
    _set_rng_state(state["rng"])
    log(f"resuming from {path} after epoch {state['epoch']}")
    return int(state["epoch"]), list(state["history"])


def _make_tracker(params: Params, info: DistInfo):
    """The MLflow tracker on rank 0 when MLflow is enabled and installed; None otherwise."""
    if not (info.is_main and params.mlflow.enabled):
        return None
    try:
        from salgan.tracking import TrainingTracker
    except ImportError:
        return None
    return TrainingTracker(params)


def run(params: Params) -> int:
    """Train in this process (one rank of a torchrun group, or alone)."""
    info = init_distributed(params.train.device)
    log = print if info.is_main else (lambda *a, **k: None)
    if info.device.type == "cpu":
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // info.local_world_size))
        # Trained ReLU nets drift into denormal floats, which run many times slower on x86 CPUs.
        torch.set_flush_denormal(True)
    else:
        torch.backends.cudnn.benchmark = True
    try:
        return _train(params, info, log)
    finally:
        cleanup()


def _train(params: Params, info: DistInfo, log) -> int:
    cfg = params.train
    out = Path(cfg.output)
    if cfg.batch_size % info.world_size:
        raise ValueError(f"train.batch_size {cfg.batch_size} is not divisible by the {info.world_size} processes")
    per_rank = cfg.batch_size // info.world_size
    train_split = load_split(cfg.data, "train", info.device)
    val_split = load_split(cfg.data, "val", info.device)
    if len(train_split) < cfg.batch_size:
        raise ValueError(f"train.batch_size {cfg.batch_size} exceeds the {len(train_split)} training images")
    models = build_models(params, train_split.size, info)
    start, history = _resume(models, out / CHECKPOINT_FILE, params, log)
    if start >= cfg.epochs and (out / GENERATOR_FILE).is_file():
        log(f"training already finished ({cfg.epochs} epochs); nothing to do")
        return 0
    tracker = _make_tracker(params, info)
    if tracker:
        tracker.start(info, resumed_epochs=start)
    sampler = DistributedSampler(
        range(len(train_split)), num_replicas=info.world_size, rank=info.rank, shuffle=True, seed=cfg.seed
    )
    log(
        f"training {cfg.epochs} epochs ({cfg.bce_epochs} BCE-only) on {len(train_split)} images "
        f"{train_split.size[0]}x{train_split.size[1]}, {info.world_size} process(es) on {info.device.type}"
    )
    begin = time.perf_counter()
    for epoch in range(start, cfg.epochs):
        adversarial = epoch >= cfg.bce_epochs
        tic = time.perf_counter()
        batches = epoch_batches(sampler, epoch, per_rank, info.device)
        record = {"epoch": epoch + 1, "phase": "adversarial" if adversarial else "bce"}
        record |= train_one_epoch(models, train_split, batches, adversarial, params)
        seconds = time.perf_counter() - tic
        record |= evaluate(models, val_split, info, params)
        record |= {"images_per_s": len(batches) * cfg.batch_size / seconds, "lr": cfg.lr_generator}
        history.append(record)
        if info.is_main:
            _end_of_epoch(models, val_split, params, epoch, history, out, tracker)
            log(_epoch_line(record, cfg.epochs, time.perf_counter() - begin))
        barrier()
    if info.is_main:
        checkpoint.save_atomic(models.generator.state_dict(), out / GENERATOR_FILE)
        log(f"wrote {out / GENERATOR_FILE}")
        if tracker:
            tracker.finish(out / GENERATOR_FILE)
    return 0


def _end_of_epoch(models, val_split, params, epoch, history, out, tracker) -> None:
    snapshot = out / SNAPSHOT_DIR / f"epoch_{epoch + 1:03d}.png"
    save_snapshot(models, val_split, min(params.train.snapshot_image, len(val_split) - 1), snapshot)
    state = {
        "generator": models.generator.state_dict(),
        "discriminator": models.discriminator.state_dict(),
        "opt_g": models.opt_g.state_dict(),
        "opt_d": models.opt_d.state_dict(),
        "epoch": epoch + 1,
        "history": history,
        "rng": _rng_state(),
        "fingerprint": fingerprint(params),
        "config": to_dict(params),
    }
    checkpoint.save_atomic(state, out / CHECKPOINT_FILE)
    (out / HISTORY_FILE).write_text(json.dumps(history, indent=1))
    if tracker:
        tracker.log_epoch(history[-1], snapshot)


def _epoch_line(record: dict, epochs: int, elapsed: float) -> str:
    losses = " ".join(
        f"{k} {record[k]:.4f}" for k in ("g_loss", "content_loss", "d_loss", "val_content_loss") if k in record
    )
    return (
        f"epoch {record['epoch']}/{epochs} [{record['phase']}] {losses} "
        f"{record['images_per_s']:.1f} img/s elapsed {elapsed:.1f}s"
    )


def launch_torchrun(nproc: int, argv: list[str]) -> int:
    """Re-run this module under torchrun with ``nproc`` local processes."""
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}"]
    return subprocess.call([*command, "-m", "salgan.train", *argv])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="salgan train",
        description="Train SalGAN from the prepared data: train.bce_epochs of BCE pre-training, then "
        "adversarial training with G and D alternating every batch. Resumes from the last checkpoint in "
        "train.output; with train.nproc > 1 (or auto on a multi-GPU machine) it relaunches under torchrun.",
    )
    parser.add_argument("--params", default="params.yaml", help="settings file (default: params.yaml)")
    args = parser.parse_args(argv)
    params = load_params(args.params)
    if not under_torchrun():
        nproc = resolve_nproc(params.train.nproc, resolve_device(params.train.device))
        if nproc > 1:
            return launch_torchrun(nproc, ["--params", args.params])
    return run(params)


if __name__ == "__main__":
    raise SystemExit(main())
