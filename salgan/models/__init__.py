"""SalGAN models, the one builder that turns ``model`` settings into them, and the one reader of trained
weights (:func:`load_generator`, salgan/models/loading.py)."""

from __future__ import annotations

from pathlib import Path

import torch

from salgan import checkpoint
from salgan.encoder_table import ENCODERS, PAPER_INPUT_SIZE
from salgan.errors import InputError
from salgan.layout import sha256_file
from salgan.models.architecture import architecture_of, generator_from_state_dict
from salgan.models.discriminator import Discriminator
from salgan.models.generator import IMAGENET_MEAN, IMAGENET_STD, Generator
from salgan.models.loading import LoadedGenerator, ModelError, load_generator

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "ENCODERS",
    "Discriminator",
    "Generator",
    "LoadedGenerator",
    "ModelError",
    "architecture_of",
    "build_discriminator",
    "build_generator",
    "generator_from_state_dict",
    "imagenet_weights_url",
    "load_encoder_weights",
    "load_generator",
    "model_cost",
]


class EncoderWeightsError(InputError):
    """Encoder weights could not be found or do not fit the encoder."""


def build_generator(model_params, log_prior: torch.Tensor | None = None) -> Generator:
    """Generator from ``model`` settings: encoder, width, encoder weights (imagenet | none | path), frozen
    blocks; with ``model.output: density`` a density model (salgan/models/density.py) holding ``log_prior``,
    the (H, W) centre-bias log-prior (None: none)."""
    if getattr(model_params, "output", "map") == "density":
        from salgan.models.density import DensityGenerator

        prior = None if log_prior is None else list(log_prior.shape[-2:])
        generator = DensityGenerator(
            model_params.width,
            model_params.encoder,
            prior=prior,
            blur=model_params.density_blur,
            decoder_init=model_params.decoder_init,
        )
        if log_prior is not None:
            generator.set_log_prior(log_prior)
    else:
        generator = Generator(
            width=model_params.width, encoder=model_params.encoder, decoder_init=model_params.decoder_init
        )
    if model_params.encoder_weights != "none":
        load_encoder_weights(generator, model_params.encoder_weights)
        generator.freeze_blocks(model_params.freeze_blocks)
    return generator


def build_discriminator(model_params, input_size: tuple[int, int]) -> Discriminator:
    return Discriminator(
        input_size=input_size,
        first_pool=model_params.discriminator_first_pool,
        weight_norm=model_params.discriminator_weight_norm,
        weight_norm_gain=model_params.discriminator_weight_norm_gain,
        image_input=model_params.discriminator_image,
        width=model_params.discriminator_width,
    )


def load_encoder_weights(generator: Generator, source: str) -> None:
    """Copy a torchvision classification network's weights into the encoder.

    ``source`` is ``imagenet`` (the DEFAULT ImageNet weights of torchvision's builder for the generator's
    encoder, through torch.hub's cache) or a path to a state_dict of that torchvision network (for VGG16
    ``features.N.weight``, bare ``N.weight`` keys are accepted too). The classifier (``classifier.``,
    ``fc.``) is dropped. Loaded with weights_only=True.
    """
    name = generator.encoder_name
    if source == "imagenet":
        state = _imagenet_state_dict(name)
    else:
        path = Path(source)
        if not path.is_file():
            raise EncoderWeightsError(f"model.encoder_weights: no such file {path}")
        state = _read_weights(path)
    encoder_state = {k: v for k, v in state.items() if not k.startswith(("classifier.", "fc."))}
    if name == "vgg16":
        encoder_state = {k.removeprefix("features."): v for k, v in encoder_state.items()}
    expected = generator.encoder.state_dict()
    missing = [key for key in expected if key not in encoder_state]
    if missing:
        raise EncoderWeightsError(
            f"{source}: encoder weights lack layer {missing[0]} (torchvision's {name} layout, model.encoder)"
        )
    for key, tensor in expected.items():
        if encoder_state[key].shape != tensor.shape:
            raise EncoderWeightsError(
                f"{source}: layer encoder.{key} has shape {tuple(encoder_state[key].shape)}, "
                f"the encoder expects {tuple(tensor.shape)} ({name}, model.width {generator.width})"
            )
    generator.encoder.load_state_dict({k: encoder_state[k] for k in expected})


def imagenet_weights_url(encoder: str) -> str:
    """The download address of torchvision's DEFAULT ImageNet weights for ``encoder`` (VGG16: IMAGENET1K_V1,
    the weights the paper starts from)."""
    import torchvision

    return torchvision.models.get_model_weights(encoder).DEFAULT.url


def _read_weights(path: Path) -> dict[str, torch.Tensor]:
    """A state_dict read with ``weights_only=True``: a file holding pickled code is refused, never run."""
    try:
        state = checkpoint.load(path)
    except Exception as exc:  # UnpicklingError for code, others for damage: either way not weights
        raise EncoderWeightsError(f"{path}: not a weights file ({type(exc).__name__}: {exc})") from None
    if not isinstance(state, dict):
        raise EncoderWeightsError(f"{path}: expected a state_dict, got {type(state).__name__}")
    return state


def _imagenet_state_dict(encoder: str) -> dict[str, torch.Tensor]:
    """torchvision's ImageNet weights for ``encoder`` from torch.hub's cache (downloaded there if the network
    allows), checked against the sha256 prefix torchvision publishes in the file name before they are read,
    and read with ``weights_only=True``: a crafted file placed there is refused, not unpickled."""
    url = imagenet_weights_url(encoder)
    file = url.rsplit("/", 1)[1]
    path = Path(torch.hub.get_dir()) / "checkpoints" / file
    prefix = file.rsplit("-", 1)[1].split(".")[0]  # vgg16-397923af.pth -> 397923af
    if not path.is_file():
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            torch.hub.download_url_to_file(url, str(path), hash_prefix=prefix, progress=True)
        except Exception as exc:  # URLError, socket errors, SSL errors, a wrong hash: all mean "not usable"
            raise EncoderWeightsError(
                f"ImageNet {encoder} weights are not cached and could not be downloaded ({exc}). "
                f"Download {url} on a machine with network access and put it at {path} "
                f"(set TORCH_HOME to use another cache folder), or set model.encoder_weights to a local {encoder} "
                "state_dict file, or to none."
            ) from None
    digest = sha256_file(path)
    if not digest.startswith(prefix):
        raise EncoderWeightsError(
            f"{path}: sha256 {digest[:16]}... does not start with {prefix}, the hash torchvision publishes for "
            f"{file}; the file is not torchvision's: replace it with {url}"
        )
    return _read_weights(path)


def model_cost(generator: Generator, size: tuple[int, int] = PAPER_INPUT_SIZE) -> dict[str, float]:
    """Parameters (millions) and forward GFLOPs per ``size`` image (W x H; 256x192, the paper's input,
    by default): 2 FLOPs per multiply-add of each convolution and linear layer (``torch.utils.flop_counter``'s
    convention), counted by forward hooks on one pass of a zero image on the model's own device. A pass on
    the meta device would cost no compute, but torch runs meta elementwise ops through Python references
    whose first use imports ``torch._dynamo``: 1.5 s, far more than this pass at the widths a CPU runs."""
    flops = 0

    def count(module: torch.nn.Module, _inputs, output: torch.Tensor) -> None:
        nonlocal flops
        per_output = module.weight[0].numel() if isinstance(module, torch.nn.Conv2d) else module.in_features
        flops += 2 * output.numel() * per_output  # a Conv2d weight row is Cin/groups x kh x kw

    layers = [m for m in generator.modules() if isinstance(m, torch.nn.Conv2d | torch.nn.Linear)]
    hooks = [layer.register_forward_hook(count) for layer in layers]
    weight = next(generator.parameters())
    was_training = generator.training
    try:
        with torch.no_grad():
            generator.eval()(torch.zeros(1, 3, size[1], size[0], dtype=weight.dtype, device=weight.device))
    finally:
        generator.train(was_training)
        for hook in hooks:
            hook.remove()
    params = sum(p.numel() for p in generator.parameters())
    return {"params_m": params / 1e6, "gflops": flops / 1e9}
