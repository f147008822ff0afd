"""Train stage: BCE pre-training of the generator, then adversarial training (Pan et al. 2017 Sec. 3-4).

``salgan train`` (or ``python -m salgan.train``) reads params.yaml. With ``train.nproc`` above 1 it
relaunches itself under torchrun (``--standalone``, one process per GPU; gloo on CPU, nccl on GPU);
started by torchrun directly it joins that process group, so the cluster form is the same module
under ``torchrun --nnodes=N --rdzv-backend=c10d --rdzv-endpoint=HOST:PORT``.

Every epoch ends with an atomic checkpoint. A checkpoint is resumed only when it was made from the same
training settings, the same prepared data and the same training code (:func:`identity`); otherwise
training starts from scratch and says why. A finished run does nothing more than restore any output
that is missing (DVC deletes a stage's outputs before it reruns it). Rank 0 decides, reads and writes;
the other ranks receive its decision and state.
"""

from __future__ import annotations

import contextlib
import json
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DistributedSampler

from salgan import checkpoint, finetune
from salgan.cli import call, command_parser, python_tool, run_command
from salgan.cpus import usable_cpus
from salgan.data import PreparedSplit, load_split, split_bytes, stream_from_host
from salgan.distributed import (
    DistInfo,
    all_reduce_sum,
    broadcast_from_main,
    cleanup,
    init_distributed,
    raise_if_any_failed,
    resolve_device,
    resolve_nproc,
    under_torchrun,
)
from salgan.finetune import InitModel
from salgan.gan_diagnostics import gan_diagnostics
from salgan.layout import (
    HISTORY_DIAGNOSTICS,
    HISTORY_LOSSES,
    ModelFiles,
    code_version,
    json_digest,
    split_version,
    write_atomic,
)
from salgan.losses import ContentLoss, discriminator_loss, generator_loss
from salgan.models import build_discriminator, build_generator
from salgan.models.density import saliency_of
from salgan.progress import progress
from salgan.settings import ConfigError, Params, load_params, to_dict, to_record
from salgan.tracking import enabled as tracking_enabled

# Settings that do not change what is trained: a checkpoint made under other values is still resumed.
RESUME_IRRELEVANT = {"nproc", "device", "compile", "output", "data", "data_placement", "data_budget_gb"}


@dataclass
class Models:
    """The raw modules (saved, evaluated) and the handles used in the step (DDP- or compile-wrapped)."""

    generator: torch.nn.Module
    discriminator: torch.nn.Module
    g_step: torch.nn.Module
    d_step: torch.nn.Module
    opt_g: torch.optim.Optimizer
    opt_d: torch.optim.Optimizer


def settings_version(params: Params) -> str:
    """Hash of the settings that determine the trained weights and the stage's outputs."""
    train = {k: v for k, v in to_dict(params.train).items() if k not in RESUME_IRRELEVANT}
    model = {k: v for k, v in to_dict(params.model).items() if not (k == "init_from" and v == "none")}
    return json_digest({"model": model, "train": train, "size": params.prepare.size})[:16]


def identity(params: Params, init: InitModel | None = None) -> dict[str, str]:
    """What a checkpoint must share with this run to be resumed: settings, data, training code and, when
    fine-tuning, the initial weights (an alias such as models:/salgan@champion may have moved)."""
    data = params.train.data
    made_from = {
        "settings": settings_version(params),
        "data": f"train {split_version(data, 'train')}, val {split_version(data, 'val')}",
        "code": code_version(),
    }
    return made_from | ({"init": init.digest} if init is not None else {})


def autocast(device: torch.device):
    """bf16 autocast on CUDA; full precision on the CPU (bf16 CPU kernels are slower there)."""
    if device.type == "cuda":
        return torch.autocast(device_type="cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def decay_groups(module: torch.nn.Module, params: Params) -> list[dict]:
    """The module's trainable parameters in two groups: decayed by ``train.weight_decay`` (weights only,
    as Lasagne's l2 regularisation, unless ``train.decay_biases``; weight norm's directions v count as
    weights, its gains g do not) and never decayed. The original applies no decay at all: its
    ``+ 1e-4 * l2(...)`` lines are statements of their own, never added to a loss (weight_decay 0)."""
    decayed, plain = [], []
    for name, parameter in module.named_parameters():
        if parameter.requires_grad:
            # original: v of the fixed-gain weight norm; original1: v of PyTorch's (original0 is g)
            is_weight = name.endswith((".weight", ".original", ".original1"))
            (decayed if is_weight or params.train.decay_biases else plain).append(parameter)
    groups = [{"params": decayed, "weight_decay": params.train.weight_decay}, {"params": plain, "weight_decay": 0.0}]
    return [g for g in groups if g["params"]]


def adagrad(module: torch.nn.Module, lr: float, params: Params, device: torch.device) -> torch.optim.Adagrad:
    """AdaGrad over the module's trainable parameters as Lasagne's (the original code): the step is
    lr * g / sqrt(sum of g^2 + eps), eps = ``train.adagrad_epsilon`` (1e-6), which an initial accumulator
    of eps reproduces exactly. PyTorch's own form, lr * g / (sqrt(sum of g^2) + 1e-10), moves every weight
    by lr on its first step whatever the gradient's size, so that a rounding-level gradient flips the
    step's sign (eps 0 selects it). Weight decay: :func:`decay_groups`."""
    options = {"foreach": True} if device.type == "cuda" else {}  # fused AdaGrad is CPU-only in torch 2.11
    eps = params.train.adagrad_epsilon
    stability = {"initial_accumulator_value": eps, "eps": 0.0} if eps > 0 else {"eps": 1e-10}
    return torch.optim.Adagrad(decay_groups(module, params), lr=lr, **stability, **options)


def generator_optimizer(
    generator: torch.nn.Module, params: Params, device: torch.device, adversarial: bool
) -> torch.optim.Optimizer:
    """G's optimiser for a phase. Adversarial (and a run without BCE epochs): AdaGrad at
    ``train.lr_generator``, as the original's SalGAN script. BCE pre-training (``train.bce_optimizer``):
    ``adagrad`` as the paper says, or ``nesterov``, what the original's BCE script runs: Lasagne's
    nesterov_momentum, momentum ``train.bce_momentum`` (0.5), learning rate 1e-3 there (``train.lr_bce``;
    null: lr_generator), no L2. Lasagne's update (v = m v - lr g; w += m v - lr g) is PyTorch's SGD with
    nesterov and no dampening, step for step."""
    cfg = params.train
    if adversarial or not cfg.bce_epochs:
        return adagrad(generator, cfg.lr_generator, params, device)
    lr = cfg.lr_bce if cfg.lr_bce is not None else cfg.lr_generator
    if cfg.bce_optimizer == "nesterov":
        return torch.optim.SGD(decay_groups(generator, params), lr=lr, momentum=cfg.bce_momentum, nesterov=True)
    return adagrad(generator, lr, params, device)


def build_models(params: Params, size: tuple[int, int], info: DistInfo, init: InitModel | None = None) -> Models:
    torch.manual_seed(params.train.seed)  # identical initial weights on every rank
    if init is None:
        generator = build_generator(params.model, density_prior(params, size))
    else:  # the prior travels in the initial model's weights
        generator = finetune.initial_generator(init, params.model)
    generator = generator.to(info.device)
    discriminator = build_discriminator(params.model, size).to(info.device)
    if info.device.type == "cuda":
        generator = generator.to(memory_format=torch.channels_last)
    # channels-last D on a CPU too: its few-channel full-resolution convolutions take 20% less time there
    # (an offline adversarial batch 300 -> 240 ms); the generator gains < 5% on a CPU
    discriminator = discriminator.to(memory_format=torch.channels_last)
    opt_g = generator_optimizer(generator, params, info.device, adversarial=False)
    opt_d = adagrad(discriminator, params.train.lr_discriminator, params, info.device)
    g_step, d_step = generator, discriminator
    if info.distributed:
        ids = [info.device.index] if info.device.type == "cuda" else None
        g_step = DistributedDataParallel(generator, device_ids=ids)
        d_step = DistributedDataParallel(discriminator, device_ids=ids)
    if params.train.compile:
        g_step, d_step = torch.compile(g_step), torch.compile(d_step)
    return Models(generator, discriminator, g_step, d_step, opt_g, opt_d)


# --- the steps (seed paper Eqs. 1-3) --------------------------------------------------------------------


def density_prior(params: Params, size: tuple[int, int]) -> torch.Tensor | None:
    """A density model's centre-bias log-prior at the training ``size`` (W, H), fitted on the train fixations
    (salgan/models/density.py); None for a map model or ``model.density_prior_sigma: null``."""
    if params.model.output != "density" or params.model.density_prior_sigma is None:
        return None
    from salgan.models.density import centre_log_prior

    return centre_log_prior(params.train.data, size, params.model.density_prior_sigma)


def content_of(params: Params) -> ContentLoss:
    """``train.content_loss``: BCE (Eq. 1) or a weighted sum of metric terms (salgan/losses.py)."""
    return ContentLoss(params.train.content_loss, params.train.content_downsample, params.model.output)


def content_step(models: Models, images, targets, params: Params, fixations=None) -> torch.Tensor:
    """Content-only pre-training of the generator (Eq. 1 with BCE). Returns the content loss."""
    with autocast(images.device):
        logits = models.g_step(images, return_logits=True)
    content = content_of(params)(logits, targets, fixations)
    _update(models.opt_g, content)
    return content.detach()


def discriminator_step(
    models: Models, images, targets, params: Params, logits=None, fixations=None, mirror=None
) -> tuple[torch.Tensor, torch.Tensor]:
    """1. The discriminator learns to tell real maps from generated ones (Eq. 3); G does not change.

    ``logits``: the generator's output for this batch when a G step follows on the same batch (the
    ``both`` schedule); otherwise G runs here without a graph. Real and fake go through D in one batch:
    one DDP reduction, larger kernels. ``mirror``: which of the real then the fake pairs D sees mirrored
    (:func:`flip_mask`). Returns (D loss, content loss of the generated maps).
    """
    cfg = params.train
    with autocast(images.device):
        if logits is None:
            with torch.no_grad():
                logits = models.g_step(images, return_logits=True)
        fake = saliency_of(logits.detach(), params.model.output).to(targets.dtype)
        pairs = torch.cat([images, images]), torch.cat([targets, fake])
        if mirror is not None:
            pairs = flip_pairs(*pairs, mirror)
        both = models.d_step(*pairs)
    d_loss = discriminator_loss(*both.chunk(2), reduction=cfg.discriminator_loss)
    _update(models.opt_d, d_loss)
    return d_loss.detach(), content_of(params)(logits.detach(), targets, fixations)


def flip_pairs(images: torch.Tensor, maps: torch.Tensor, mirror: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The (image, map) pairs where ``mirror`` (bool, one per pair) is set mirrored left-right, image and
    map together: D's training pairs doubled against memorising the few offline images
    (``train.discriminator_flip``)."""
    where = mirror.view(-1, 1, 1, 1)
    return torch.where(where, images.flip(-1), images), torch.where(where, maps.flip(-1), maps)


def flip_mask(seed: int, step: int, d_step: int, per_rank: int, rank: int, world: int) -> torch.Tensor:
    """Which of this rank's real then fake pairs D sees mirrored on its update ``d_step`` of adversarial
    batch ``step``: a coin per pair of the global batch from a generator seeded by (seed, step, d_step),
    rank r taking every world-th (as its images, :func:`epoch_batches`). The same pairs are mirrored
    whatever the world size, and a resumed run draws what the uninterrupted one drew."""
    coins = torch.Generator().manual_seed((seed * 1_000_003 + step) * 128 + d_step)
    heads = torch.rand(2, per_rank * world, generator=coins) < 0.5
    return heads[:, rank::world].reshape(-1)


def generator_step(
    models: Models, images, targets, params: Params, logits=None, fixations=None, lr: float | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """2. The generator learns to fool the frozen discriminator while staying close to the ground truth
    (Eq. 2); D does not change. The raw discriminator is used so DDP does not all-reduce D gradients
    that nobody computes. ``lr``: this update's learning rate (the warm-up's). Returns (G loss, content
    loss)."""
    cfg = params.train
    if lr is not None:
        for group in models.opt_g.param_groups:
            group["lr"] = lr
    with autocast(images.device):
        if logits is None:
            logits = models.g_step(images, return_logits=True)
        models.discriminator.requires_grad_(False)
        try:
            fake_logits = models.discriminator(images, saliency_of(logits, params.model.output))
        finally:
            models.discriminator.requires_grad_(True)
    g_loss, content = generator_loss(content_of(params)(logits, targets, fixations), fake_logits, cfg.alpha)
    _update(models.opt_g, g_loss)
    return g_loss.detach(), content.detach()


def _update(optimizer: torch.optim.Optimizer, loss: torch.Tensor) -> None:
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()


def warmup_factor(g_update: int, warmup_steps: int) -> float:
    """The share of ``train.lr_generator`` for the adversarial phase's G update number ``g_update`` (from
    0): rising linearly, 1/N, 2/N, ..., 1 over ``train.g_warmup_steps`` N updates, then 1. A fresh
    AdaGrad's first steps move every weight by about lr whatever the gradient's size, and D's gradient
    is still noise then: without warm-up the content fit is shaken (0.107 -> 0.53 in two steps, offline)."""
    return min(1.0, (g_update + 1) / warmup_steps) if warmup_steps else 1.0


def adversarial_turn(step: int, params: Params) -> tuple[bool, int]:
    """For the adversarial phase's batch number ``step`` (from 0, across epochs): whether G updates on it
    after D, and G's update number. ``alternate``: in each run of ``train.d_steps_per_g`` + 1 batches the
    first go to D, the last to G (1: D, G, D, G ... as the original, D first); ``both``: every batch."""
    if params.train.adversarial_schedule == "both":
        return True, step
    cycle = params.train.d_steps_per_g + 1
    return step % cycle == cycle - 1, step // cycle


def train_one_epoch(
    models: Models,
    split: PreparedSplit,
    batches: list[torch.Tensor],
    adversarial: bool,
    params: Params,
    first_step: int = 0,
) -> dict[str, float]:
    """One pass over this rank's batches; returns mean losses over the epoch and all ranks.

    Adversarial schedules (``train.adversarial_schedule``, :func:`adversarial_turn`): ``alternate`` gives
    each batch to one network, D first, ``train.d_steps_per_g`` batches to D then one to G, as the
    original code with 1 (``first_step`` numbers this epoch's first batch in the adversarial phase, so the
    alternation carries over epochs and resumes); ``both`` runs ``d_steps_per_g`` D steps then a G step on
    every batch from one generator forward. G's learning rate follows :func:`warmup_factor`. ``g_loss`` is
    the mean over G updates, ``d_loss`` over D updates, ``content_loss`` over every batch.
    """
    cfg, device = params.train, split.device
    rank, world = (dist.get_rank(), dist.get_world_size()) if dist.is_initialized() else (0, 1)

    def mirror(step: int, d_step: int, per_rank: int) -> torch.Tensor | None:
        if not cfg.discriminator_flip:
            return None
        return flip_mask(cfg.seed, step, d_step, per_rank, rank, world).to(device)

    models.generator.train()
    models.discriminator.train()
    # g_loss, g updates, d_loss, d updates, content, batches
    totals = torch.zeros(6, dtype=torch.float64, device=device)
    zero, one = torch.zeros((), device=device), torch.ones((), device=device)
    for i, (images, targets, fixations) in enumerate(split.batches(_progress(batches, adversarial))):
        g_loss = d_loss = zero
        g_n = d_n = zero
        if not adversarial:
            content = g_loss = content_step(models, images, targets, params, fixations)
            g_n = one
        else:
            g_turn, g_update = adversarial_turn(first_step + i, params)
            lr = cfg.lr_generator * warmup_factor(g_update, cfg.g_warmup_steps)
            if cfg.adversarial_schedule == "both":
                with autocast(device):
                    logits = models.g_step(images, return_logits=True)  # one generator forward serves every step
                for d_step in range(cfg.d_steps_per_g):
                    flips = mirror(first_step + i, d_step, len(images))
                    d_loss = d_loss + discriminator_step(models, images, targets, params, logits, fixations, flips)[0]
                d_n = one * cfg.d_steps_per_g
                g_loss, content = generator_step(models, images, targets, params, logits, fixations, lr)
                g_n = one
            elif g_turn:
                g_loss, content = generator_step(models, images, targets, params, fixations=fixations, lr=lr)
                g_n = one
            else:
                flips = mirror(first_step + i, 0, len(images))
                d_loss, content = discriminator_step(models, images, targets, params, fixations=fixations, mirror=flips)
                d_n = one
        # d_loss holds the sum over this batch's D updates (zero without one)
        totals += torch.stack([g_loss * g_n, g_n, d_loss, d_n, content, one]).double()
    g_sum, g_count, d_sum, d_count, content_sum, count = all_reduce_sum(totals).tolist()  # one host sync
    # d_loss is null in BCE epochs: every record carries every plotted key (DVC's plots need them all).
    return {
        "g_loss": g_sum / max(g_count, 1),
        "content_loss": content_sum / max(count, 1),
        "d_loss": d_sum / max(d_count, 1) if adversarial else None,
    }


@torch.no_grad()
def evaluate(models: Models, split: PreparedSplit, info: DistInfo, params: Params) -> dict[str, float]:
    """Validation content loss (``train.content_loss``), images sharded over ranks and the sums reduced."""
    models.generator.eval()
    indices = torch.arange(info.rank, len(split), info.world_size, device=split.index_device)
    totals = torch.zeros(2, dtype=torch.float64, device=split.device)
    content = content_of(params)
    for images, maps, fixations in split.batches(indices.split(max(1, params.train.batch_size // info.world_size))):
        with autocast(split.device):
            logits = models.generator(images, return_logits=True)
        loss = content(logits, maps, fixations)
        totals += torch.stack([loss.double() * len(images), torch.tensor(len(images), device=totals.device)])
    loss_sum, count = all_reduce_sum(totals).tolist()
    return {"val_content_loss": loss_sum / max(count, 1)}


def epoch_batches(sampler: DistributedSampler, epoch: int, per_rank: int, device: torch.device) -> list:
    """This rank's index batches; rank r of W takes every W-th index of one seeded global permutation,
    so a global batch holds the same images whatever the world size.

    Every world size runs N // (per_rank * W) batches, the full global batches of one process: the
    sampler pads its permutation to a multiple of W with repeated indices, and that padded tail is dropped
    as one process drops its partial last batch (no duplicate image, no extra step shifting the G/D
    alternation)."""
    sampler.set_epoch(epoch)
    order = torch.tensor(list(sampler), dtype=torch.long)
    full = len(sampler.dataset) // (per_rank * sampler.num_replicas) * per_rank
    return [chunk.to(device) for chunk in order[:full].split(per_rank)]


def _progress(batches: list, adversarial: bool):
    return progress(batches, desc="adversarial" if adversarial else "bce", leave=False, unit="batch")


def diagnostics(models: Models, probe) -> dict[str, float]:
    """D's accuracy, mean D(real) and D(fake), and dead-unit share on the fixed held-out ``probe`` batch
    (salgan/gan_diagnostics.py); rank 0 measures them, on the raw modules."""
    return gan_diagnostics(models.generator, models.discriminator, probe.images, probe.maps)


@torch.no_grad()
def snapshot(models: Models, split: PreparedSplit, index: int) -> torch.Tensor:
    """The generator's map for one fixed val image as uint8 (H, W) on the CPU (seed paper Fig. 3)."""
    models.generator.eval()
    images = split.take(torch.arange(index, index + 1)).images
    with autocast(split.device):
        predicted = models.generator(images)
    return (predicted[0, 0].float().clamp(0, 1) * 255).round().byte().cpu()


# --- checkpoints and outputs ----------------------------------------------------------------------------


def _rng_state(device: torch.device) -> dict:
    """The random streams training draws from: the CPU's and, on a GPU, the current device's (the batch
    order has its own seeded generator, see :func:`epoch_batches`)."""
    state = {"torch": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def _set_rng_state(state: dict, device: torch.device) -> None:
    """Restore what :func:`_rng_state` saved on whatever this machine has: the CUDA state only onto the
    current GPU, and not at all on a CPU. A checkpoint from before this format holds one state per GPU
    of the machine it was made on (a list); the current device's is taken when there is one."""
    torch.set_rng_state(state["torch"])
    saved = state.get("cuda")
    if device.type != "cuda" or saved is None:
        return
    if isinstance(saved, list | tuple):
        index = device.index if device.index is not None else torch.cuda.current_device()
        saved = saved[index] if index < len(saved) else None
    if saved is not None:
        torch.cuda.set_rng_state(saved, device)


def resumable_state(path: Path, wanted: dict[str, str], log) -> dict | None:
    """The checkpoint at ``path`` if it was made from the same settings, data and code; else None.

    A checkpoint that does not match is removed, with a line saying what changed, so that a later
    interruption cannot resume it either.
    """
    if not path.is_file():
        return None
    try:
        state = checkpoint.load(path)
        made_from = state.get("identity") or {}
    except Exception as exc:  # truncated, foreign or from an older version: not resumable, say so
        log(f"{path}: unreadable ({type(exc).__name__}: {exc}); training from scratch")
        path.unlink(missing_ok=True)
        return None
    changed = [key for key in wanted if made_from.get(key) != wanted[key]]
    if changed:
        what = "; ".join(f"{key} {made_from.get(key)} -> {wanted[key]}" for key in changed)
        log(f"{path}: made from other {' and '.join(changed)} ({what}); training from scratch")
        path.unlink()
        return None
    return state


def restore(models: Models, state: dict) -> None:
    models.generator.load_state_dict(state["generator"])
    models.discriminator.load_state_dict(state["discriminator"])
    models.opt_g.load_state_dict(state["opt_g"])
    models.opt_d.load_state_dict(state["opt_d"])
    _set_rng_state(state["rng"], next(models.generator.parameters()).device)


def write_outputs(out: ModelFiles, history: list[dict], snapshots: list[torch.Tensor]) -> None:
    """history.json and one PNG per epoch's snapshot (rewritten whole: cheap, and DVC may have removed
    them before rerunning the stage)."""
    from PIL import Image

    out.snapshots.mkdir(parents=True, exist_ok=True)
    for epoch, array in enumerate(snapshots, start=1):
        if not out.snapshot(epoch).is_file():
            Image.fromarray(array.numpy(), mode="L").save(out.snapshot(epoch))
    write_atomic(out.history, json.dumps(history, indent=1) + "\n")


def _start_fresh(out: ModelFiles) -> None:
    """Remove the outputs of an earlier run so none of its snapshots or history mixes into this one."""
    for path in sorted(out.snapshots.glob("epoch_*.png")):
        path.unlink()
    out.history.unlink(missing_ok=True)
    out.generator.unlink(missing_ok=True)


def _make_tracker(params: Params, info: DistInfo):
    """The MLflow tracker on rank 0 when MLflow is enabled and installed; None otherwise."""
    if not (info.is_main and tracking_enabled(params)):
        return None
    from salgan.tracking.runs import TrainingTracker

    return TrainingTracker(params)


# --- the run ----------------------------------------------------------------------------------------------


def run(params: Params) -> int:
    """Train in this process (one rank of a torchrun group, or alone)."""
    info = init_distributed(params.train.device)
    log = print if info.is_main else (lambda *a, **k: None)
    if info.device.type == "cpu":
        torch.set_num_threads(max(1, usable_cpus() // info.local_world_size))
        # Trained ReLU nets drift into denormal floats, which run many times slower on x86 CPUs.
        torch.set_flush_denormal(True)
    else:
        torch.backends.cudnn.benchmark = True
    try:
        return _train(params, info, log)
    finally:
        cleanup()


def _resolve_init(params: Params, info: DistInfo, log) -> InitModel | None:
    """``model.init_from`` loaded on rank 0 (one fetch from the registry) and sent to every rank; its
    lineage written beside the outputs (salgan/finetune.py)."""
    init, error = None, None
    if info.is_main:
        try:
            init = finetune.resolve(params)
            finetune.write_lineage(params.train.output, finetune.lineage(params, init))
            if init is not None:
                log(f"starting from {init.uri} (weights {init.digest}, trained on {', '.join(init.trained_on)})")
        except Exception as exc:  # noqa: BLE001 -- reported to every rank, then raised
            error = exc
    raise_if_any_failed(error, "loading model.init_from")
    return broadcast_from_main(init)


def _decide_start(
    params: Params, info: DistInfo, log, init: InitModel | None = None
) -> tuple[dict | None, dict[str, str]]:
    """Rank 0 reads the checkpoint and decides; every rank gets the state to resume (None: from scratch).
    Also returns this run's :func:`identity` (on rank 0; empty elsewhere)."""
    state, made_from, error = None, {}, None
    if info.is_main:
        try:
            made_from = identity(params, init)
            out = ModelFiles(Path(params.train.output))
            state = resumable_state(out.checkpoint, made_from, log)
            if state is None:
                _start_fresh(out)
        except Exception as exc:  # noqa: BLE001 -- reported to every rank, then raised
            error = exc
    raise_if_any_failed(error, "reading the checkpoint")
    return broadcast_from_main(state), made_from


def _train(params: Params, info: DistInfo, log) -> int:
    cfg = params.train
    out = ModelFiles(Path(cfg.output))
    if cfg.batch_size % info.world_size:
        raise ConfigError(f"train.batch_size {cfg.batch_size} is not divisible by the {info.world_size} processes")
    per_rank = cfg.batch_size // info.world_size
    fixations = content_of(params).needs_fixations
    data_bytes = split_bytes(cfg.data, "train", "val", fixations=fixations)
    stream = stream_from_host(data_bytes, info.device, cfg.data_placement, cfg.data_budget_gb)
    if stream:
        log(f"the prepared splits ({data_bytes / 2**30:.2f} GB) stay in host memory; each batch is copied to "
            f"{info.device} ahead of its step (train.data_placement: {cfg.data_placement})")  # fmt: skip
    train_split = load_split(cfg.data, "train", info.device, stream, fixations)
    val_split = load_split(cfg.data, "val", info.device, stream, fixations)
    if len(train_split) < cfg.batch_size:
        raise ConfigError(f"train.batch_size {cfg.batch_size} exceeds the {len(train_split)} training images")
    init = _resolve_init(params, info, log)
    models = build_models(params, train_split.size, info, init)
    state, made_from = _decide_start(params, info, log, init)
    start, history, snapshots = 0, [], []
    if state is not None:
        if int(state["epoch"]) > cfg.bce_epochs:  # made in the adversarial phase: by its optimiser
            models.opt_g = generator_optimizer(models.generator, params, info.device, adversarial=True)
        restore(models, state)
        start, history, snapshots = int(state["epoch"]), list(state["history"]), list(state["snapshots"])
    if start >= cfg.epochs:
        if info.is_main:
            missing = not out.generator.is_file() or not out.history.is_file()
            if not out.generator.is_file():
                checkpoint.save_atomic(models.generator.state_dict(), out.generator)
            write_outputs(out, history, snapshots)
            done = "outputs restored from the checkpoint" if missing else "nothing to do"
            log(f"training already finished ({cfg.epochs} epochs); {done}")
        return 0
    if info.is_main and start:
        write_outputs(out, history, snapshots)
        log(f"resuming from {out.checkpoint} after epoch {start}")
    tracker = _make_tracker(params, info)
    if tracker:
        tracker.start(info, resumed_epochs=start)
    sampler = DistributedSampler(
        range(len(train_split)), num_replicas=info.world_size, rank=info.rank, shuffle=True, seed=cfg.seed
    )
    log(
        f"training {cfg.epochs} epochs ({cfg.bce_epochs} BCE-only, then {cfg.adversarial_schedule} G/D) on "
        f"{len(train_split)} images {train_split.size[0]}x{train_split.size[1]}, "
        f"{info.world_size} process(es) on {info.device.type}"
    )
    snapshot_index = min(cfg.snapshot_image, len(val_split) - 1)
    probe = val_split.take(torch.arange(min(cfg.diagnostics_images, len(val_split)), device=val_split.index_device))
    begin = time.perf_counter()
    for epoch in range(start, cfg.epochs):
        adversarial = epoch >= cfg.bce_epochs
        if epoch == cfg.bce_epochs and cfg.reset_optimizer_at_adversarial:
            # The original code starts the adversarial phase with a fresh optimiser (it loads only weights).
            models.opt_g = generator_optimizer(models.generator, params, info.device, adversarial=True)
        tic = time.perf_counter()
        batches = epoch_batches(sampler, epoch, per_rank, train_split.index_device)
        first_step = (epoch - cfg.bce_epochs) * len(batches) if adversarial else 0
        record = {"epoch": epoch + 1, "phase": "adversarial" if adversarial else "bce"}
        record |= train_one_epoch(models, train_split, batches, adversarial, params, first_step)
        seconds = time.perf_counter() - tic
        record |= evaluate(models, val_split, info, params)
        record |= {"images_per_s": len(batches) * cfg.batch_size / seconds, "lr": cfg.lr_generator}
        history.append(record)
        error = None
        if info.is_main:
            try:
                record |= diagnostics(models, probe) if adversarial else dict.fromkeys(HISTORY_DIAGNOSTICS)
                snapshots.append(snapshot(models, val_split, snapshot_index))
                _end_of_epoch(models, made_from, params, history, snapshots, out, tracker)
                log(_epoch_line(record, cfg.epochs, time.perf_counter() - begin))
            except Exception as exc:  # noqa: BLE001 -- reported to every rank, then raised
                error = exc
        raise_if_any_failed(error, f"writing the files of epoch {epoch + 1}")
    if info.is_main:
        checkpoint.save_atomic(models.generator.state_dict(), out.generator)
        log(f"wrote {out.generator}")
        if tracker:
            tracker.finish(out.generator)
    return 0


def _end_of_epoch(models, made_from, params, history, snapshots, out, tracker) -> None:
    epoch = len(history)
    state = {
        "generator": models.generator.state_dict(),
        "discriminator": models.discriminator.state_dict(),
        "opt_g": models.opt_g.state_dict(),
        "opt_d": models.opt_d.state_dict(),
        "epoch": epoch,
        "history": history,
        "snapshots": snapshots,
        "rng": _rng_state(next(models.generator.parameters()).device),
        "identity": made_from,
        "config": to_record(params),
    }
    write_outputs(out, history, snapshots)
    checkpoint.save_atomic(state, out.checkpoint)
    if tracker:
        tracker.log_epoch(history[-1], out.snapshot(epoch))


def _epoch_line(record: dict, epochs: int, elapsed: float) -> str:
    losses = " ".join(f"{k} {record[k]:.4f}" for k in (*HISTORY_LOSSES, "d_accuracy") if record.get(k) is not None)
    return (
        f"epoch {record['epoch']}/{epochs} [{record['phase']}] {losses} "
        f"{record['images_per_s']:.1f} img/s elapsed {elapsed:.1f}s"
    )


def launch_torchrun(nproc: int, argv: list[str]) -> int:
    """Re-run this module under torchrun with ``nproc`` local processes. torchrun exits 1 whatever failed;
    the status is the one the failing process reported (salgan/cli.py: 2 for invalid settings, ...)."""
    command = [*python_tool("torch.distributed.run"), "--standalone", f"--nproc-per-node={nproc}"]
    return call([*command, "-m", "salgan.train", *argv])


def main(argv: list[str] | None = None) -> int:

    parser = command_parser(
        "train",
        "Train SalGAN from the prepared data: train.bce_epochs of BCE pre-training, then adversarial training "
        "(G and D alternating batch by batch, as the original code). Resumes from the checkpoint in "
        "train.output when it was made from the same settings, data and code; with train.nproc > 1 (or auto "
        "on a multi-GPU machine) it relaunches under torchrun.",
    )
    args = parser.parse_args(argv)

    def work() -> int:
        params = load_params(args.params)
        if not under_torchrun():
            nproc = resolve_nproc(params.train.nproc, resolve_device(params.train.device))
            if nproc > 1:
                return launch_torchrun(nproc, ["--params", args.params])
        return run(params)

    return run_command("train", work)


if __name__ == "__main__":
    raise SystemExit(main())
