import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import torchvision
import yaml

from salgan import checkpoint
from salgan import train as train_module
from salgan.data import load_split
from salgan.distributed import DistInfo
from salgan.layout import ModelFiles
from salgan.settings import Params, params_from_dict, to_dict
from salgan.train import (
    adagrad,
    adversarial_turn,
    build_models,
    discriminator_step,
    epoch_batches,
    flip_mask,
    flip_pairs,
    generator_optimizer,
    generator_step,
    run,
    train_one_epoch,
    warmup_factor,
)
from tests.conftest import on_one_cpu, same_weights, tiny_params, weights, write_prepared

FILES = ModelFiles(Path())
CHECKPOINT_FILE, GENERATOR_FILE, HISTORY_FILE = FILES.checkpoint.name, FILES.generator.name, FILES.history.name

REPO = Path(__file__).resolve().parents[1]
CPU = DistInfo(0, 1, 0, 1, torch.device("cpu"))


def write_params(params, path: Path) -> Path:
    path.write_text(yaml.safe_dump(to_dict(params)))
    return path


def run_module(params_file: Path, **popen) -> subprocess.Popen:
    """``python -m salgan.train`` in a session of its own (so a test can kill it with its children)."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "salgan.train", "--params", str(params_file)]
    return subprocess.Popen(command, cwd=REPO, env=env, start_new_session=True, **popen)


def snapshot_bytes(out: Path) -> list[bytes]:
    return [p.read_bytes() for p in sorted((out / "snapshots").glob("epoch_*.png"))]


def models_and_batch(tmp_path, **train_overrides):
    params = tiny_params(tmp_path, **train_overrides)
    split = load_split(params.train.data, "train")
    models = build_models(params, split.size, CPU)
    indices = torch.arange(8)
    images = split.images[indices].permute(0, 3, 1, 2).float() / 255
    targets = split.maps[indices].unsqueeze(1).float() / 255
    return params, split, models, images, targets


def clone(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def adagrad_steps(optimizer: torch.optim.Optimizer) -> int:
    """How many updates the optimiser made (AdaGrad counts steps per parameter)."""
    counts = {int(state["step"]) for state in optimizer.state.values()}
    assert len(counts) <= 1
    return counts.pop() if counts else 0


# --- the steps ----------------------------------------------------------------------------------------


def test_a_discriminator_step_leaves_the_generator_unchanged(tmp_path):
    params, _, models, images, targets = models_and_batch(tmp_path)
    g_before, d_before = clone(models.generator), clone(models.discriminator)
    discriminator_step(models, images, targets, params)
    assert same_weights(clone(models.generator), g_before)
    assert not same_weights(clone(models.discriminator), d_before)


def test_flip_pairs_mirrors_exactly_the_marked_pairs_each_image_with_its_own_map():
    torch.manual_seed(0)
    images, maps = torch.rand(4, 3, 6, 8), torch.rand(4, 1, 6, 8)
    mirror = torch.tensor([True, False, False, True])
    flipped_images, flipped_maps = flip_pairs(images, maps, mirror)
    for i, mirrored in enumerate(mirror.tolist()):
        image, saliency = (images[i].flip(-1), maps[i].flip(-1)) if mirrored else (images[i], maps[i])
        assert torch.equal(flipped_images[i], image) and torch.equal(flipped_maps[i], saliency)


def test_flip_mask_draws_the_global_batch_whatever_the_world_size():
    """Two ranks of 4 pairs each mirror what one process of 8 mirrors (rank r holds the global batch's
    images r, r + 2, ...: epoch_batches), real pairs first then fake; each D update draws anew, a repeated
    call draws the same, and about half the pairs are mirrored."""
    alone = flip_mask(0, step=5, d_step=2, per_rank=8, rank=0, world=1).view(2, 8)
    ranks = [flip_mask(0, step=5, d_step=2, per_rank=4, rank=r, world=2).view(2, 4) for r in (0, 1)]
    interleaved = torch.stack(ranks, dim=-1).reshape(2, 8)
    assert torch.equal(interleaved, alone)
    assert torch.equal(flip_mask(0, 5, 2, 8, 0, 1), alone.reshape(-1))
    draws = torch.stack([flip_mask(0, step, d_step, 8, 0, 1) for step in range(8) for d_step in range(8)])
    assert len({tuple(d.tolist()) for d in draws}) == 64
    assert 0.4 < draws.float().mean().item() < 0.6


def test_discriminator_flip_changes_only_which_way_d_sees_each_pair(tmp_path):
    """On left-right symmetric images, human maps and generated maps (the generator's logits given) a flip
    changes nothing, so D's update with mirrored pairs equals the one without; on the real batch it
    differs. G never moves."""

    def d_after_a_step(images, targets, logits, mirror):
        params, _, models, _, _ = models_and_batch(tmp_path)
        g_before = clone(models.generator)
        discriminator_step(models, images, targets, params, logits, mirror=mirror)
        assert same_weights(clone(models.generator), g_before)
        return clone(models.discriminator)

    _, _, _, images, targets = models_and_batch(tmp_path)
    logits = torch.randn_like(targets)
    mirror = torch.ones(2 * len(images), dtype=torch.bool)
    batch = images, targets, logits
    symmetric = [(t + t.flip(-1)) / 2 for t in batch]
    assert same_weights(d_after_a_step(*symmetric, mirror), d_after_a_step(*symmetric, None))
    assert not same_weights(d_after_a_step(*batch, mirror), d_after_a_step(*batch, None))


@pytest.mark.parametrize("schedule", ["both", "alternate"])
def test_train_discriminator_flip_reaches_d_in_both_schedules(tmp_path, schedule):
    """Two adversarial batches: with train.discriminator_flip D ends elsewhere than without (the models
    start from the same seed)."""
    ends = []
    for flip in (True, False):
        params, split, models, _, _ = models_and_batch(tmp_path, adversarial_schedule=schedule, discriminator_flip=flip)
        train_one_epoch(models, split, [torch.arange(i * 8, i * 8 + 8) for i in range(2)], True, params, 0)
        ends.append(clone(models.discriminator))
    assert not same_weights(*ends)


def test_a_generator_step_leaves_the_discriminator_unchanged_and_trainable(tmp_path):
    params, _, models, images, targets = models_and_batch(tmp_path)
    g_before, d_before = clone(models.generator), clone(models.discriminator)
    generator_step(models, images, targets, params)
    assert same_weights(clone(models.discriminator), d_before)
    assert not same_weights(clone(models.generator), g_before)
    assert all(p.requires_grad for p in models.discriminator.parameters())
    assert all(p.grad is None for p in models.discriminator.parameters())


@pytest.mark.parametrize(
    ("schedule", "first_step", "g_updates", "d_updates"),
    [("alternate", 0, 2, 2), ("alternate", 1, 2, 2), ("both", 0, 4, 4)],
)
def test_adversarial_schedules_share_the_batches_out(tmp_path, schedule, first_step, g_updates, d_updates):
    params, split, models, _, _ = models_and_batch(tmp_path, adversarial_schedule=schedule)
    batches = [torch.arange(i * 8, i * 8 + 8) for i in range(4)]
    train_one_epoch(models, split, batches, True, params, first_step)
    assert (adagrad_steps(models.opt_g), adagrad_steps(models.opt_d)) == (g_updates, d_updates)


def test_alternation_starts_with_the_discriminator_and_carries_over_epochs(tmp_path):
    params, split, models, _, _ = models_and_batch(tmp_path)
    train_one_epoch(models, split, [torch.arange(8)], True, params, first_step=0)
    assert (adagrad_steps(models.opt_g), adagrad_steps(models.opt_d)) == (0, 1)
    train_one_epoch(models, split, [torch.arange(8)], True, params, first_step=1)
    assert (adagrad_steps(models.opt_g), adagrad_steps(models.opt_d)) == (1, 1)


@pytest.mark.parametrize(
    ("schedule", "d_steps", "g_updates", "d_updates"), [("alternate", 3, 1, 3), ("both", 3, 4, 12), ("both", 1, 4, 4)]
)
def test_d_steps_per_g_gives_the_discriminator_that_many_updates_per_generator_update(
    tmp_path, schedule, d_steps, g_updates, d_updates
):
    """4 batches: alternate with 3 D steps per G step spends 3 on D and the 4th on G; both runs 3 D steps and
    a G step on every batch."""
    params, split, models, _, _ = models_and_batch(tmp_path, adversarial_schedule=schedule, d_steps_per_g=d_steps)
    batches = [torch.arange(i * 8, i * 8 + 8) for i in range(4)]
    train_one_epoch(models, split, batches, True, params, 0)
    assert (adagrad_steps(models.opt_g), adagrad_steps(models.opt_d)) == (g_updates, d_updates)


def test_the_alternation_with_several_d_steps_carries_over_epochs():
    params = params_from_dict({"train": {"d_steps_per_g": 2, "adversarial_schedule": "alternate"}})
    turns = [adversarial_turn(step, params) for step in range(7)]
    assert turns == [(False, 0), (False, 0), (True, 0), (False, 1), (False, 1), (True, 1), (False, 2)]
    both = params_from_dict({"train": {"d_steps_per_g": 2, "adversarial_schedule": "both"}})
    assert [adversarial_turn(step, both) for step in range(3)] == [(True, 0), (True, 1), (True, 2)]


def test_the_generators_warm_up_scales_its_first_adversarial_steps(tmp_path):
    """AdaGrad's step is linear in its rate: with a warm-up of 4 G updates the first G update moves every
    weight by a quarter of what it moves without one (same weights, same batch), the second at half rate."""
    assert [warmup_factor(k, 4) for k in range(6)] == [0.25, 0.5, 0.75, 1.0, 1.0, 1.0]
    assert warmup_factor(0, 0) == 1.0
    moved = {}
    for warmup in (0, 4):
        params, split, models, _, _ = models_and_batch(tmp_path / str(warmup), g_warmup_steps=warmup)
        models.opt_g = generator_optimizer(models.generator, params, CPU.device, adversarial=True)
        before = clone(models.generator)
        train_one_epoch(models, split, [torch.arange(8)], True, params, first_step=1)  # batch 1: G's first update
        moved[warmup] = {k: v - before[k] for k, v in clone(models.generator).items() if v.is_floating_point()}
        rates = {group["lr"] for group in models.opt_g.param_groups}
        assert rates == {params.train.lr_generator * (0.25 if warmup else 1)}
        if warmup:
            train_one_epoch(models, split, [torch.arange(8)], True, params, first_step=3)  # G's second update
            assert {group["lr"] for group in models.opt_g.param_groups} == {params.train.lr_generator / 2}
    assert any(step.abs().max() > 0 for step in moved[0].values())
    for name, step in moved[0].items():
        torch.testing.assert_close(moved[4][name], step / 4, rtol=1e-3, atol=1e-7)  # float32 rounding of w + step


def test_the_nesterov_bce_phase_is_lasagnes_update_then_the_adversarial_phase_runs_adagrad(tmp_path):
    """The original's BCE script: Lasagne's nesterov_momentum (v = m v - lr g; w += m v - lr g), momentum
    0.5, its own rate, no decay; the adversarial phase then starts a fresh AdaGrad at lr_generator."""
    params = tiny_params(tmp_path, bce_optimizer="nesterov", lr_bce=0.05, bce_momentum=0.5, weight_decay=0.0)
    models = build_models(params, (64, 48), CPU)
    assert type(models.opt_g) is torch.optim.SGD
    assert {
        (g["lr"], g["momentum"], g["nesterov"], g["dampening"], g["weight_decay"]) for g in models.opt_g.param_groups
    } == {(0.05, 0.5, True, 0, 0.0)}
    w = models.generator.output.weight
    start, velocity = w.detach().clone(), torch.zeros_like(w)
    expected = start.clone()
    for gradient in (torch.full_like(w, 0.2), torch.full_like(w, -0.1)):
        for parameter in models.generator.parameters():
            parameter.grad = torch.zeros_like(parameter)
        w.grad = gradient.clone()
        models.opt_g.step()
        velocity = 0.5 * velocity - 0.05 * gradient
        expected = expected + 0.5 * velocity - 0.05 * gradient
    torch.testing.assert_close(w.detach(), expected)
    adversarial = generator_optimizer(models.generator, params, CPU.device, adversarial=True)
    assert type(adversarial) is torch.optim.Adagrad and adversarial.param_groups[0]["lr"] == params.train.lr_generator


def test_a_nesterov_bce_phase_trains_and_resumes_into_the_adversarial_phase(tmp_path, capsys):
    """The checkpoint of an adversarial epoch holds AdaGrad's state: a resumed run must rebuild G's optimiser
    as AdaGrad before loading it, and end with the weights of an uninterrupted run."""
    settings = {"bce_optimizer": "nesterov", "lr_bce": 1e-3, "epochs": 3, "bce_epochs": 1}
    whole = tiny_params(tmp_path / "whole", **settings)
    run(whole)
    parts = tiny_params(tmp_path / "parts", **(settings | {"epochs": 2}))
    run(parts)
    state = checkpoint.load(tmp_path / "parts" / "models" / CHECKPOINT_FILE)
    state["identity"]["settings"] = train_module.settings_version(tiny_params(tmp_path / "parts", **settings))
    checkpoint.save_atomic(state, tmp_path / "parts" / "models" / CHECKPOINT_FILE)
    run(tiny_params(tmp_path / "parts", **settings))
    assert "resuming" in capsys.readouterr().out
    assert same_weights(
        weights(tmp_path / "whole" / "models" / GENERATOR_FILE), weights(tmp_path / "parts" / "models" / GENERATOR_FILE)
    )


@pytest.mark.parametrize("bce_optimizer", ["adagrad", "nesterov"])
def test_weight_decay_zero_moves_nothing_on_a_zero_gradient(tmp_path, bce_optimizer):
    """The original applies no decay: with weight_decay 0 a zero gradient leaves every weight where it is,
    whichever optimiser (with 1e-4, as before, the weights shrink)."""
    for decay, moves in ((0.0, False), (1e-4, True)):
        params = tiny_params(tmp_path / str(decay), weight_decay=decay, bce_optimizer=bce_optimizer)
        generator = build_models(params, (64, 48), CPU).generator
        optimizer = generator_optimizer(generator, params, CPU.device, adversarial=False)
        before = clone(generator)
        for parameter in generator.parameters():
            parameter.grad = torch.zeros_like(parameter)
        optimizer.step()
        assert same_weights(clone(generator), before) is not moves


def test_weight_decay_moves_weights_not_biases_by_adagrads_first_step(tmp_path):
    """A zero gradient plus decay wd gives g = wd * w; Lasagne's AdaGrad then moves w by lr * g / sqrt(g^2 + eps)."""
    params = tiny_params(tmp_path, weight_decay=0.01, lr_generator=0.1)
    generator = build_models(params, (64, 48), CPU).generator
    optimizer = adagrad(generator, 0.1, params, torch.device("cpu"))
    before = clone(generator)
    for parameter in generator.parameters():
        parameter.grad = torch.zeros_like(parameter)
    optimizer.step()
    after = clone(generator)
    parameters = dict(generator.named_parameters())
    for name, w in before.items():
        if name.endswith(".bias") or name not in parameters:  # biases, and buffers (the architecture record)
            assert torch.equal(after[name], w), name
        else:
            g = 0.01 * w
            torch.testing.assert_close(after[name], w - 0.1 * g / torch.sqrt(g * g + 1e-6), rtol=1e-6, atol=1e-7)


def test_pytorch_adagrad_form_moves_every_weight_by_lr_on_its_first_step(tmp_path):
    params = tiny_params(tmp_path, weight_decay=0.0, adagrad_epsilon=0.0)
    generator = build_models(params, (64, 48), CPU).generator
    optimizer = adagrad(generator, 0.1, params, torch.device("cpu"))
    before = generator.output.weight.detach().clone()
    for parameter in generator.parameters():
        parameter.grad = torch.full_like(parameter, 1e-4)  # Lasagne would move it by 0.1 * 0.1
    optimizer.step()
    torch.testing.assert_close(generator.output.weight.detach(), before - 0.1, rtol=0, atol=1e-6)


def test_decay_biases_decays_them_too(tmp_path):
    params = tiny_params(tmp_path, weight_decay=0.01, decay_biases=True)
    generator = build_models(params, (64, 48), CPU).generator
    torch.nn.init.constant_(generator.output.bias, 0.5)
    optimizer = adagrad(generator, 0.1, params, torch.device("cpu"))
    for parameter in generator.parameters():
        parameter.grad = torch.zeros_like(parameter)
    optimizer.step()
    g = 0.01 * 0.5
    assert generator.output.bias.item() == pytest.approx(0.5 - 0.1 * g / math.sqrt(g * g + 1e-6))


def test_discriminator_has_weight_norm_on_conv3_only_when_asked(tmp_path):
    def normalised_layers(params) -> set[str]:
        discriminator = build_models(params, (64, 48), CPU).discriminator
        return {n.split(".parametrizations")[0] for n, _ in discriminator.named_parameters() if "parametrizations" in n}

    assert normalised_layers(tiny_params(tmp_path)) == {"features.10", "features.12"}  # conv3_1, conv3_2
    plain = to_dict(tiny_params(tmp_path / "plain"))
    plain["model"]["discriminator_weight_norm"] = False
    assert normalised_layers(params_from_dict(plain)) == set()


# --- whole runs -----------------------------------------------------------------------------------------


def test_training_reduces_the_content_loss(tmp_path):
    params = tiny_params(tmp_path, epochs=6, bce_epochs=3)
    assert run(params) == 0
    history = json.loads((tmp_path / "models" / HISTORY_FILE).read_text())
    assert [h["phase"] for h in history] == ["bce"] * 3 + ["adversarial"] * 3
    assert history[-1]["content_loss"] < history[0]["content_loss"]
    assert history[-1]["val_content_loss"] < history[0]["val_content_loss"]
    # Every record has every plotted key (DVC cannot plot a key some records lack); D trains from epoch 4.
    assert all(set(h) >= {"g_loss", "content_loss", "d_loss", "val_content_loss"} for h in history)
    assert [h["d_loss"] is None for h in history] == [True] * 3 + [False] * 3
    assert len(list((tmp_path / "models" / "snapshots").glob("epoch_*.png"))) == 6


def discriminator_record(tmp_path, **train_overrides) -> list[dict]:
    """history.json's adversarial epochs of a tiny run with the paper's D (width 1, pairs as they are), its
    image normalised and fixed weight-norm gain."""
    params = to_dict(tiny_params(tmp_path, **({"discriminator_flip": False} | train_overrides)))
    params["model"] |= {
        "discriminator_image": "normalised",
        "discriminator_weight_norm_gain": "fixed",
        "discriminator_width": 1.0,
    }
    run(params_from_dict(params))
    return [h for h in json.loads((tmp_path / "models" / HISTORY_FILE).read_text()) if h["phase"] == "adversarial"]


def test_a_discriminator_set_to_learn_beats_chance_on_held_out_pairs_and_a_frozen_one_does_not(tmp_path):
    """The held-out diagnostics measure D, not noise: 3 D steps per G step at lr 3e-3 (60 D updates on the
    tiny data, whose real maps are sharp squares and G's maps, after one BCE epoch, grey blurs) take D's
    accuracy on the 8 val pairs it never trains on well above chance and pull D(real) and D(fake) apart; the
    same run with D's rate at 1e-12 (frozen: it moves by about 1e-12 a step) stays at chance."""
    learning = {"epochs": 6, "bce_epochs": 1, "adversarial_schedule": "both", "d_steps_per_g": 3}
    learnt = discriminator_record(tmp_path / "learns", lr_discriminator=3e-3, **learning)
    assert learnt[-1]["d_accuracy"] > 0.6 and learnt[-1]["d_real"] - learnt[-1]["d_fake"] > 0.1
    frozen = discriminator_record(tmp_path / "frozen", lr_discriminator=1e-12, **(learning | {"epochs": 3}))
    assert all(abs(h["d_accuracy"] - 0.5) <= 0.1 and abs(h["d_real"] - h["d_fake"]) < 0.01 for h in frozen)
    assert all(h["d_dead_units"] < 0.5 for h in learnt + frozen)


def offline_adversarial_record(tmp_path, **train_overrides) -> list[dict]:
    """history.json of a tiny run (3 BCE epochs, then 2 adversarial) whose adversarial phase has the offline
    default's settings (params.yaml): D's width, D steps, rates, schedule, alpha; mirrored pairs (tiny_params
    keeps that default)."""
    defaults = Params()
    names = ("alpha", "adversarial_schedule", "d_steps_per_g", "lr_generator", "lr_discriminator")
    offline = {name: getattr(defaults.train, name) for name in names} | {"lr_bce": 3e-3}
    params = to_dict(tiny_params(tmp_path, epochs=5, bce_epochs=3, **(offline | train_overrides)))
    params["model"]["discriminator_width"] = defaults.model.discriminator_width
    run(params_from_dict(params))
    return json.loads((tmp_path / "models" / HISTORY_FILE).read_text())


def test_the_offline_defaults_adversarial_phase_teaches_d_and_keeps_gs_content_fit(tmp_path):
    """Issue 28's balance on the tiny data: under the offline default D's held-out accuracy leaves chance and
    G's val content loss goes on falling through the adversarial epochs; the same run at the original's
    content weight (alpha 0.05) lets G chase D away from the content fit (val content loss up 5% here)."""
    kept = offline_adversarial_record(tmp_path / "default")
    after_bce = kept[2]["val_content_loss"]
    assert kept[-1]["d_accuracy"] > 0.6 and kept[-1]["d_real"] > kept[-1]["d_fake"]
    assert all(h["val_content_loss"] < after_bce for h in kept[3:])
    chased = offline_adversarial_record(tmp_path / "original-alpha", alpha=0.05)
    assert chased[2]["val_content_loss"] == after_bce  # the same BCE phase: alpha acts in the adversarial one only
    assert chased[-1]["val_content_loss"] > 1.03 * after_bce


@pytest.mark.parametrize(("reset", "g_updates"), [(True, 2), (False, 4 + 2)])
def test_the_adversarial_phase_starts_with_a_fresh_generator_optimiser(tmp_path, reset, g_updates):
    """32 images in batches of 8: 4 BCE updates, then 2 G and 2 D updates in the alternating epoch."""
    run(tiny_params(tmp_path, epochs=2, bce_epochs=1, reset_optimizer_at_adversarial=reset))
    state = checkpoint.load(tmp_path / "models" / CHECKPOINT_FILE)["opt_g"]["state"]
    assert {int(s["step"]) for s in state.values()} == {g_updates}


def test_frozen_imagenet_blocks_stay_bit_identical_while_training(tmp_path):
    """The ImageNet path with a local VGG16-layout file: conv1-conv3 frozen, conv4 and conv5 train."""
    torch.manual_seed(3)
    vgg = torchvision.models.vgg16()
    weights_file = tmp_path / "vgg16.pth"
    torch.save(vgg.state_dict(), weights_file)
    data = write_prepared(tmp_path / "prepared", n_train=8, n_val=2)
    params = params_from_dict(
        {
            "prepare": {"size": [64, 48]},
            "model": {"encoder_weights": str(weights_file), "freeze_blocks": 3, "width": 1.0},
            "train": {
                "data": str(data),
                "output": str(tmp_path / "models"),
                "epochs": 2,
                "bce_epochs": 1,
                "batch_size": 4,
                "device": "cpu",
                "nproc": 1,
            },
            "mlflow": {"enabled": False},
        }
    )
    run(params)
    trained = weights(tmp_path / "models" / GENERATOR_FILE)
    frozen = [0, 2, 5, 7, 10, 12, 14]  # conv1_1 ... conv3_3
    for index in frozen:
        for kind in ("weight", "bias"):
            assert torch.equal(trained[f"encoder.{index}.{kind}"], vgg.features[index].state_dict()[kind])
    assert not torch.equal(trained["encoder.17.weight"], vgg.features[17].weight)  # conv4_1 trained


def test_checkpoint_holds_everything_needed_to_resume(tmp_path):
    params = tiny_params(tmp_path, epochs=2)
    run(params)
    state = checkpoint.load(tmp_path / "models" / CHECKPOINT_FILE)
    assert {"generator", "discriminator", "opt_g", "opt_d", "epoch", "rng", "config", "history"} <= set(state)
    assert {"settings", "data", "code"} == set(state["identity"])
    assert state["epoch"] == 2 and state["config"]["train"]["epochs"] == 2 and len(state["snapshots"]) == 2


def test_same_seed_gives_identical_weights(tmp_path):
    a = tiny_params(tmp_path / "a", epochs=2)
    b = tiny_params(tmp_path / "b", epochs=2)
    run(a), run(b)
    assert same_weights(
        weights(tmp_path / "a" / "models" / GENERATOR_FILE), weights(tmp_path / "b" / "models" / GENERATOR_FILE)
    )


def test_streaming_batches_from_host_memory_trains_the_same_weights(tmp_path, capsys):
    """train.data_placement: stream gathers each batch in host memory and copies it over; the batches, and
    so the weights, are those of the splits held on the device."""
    held = tiny_params(tmp_path / "held", epochs=2, data_placement="device")
    streamed = tiny_params(tmp_path / "streamed", epochs=2, data_placement="stream")
    run(held)
    assert "stay in host memory" not in capsys.readouterr().out
    run(streamed)
    assert "stay in host memory; each batch is copied to cpu" in capsys.readouterr().out
    assert same_weights(
        weights(tmp_path / "held" / "models" / GENERATOR_FILE),
        weights(tmp_path / "streamed" / "models" / GENERATOR_FILE),
    )


def test_auto_placement_streams_only_what_does_not_fit_the_budget(tmp_path):
    from salgan.data import split_bytes, stream_from_host

    root = write_prepared(tmp_path, n_train=32, n_val=8, size=(64, 48))
    expected = (32 + 8) * (64 * 48 * 3 + 64 * 48)  # images and maps, uint8
    assert split_bytes(root, "train", "val") == expected
    gpu, cpu = torch.device("cuda"), torch.device("cpu")
    assert stream_from_host(expected, gpu, "auto", budget_gb=expected / 2**30 / 2)
    assert not stream_from_host(expected, gpu, "auto", budget_gb=expected / 2**30 * 2)
    assert not stream_from_host(expected, cpu, "auto", budget_gb=1e-9)  # on a CPU the host is the device
    assert stream_from_host(expected, cpu, "stream", None) and not stream_from_host(expected, gpu, "device", 1e-9)
    split = load_split(root, "train", cpu, stream=True)
    images, maps, fixations = split.take(torch.tensor([3, 1]))
    assert fixations is None  # loaded only for an NSS content-loss term
    assert images.shape == (2, 3, 48, 64) and maps.shape == (2, 1, 48, 64)
    assert torch.equal(images[1], split.images[1].permute(2, 0, 1).float() / 255)


def test_finished_run_does_nothing_more(tmp_path, capsys):
    params = tiny_params(tmp_path, epochs=1, bce_epochs=0)
    run(params)
    before = (tmp_path / "models" / GENERATOR_FILE).stat().st_mtime_ns
    run(params)
    assert "nothing to do" in capsys.readouterr().out
    assert (tmp_path / "models" / GENERATOR_FILE).stat().st_mtime_ns == before


def test_finished_run_restores_outputs_dvc_removed_without_training(tmp_path, capsys):
    """DVC deletes a stage's outputs before rerunning it: they come back from the checkpoint unchanged."""
    params = tiny_params(tmp_path, epochs=2)
    run(params)
    out = tmp_path / "models"
    generator, history, snapshots = weights(out / GENERATOR_FILE), (out / HISTORY_FILE).read_text(), snapshot_bytes(out)
    for path in [out / GENERATOR_FILE, out / HISTORY_FILE, *(out / "snapshots").iterdir()]:
        path.unlink()
    run(params)
    assert "outputs restored" in capsys.readouterr().out
    assert same_weights(weights(out / GENERATOR_FILE), generator)
    assert (out / HISTORY_FILE).read_text() == history
    assert snapshot_bytes(out) == snapshots


def test_new_data_trains_from_scratch(tmp_path, capsys):
    """Same settings, other prepared data: not 'finished', not resumed; the same weights as a fresh run."""
    params = tiny_params(tmp_path, epochs=2)
    run(params)
    out = tmp_path / "models"
    old_weights, old_snapshots = weights(out / GENERATOR_FILE), snapshot_bytes(out)
    write_prepared(tmp_path / "prepared", seed=7)  # the data changes under the same settings
    run(params)
    assert "made from other data" in capsys.readouterr().out
    new_weights = weights(out / GENERATOR_FILE)
    assert not same_weights(new_weights, old_weights)
    assert snapshot_bytes(out) != old_snapshots and len(snapshot_bytes(out)) == 2
    assert [h["epoch"] for h in json.loads((out / HISTORY_FILE).read_text())] == [1, 2]
    fresh = tiny_params(tmp_path / "fresh", epochs=2)
    write_prepared(tmp_path / "fresh" / "prepared", seed=7)
    run(fresh)
    assert same_weights(new_weights, weights(tmp_path / "fresh" / "models" / GENERATOR_FILE))


def test_an_interrupted_run_is_not_continued_on_new_data(tmp_path, capsys):
    params = tiny_params(tmp_path, epochs=10, bce_epochs=2)
    out = tmp_path / "models"
    kill_after_first_checkpoint(run_module(write_params(params, tmp_path / "p.yaml")), out)
    write_prepared(tmp_path / "prepared", seed=7)
    run(params)
    log = capsys.readouterr().out
    assert "made from other data" in log and "resuming" not in log
    assert [h["epoch"] for h in json.loads((out / HISTORY_FILE).read_text())] == list(range(1, 11))
    fresh = tiny_params(tmp_path / "fresh", epochs=10, bce_epochs=2)
    write_prepared(tmp_path / "fresh" / "prepared", seed=7)
    run(fresh)
    assert same_weights(weights(out / GENERATOR_FILE), weights(tmp_path / "fresh" / "models" / GENERATOR_FILE))


def test_new_training_code_trains_from_scratch(tmp_path, capsys, monkeypatch):
    params = tiny_params(tmp_path, epochs=1, bce_epochs=0)
    run(params)
    monkeypatch.setattr(train_module, "code_version", lambda: "edited-code")
    run(params)
    assert "made from other code" in capsys.readouterr().out


def test_changed_settings_start_a_new_run(tmp_path, capsys):
    run(tiny_params(tmp_path, epochs=1, bce_epochs=0))
    run(tiny_params(tmp_path, epochs=1, bce_epochs=0, alpha=0.5))
    assert "made from other settings" in capsys.readouterr().out


def test_an_unreadable_checkpoint_is_named_and_training_starts_afresh(tmp_path, capsys):
    params = tiny_params(tmp_path, epochs=1, bce_epochs=0)
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / CHECKPOINT_FILE).write_bytes(b"not a checkpoint")
    assert run(params) == 0
    assert f"{tmp_path / 'models' / CHECKPOINT_FILE}: unreadable" in capsys.readouterr().out


def test_sigkill_then_rerun_matches_an_uninterrupted_run(tmp_path):
    reference = tiny_params(tmp_path / "ref", epochs=10, bce_epochs=2)
    run(reference)
    params = tiny_params(tmp_path / "killed", epochs=10, bce_epochs=2)
    params_file = write_params(params, tmp_path / "killed.yaml")
    out = tmp_path / "killed" / "models"
    kill_after_first_checkpoint(run_module(params_file), out)
    assert run_module(params_file).wait() == 0
    assert same_weights(weights(tmp_path / "ref" / "models" / GENERATOR_FILE), weights(out / GENERATOR_FILE))
    history = json.loads((out / HISTORY_FILE).read_text())
    assert [h["epoch"] for h in history] == list(range(1, 11))
    assert snapshot_bytes(out) == snapshot_bytes(tmp_path / "ref" / "models")


def kill_after_first_checkpoint(process: subprocess.Popen, out: Path, epochs: int = 10) -> None:
    """SIGKILL the run's whole process group (torchrun and its workers too) once an epoch is saved."""
    deadline = time.time() + 300
    while not (out / CHECKPOINT_FILE).exists() and process.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    interrupted_at = checkpoint.load(out / CHECKPOINT_FILE)["epoch"]
    assert interrupted_at < epochs and not (out / GENERATOR_FILE).exists(), "the run finished before the kill"


# --- several processes ----------------------------------------------------------------------------------


@pytest.mark.slow
def test_two_gloo_processes_match_one_process_over_the_same_global_batch(tmp_path):
    one = tiny_params(tmp_path / "one", epochs=2, bce_epochs=1, batch_size=8, nproc=1)
    with on_one_cpu():
        run(one)
    two = tiny_params(tmp_path / "two", epochs=2, bce_epochs=1, batch_size=8, nproc=2)
    # salgan.train relaunches itself under torchrun --standalone --nproc-per-node=2 (gloo on the CPU)
    assert run_module(write_params(two, tmp_path / "two.yaml")).wait(timeout=300) == 0
    w1 = weights(tmp_path / "one" / "models" / GENERATOR_FILE)
    w2 = weights(tmp_path / "two" / "models" / GENERATOR_FILE)
    for key in w1:
        torch.testing.assert_close(w2[key], w1[key], rtol=1e-4, atol=1e-5)
    # AdaGrad's first step is lr * g / |g|: a gradient at rounding level moves a weight by a visible
    # fraction of lr whichever way rounding tips it, so the discriminator (lr 1e-3) gets atol 1e-4.
    d1 = checkpoint.load(tmp_path / "one" / "models" / CHECKPOINT_FILE)["discriminator"]
    d2 = checkpoint.load(tmp_path / "two" / "models" / CHECKPOINT_FILE)["discriminator"]
    for key in d1:
        torch.testing.assert_close(d2[key], d1[key], rtol=1e-4, atol=1e-4)


@pytest.mark.slow
def test_two_gloo_processes_resume_after_sigkill_as_if_never_stopped(tmp_path):
    settings = {"epochs": 6, "bce_epochs": 2, "batch_size": 8, "nproc": 2}
    reference = write_params(tiny_params(tmp_path / "ref", **settings), tmp_path / "ref.yaml")
    assert run_module(reference).wait(timeout=300) == 0
    params_file = write_params(tiny_params(tmp_path / "killed", **settings), tmp_path / "killed.yaml")
    out = tmp_path / "killed" / "models"
    # torchrun and both workers are in one process group, killed together as a lost node would be.
    kill_after_first_checkpoint(run_module(params_file), out, epochs=6)
    assert run_module(params_file).wait(timeout=300) == 0
    assert same_weights(weights(tmp_path / "ref" / "models" / GENERATOR_FILE), weights(out / GENERATOR_FILE))
    assert [h["epoch"] for h in json.loads((out / HISTORY_FILE).read_text())] == list(range(1, 7))


@pytest.mark.slow
def test_a_failing_rank_ends_every_rank_promptly_with_the_error(tmp_path):
    """Rank 0 cannot write the epoch's snapshot (its folder is a file): both ranks stop at once, naming it,
    instead of rank 1 waiting in a collective for the 30-minute timeout."""
    params = tiny_params(tmp_path, epochs=3, bce_epochs=1, nproc=2)
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "snapshots").write_text("in the way")
    process = run_module(write_params(params, tmp_path / "p.yaml"), stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    output, _ = process.communicate(timeout=240)
    text = output.decode()
    assert process.returncode != 0
    assert "rank 0 failed while writing the files of epoch 1" in text
    assert str(tmp_path / "models" / "snapshots") in text
    assert not (tmp_path / "models" / CHECKPOINT_FILE).exists()


def test_epoch_batches_are_a_fixed_partition_of_one_permutation():
    from torch.utils.data import DistributedSampler

    sampler = DistributedSampler(range(20), num_replicas=1, rank=0, shuffle=True, seed=0)
    batches = epoch_batches(sampler, 0, 8, torch.device("cpu"))
    assert [len(b) for b in batches] == [8, 8]
    assert len(set(torch.cat(batches).tolist())) == 16


def test_w_processes_take_the_global_batches_and_steps_of_one_for_any_n():
    """N=15 images, global batch 4: one process runs 3 batches and drops 3 images. Two ranks of 2 each
    (the sampler pads 15 to 16 with a repeated index) must run the same 3 global batches, not a 4th holding
    the padding's duplicate that would shift the G/D alternation."""
    from torch.utils.data import DistributedSampler

    for n in (15, 16, 17, 23):
        for epoch in range(3):
            one = epoch_batches(DistributedSampler(range(n), num_replicas=1, rank=0, seed=0), epoch, 4, CPU.device)
            ranks = [
                epoch_batches(DistributedSampler(range(n), num_replicas=2, rank=r, seed=0), epoch, 2, CPU.device)
                for r in (0, 1)
            ]
            assert len(one) == n // 4 and [len(r) for r in ranks] == [n // 4] * 2
            for k, batch in enumerate(one):
                global_batch = torch.cat([ranks[0][k], ranks[1][k]])
                assert sorted(global_batch.tolist()) == sorted(batch.tolist()), (n, epoch, k)
                assert len(set(global_batch.tolist())) == 4


@pytest.mark.slow
def test_two_gloo_processes_on_15_images_match_one_process_step_for_step(tmp_path):
    """15 images, batch 4: 3 steps an epoch for one process and for two, so the same weights and the same
    number of optimiser steps on each network."""
    settings = {"epochs": 2, "bce_epochs": 1, "batch_size": 4, "reset_optimizer_at_adversarial": False}
    one = tiny_params(tmp_path / "one", nproc=1, **settings)
    two = tiny_params(tmp_path / "two", nproc=2, **settings)
    for params in (one, two):
        write_prepared(Path(params.train.data), n_train=15)
    with on_one_cpu():
        run(one)
    assert run_module(write_params(two, tmp_path / "two.yaml")).wait(timeout=300) == 0
    states = [checkpoint.load(tmp_path / name / "models" / CHECKPOINT_FILE) for name in ("one", "two")]
    # G: 3 BCE steps, then D, G, D in the adversarial epoch (a 4th batch would have added a G step).
    for network, expected in (("opt_g", {4}), ("opt_d", {2})):
        for state in states:
            assert {int(s["step"]) for s in state[network]["state"].values()} == expected, network
    w1 = weights(tmp_path / "one" / "models" / GENERATOR_FILE)
    w2 = weights(tmp_path / "two" / "models" / GENERATOR_FILE)
    # Equal up to the order of float32 sums in the all-reduce. AdaGrad's normalised step (lr g / sqrt(sum
    # g^2 + eps)) can lift that noise on a near-zero gradient to ~1e-5, so: nearly every weight within 1e-5,
    # and none further than a hundredth of one step (lr 3e-3). Summed instead of averaged gradients, a
    # missed step or a shifted batch each move weights by ~lr.
    step = one.train.lr_generator
    far = total = 0
    for key in w1:
        difference = (w2[key] - w1[key]).abs()
        assert difference.max() <= step / 100, (key, difference.max())
        far, total = far + int((difference > 1e-5 + 1e-4 * w1[key].abs()).sum()), total + difference.numel()
    assert far <= total / 1000, (far, total)


def test_a_checkpoint_with_two_gpus_random_states_resumes_on_a_machine_without_any(tmp_path, capsys):
    """The checkpoint of a 2-GPU machine (one CUDA random state per device, as it used to be saved) is
    restored on this CPU-only machine: a finished run restores it, then puts back the generator DVC removed."""
    params = tiny_params(tmp_path, epochs=2, bce_epochs=1)
    run(params)
    out = tmp_path / "models"
    state = checkpoint.load(out / CHECKPOINT_FILE)
    assert set(state["rng"]) == {"torch"}  # on a CPU only the CPU's stream is saved
    state["rng"]["cuda"] = [torch.arange(16, dtype=torch.uint8), torch.arange(16, 32, dtype=torch.uint8)]
    checkpoint.save_atomic(state, out / CHECKPOINT_FILE)
    trained = weights(out / GENERATOR_FILE)
    (out / GENERATOR_FILE).unlink()
    assert run(params) == 0
    assert "outputs restored from the checkpoint" in capsys.readouterr().out
    assert same_weights(weights(out / GENERATOR_FILE), trained)
    assert torch.equal(torch.get_rng_state(), state["rng"]["torch"])


@pytest.mark.skipif(torch.cuda.device_count() != 1, reason="needs exactly one visible GPU")
def test_a_checkpoint_with_two_gpus_random_states_resumes_on_one_gpu(tmp_path):
    """Resuming restores only the current device's CUDA state: two saved states on one GPU are no error
    (a finished run restores its checkpoint too, before it finds nothing to do)."""
    params = tiny_params(tmp_path, epochs=1, bce_epochs=1, device="cuda")
    run(params)
    state = checkpoint.load(tmp_path / "models" / CHECKPOINT_FILE)
    first = torch.cuda.get_rng_state(0)
    state["rng"]["cuda"] = [first, torch.zeros_like(first)]
    checkpoint.save_atomic(state, tmp_path / "models" / CHECKPOINT_FILE)
    assert run(params) == 0
    assert torch.equal(torch.cuda.get_rng_state(0), first)
