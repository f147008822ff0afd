"""SalGAN models and the one builder that turns ``model`` settings into them."""

from __future__ import annotations

from pathlib import Path

import torch

from salgan.errors import InputError
from salgan.layout import sha256_file
from salgan.models.discriminator import Discriminator
from salgan.models.generator import IMAGENET_MEAN, IMAGENET_STD, Generator, infer_width

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "Discriminator",
    "Generator",
    "build_discriminator",
    "build_generator",
    "infer_width",
    "load_encoder_weights",
    "load_generator",
]

VGG16_IMAGENET_FILE = "vgg16-397923af.pth"
VGG16_IMAGENET_URL = f"https://download.pytorch.org/models/{VGG16_IMAGENET_FILE}"


class EncoderWeightsError(InputError):
    """Encoder weights could not be found or do not fit the encoder."""


def build_generator(model_params) -> Generator:
    """Generator from ``model`` settings: width, encoder weights (imagenet | none | path), frozen blocks."""
    generator = Generator(width=model_params.width)
    if model_params.encoder_weights != "none":
        load_encoder_weights(generator, model_params.encoder_weights)
        generator.freeze_blocks(model_params.freeze_blocks)
    return generator


def build_discriminator(model_params, input_size: tuple[int, int]) -> Discriminator:
    return Discriminator(
        input_size=input_size,
        first_pool=model_params.discriminator_first_pool,
        weight_norm=model_params.discriminator_weight_norm,
    )


def load_encoder_weights(generator: Generator, source: str) -> None:
    """Copy VGG16 conv weights into the encoder.

    ``source`` is ``imagenet`` (torchvision's VGG16_Weights.IMAGENET1K_V1 through torchvision's cache)
    or a path to a state_dict in torchvision's VGG16 layout (``features.N.weight``; bare ``N.weight``
    keys are accepted too). Loaded with weights_only=True.
    """
    if source == "imagenet":
        state = _imagenet_state_dict()
    else:
        path = Path(source)
        if not path.is_file():
            raise EncoderWeightsError(f"model.encoder_weights: no such file {path}")
        state = _read_weights(path)
    encoder_state = {k.removeprefix("features."): v for k, v in state.items() if not k.startswith("classifier.")}
    expected = generator.encoder.state_dict()
    missing = sorted(set(expected) - set(encoder_state), key=_layer_order)
    if missing:
        raise EncoderWeightsError(f"{source}: encoder weights lack layer {missing[0]} (VGG16 features layout)")
    for key, tensor in expected.items():
        if encoder_state[key].shape != tensor.shape:
            raise EncoderWeightsError(
                f"{source}: layer encoder.{key} has shape {tuple(encoder_state[key].shape)}, "
                f"the encoder expects {tuple(tensor.shape)} (model.width {generator.width})"
            )
    generator.encoder.load_state_dict({k: encoder_state[k] for k in expected})


def _layer_order(key: str) -> int:
    return int(key.split(".")[0])


def _read_weights(path: Path) -> dict[str, torch.Tensor]:
    """A state_dict read with ``weights_only=True``: a file holding pickled code is refused, never run."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # UnpicklingError for code, others for damage: either way not weights
        raise EncoderWeightsError(f"{path}: not a weights file ({type(exc).__name__}: {exc})") from None
    if not isinstance(state, dict):
        raise EncoderWeightsError(f"{path}: expected a state_dict, got {type(state).__name__}")
    return state


def _imagenet_state_dict() -> dict[str, torch.Tensor]:
    """torchvision's VGG16 ImageNet weights from torch.hub's cache (downloaded there if the network allows),
    checked against the sha256 prefix torchvision publishes in the file name before they are read, and read
    with ``weights_only=True``: a crafted file placed there is refused, not unpickled."""
    path = Path(torch.hub.get_dir()) / "checkpoints" / VGG16_IMAGENET_FILE
    prefix = VGG16_IMAGENET_FILE.split("-")[1].split(".")[0]  # vgg16-397923af.pth -> 397923af
    if not path.is_file():
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            torch.hub.download_url_to_file(VGG16_IMAGENET_URL, str(path), hash_prefix=prefix, progress=True)
        except Exception as exc:  # URLError, socket errors, SSL errors, a wrong hash: all mean "not usable"
            raise EncoderWeightsError(
                f"ImageNet VGG16 weights are not cached and could not be downloaded ({exc}). "
                f"Download {VGG16_IMAGENET_URL} on a machine with network access and put it at {path} "
                "(set TORCH_HOME to use another cache folder), or set model.encoder_weights to a local VGG16 "
                "state_dict file, or to none."
            ) from None
    digest = sha256_file(path)
    if not digest.startswith(prefix):
        raise EncoderWeightsError(
            f"{path}: sha256 {digest[:16]}... does not start with {prefix}, the hash torchvision publishes for "
            f"{VGG16_IMAGENET_FILE}; the file is not torchvision's: replace it with {VGG16_IMAGENET_URL}"
        )
    return _read_weights(path)


def load_generator(path: str | Path, map_location: str | torch.device = "cpu") -> Generator:
    """A trained generator from a plain state_dict file (the train stage's models/generator.pt)."""
    state = torch.load(path, map_location=map_location, weights_only=True)
    generator = Generator(width=infer_width(state))
    generator.load_state_dict(state)
    return generator.eval()
