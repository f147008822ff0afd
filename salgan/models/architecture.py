"""What a generator's weights say it is: the architecture entry of a state_dict, checked against what salgan
builds before anything is built, and the generator (a map or a density model) built from it."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator

import torch
from torch.overrides import TorchFunctionMode

from salgan.encoder_table import ENCODERS, MAX_WIDTH
from salgan.models.density import DensityGenerator, density_architecture
from salgan.models.generator import Generator


def architecture_of(state_dict: dict[str, torch.Tensor]) -> dict:
    """``{"encoder": ..., "width": ...}`` (and a density model's fields) of a generator state_dict: its
    ``architecture`` entry, checked against the encoders salgan builds and ``MAX_WIDTH`` before anything is built."""
    try:
        found = json.loads(bytes(state_dict["architecture"].tolist()).decode())
        architecture = {"encoder": str(found["encoder"]), "width": float(found["width"])}
    except KeyError:
        raise ValueError("not a SalGAN generator state_dict: no 'architecture' entry") from None
    except (ValueError, TypeError, AttributeError):
        raise ValueError("not a SalGAN generator state_dict: unreadable 'architecture' entry") from None
    architecture |= _output_fields(found)
    # A crafted entry must not name another network or a huge width.
    if architecture["encoder"] not in ENCODERS or not 0 < architecture["width"] <= MAX_WIDTH:
        raise ValueError(f"not a SalGAN generator state_dict: architecture {architecture} is not one salgan builds")
    return architecture


def _output_fields(found: dict) -> dict:
    """The output kind recorded beside encoder and width (``model.output: density``, salgan/models/density.py),
    each field checked before anything is built; ``{}`` for a map model."""
    try:
        return density_architecture(found)
    except ValueError as exc:
        raise ValueError(f"not a SalGAN generator state_dict: {exc}") from None


def build_architecture(architecture: dict) -> Generator:
    """The untrained generator of a checked architecture: a map model, or a density model
    (salgan/models/density.py) when it records ``output: density``."""
    if architecture.get("output", "map") == "density":
        return DensityGenerator(**architecture)
    return Generator(**architecture)


# torch's random initialisers, as named in torch.nn.init and on Tensor
RANDOM_INITS = frozenset(
    ("normal_", "uniform_", "trunc_normal_", "kaiming_normal_", "kaiming_uniform_", "xavier_normal_",
     "xavier_uniform_", "orthogonal_")
)  # fmt: skip


class _NoRandomInitOnMeta(TorchFunctionMode):
    """Random initialisers leave a meta tensor as it is. A meta tensor has no values to draw, yet ``normal_``
    on one runs torch's Python decompositions, whose first use imports torch._dynamo: 1.3 s of every
    process that checks a generator's weights (evaluate, predict, the gate, serving), for nothing."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        target = args[0] if args else kwargs.get("tensor")
        if getattr(func, "__name__", "") in RANDOM_INITS and isinstance(target, torch.Tensor) and target.is_meta:
            return target
        return func(*args, **kwargs)


@contextlib.contextmanager
def on_meta() -> Iterator[None]:
    """Modules built here live on the meta device (shapes, no memory), their random initialisation skipped."""
    with torch.device("meta"), _NoRandomInitOnMeta():
        yield


def checked_architecture(state_dict: dict[str, torch.Tensor]) -> dict:
    """:func:`architecture_of`, and every tensor of ``state_dict`` with the name and shape the generator of
    that architecture has: compared against one built on the meta device (no memory), before any generator
    is built. The one check behind every way of building a generator from weights."""
    architecture = architecture_of(state_dict)
    with on_meta():
        expected = {
            k: tuple(v.shape) for k, v in build_architecture(architecture).state_dict().items() if k != "architecture"
        }
    given = {k: v for k, v in state_dict.items() if k != "architecture"}
    missing, extra = sorted(set(expected) - set(given)), sorted(set(given) - set(expected))
    if missing or extra:
        which = f"lacks {missing[0]}" if missing else f"has an unexpected entry {extra[0]!r}"
        raise ValueError(f"not a SalGAN generator state_dict: {which} ({architecture})")
    for key, shape in expected.items():
        found = tuple(given[key].shape) if isinstance(given[key], torch.Tensor) else None
        if found != shape:
            raise ValueError(
                f"not a SalGAN generator state_dict: {key} has shape {found}, {architecture} needs {shape}"
            )
    return architecture


def generator_from_state_dict(state_dict: dict[str, torch.Tensor]) -> Generator:
    """The generator a state_dict was saved from, built from the architecture it records once every tensor's
    shape fits it (:func:`checked_architecture`), weights loaded strictly."""
    if not isinstance(state_dict, dict):
        raise ValueError(f"not a SalGAN generator state_dict: a {type(state_dict).__name__}")
    generator = build_architecture(checked_architecture(state_dict))
    generator.load_state_dict(state_dict)
    return generator
