"""Typed, validated settings: params.yaml is the only place settings live.

Each pipeline stage reads its own section. Loading rejects unknown keys and ill-typed values with an
error that names the key (``train.batch_size: expected int, got 'big'``), in the spirit of nanoGPT's
configurator but with real types. Only the standard library is used at import time so the training
core runs where only torch is installed; PyYAML is imported when a file is read.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

DEFAULT_PARAMS_FILE = "params.yaml"


class ConfigError(ValueError):
    """A settings file or override is invalid; the message names the offending key."""


@dataclass
class DownloadParams:
    """Where the raw SALICON tree comes from (REFERENCE §2) and where it lands."""

    # sample | salicon | s3://bucket/prefix | a local directory (zips or an extracted tree)
    source: str = "sample"
    fixations_edition: Literal["2015", "2017"] = "2017"
    output: str = "data/raw"
    cache_dir: str = "data/downloads"
    sample_train: int = 160
    sample_val: int = 48
    sample_test: int = 16
    sample_seed: int = 0


@dataclass
class PrepareParams:
    """Resizing of images and maps into arrays that train without decoding."""

    input: str = "data/raw"
    output: str = "data/prepared"
    size: list[int] = field(default_factory=lambda: [256, 192])  # W x H, the paper's 256x192
    skip_bad: bool = False
    workers: int = 0  # 0: one process per core


@dataclass
class ModelParams:
    """SalGAN generator and discriminator (Pan et al. 2017, REFERENCE §1)."""

    encoder_weights: str = "imagenet"  # imagenet | none | path to a VGG16 state_dict
    freeze_blocks: int = 3  # VGG blocks frozen from the input side; the paper freezes conv1-conv3
    width: float = 1.0  # channel multiplier; 1.0 is VGG16
    discriminator_first_pool: Literal[2, 4] = 4  # 4 in the original code, 2 in the paper's table
    discriminator_weight_norm: bool = True  # weight norm on conv3_1/conv3_2 as the original code; not in the paper


@dataclass
class TrainParams:
    """BCE pre-training then adversarial training (seed paper Eqs. 1-3)."""

    data: str = "data/prepared"
    output: str = "models"
    epochs: int = 100
    bce_epochs: int = 15
    batch_size: int = 32  # global batch, split across processes
    lr_generator: float = 3e-4
    lr_discriminator: float = 3e-4
    weight_decay: float = 1e-4  # the paper's L2 1e-4 (the original code computes it but never adds it)
    decay_biases: bool = False  # false: weights only, as Lasagne's l2 regularisation
    adagrad_epsilon: float = 1e-6  # Lasagne's: step lr * g / sqrt(sum g^2 + eps); 0 gives PyTorch's 1e-10 outside
    alpha: float = 0.05  # weight of the content loss; 1/20 in the original code
    adversarial_schedule: Literal["alternate", "both"] = "alternate"  # alternate: one batch to D, the next to G
    reset_optimizer_at_adversarial: bool = True  # a fresh G optimiser for the adversarial phase, as the original
    discriminator_loss: Literal["mean", "sum"] = "mean"  # mean of the real and fake BCE (original) or their sum
    content_downsample: int = 4  # BCE on maps average-pooled 4x4 (paper Table 2)
    seed: int = 0
    nproc: int | Literal["auto"] = "auto"  # auto: every visible GPU, 1 on CPU
    device: Literal["auto", "cpu", "cuda"] = "auto"
    snapshot_image: int = 0  # index of the val image saved every epoch (seed paper Fig. 3)
    compile: bool = False  # torch.compile the models (checkpoint keys unchanged)


@dataclass
class EvaluateParams:
    """Validation scoring at the original resolution (REFERENCE §3)."""

    output: str = "reports"
    batch_size: int = 16
    n_splits: int = 100  # AUC-Borji / sAUC resampling
    sauc_other_images: int = 10  # sAUC negatives: fixations of this many other images
    center_bias_sigma: float = 0.25  # centre-bias baseline, in units of the image diagonal
    ig_baseline_sigma: float = 0.05  # blur of the training-fixation density that IG is measured against
    grid_images: int = 6


@dataclass
class PredictParams:
    """Test-split prediction at the original resolution, as the original scripts/utils.py."""

    output: str = "outputs/test_maps"
    batch_size: int = 16
    blur_size: int = 5  # Gaussian blur kernel after the bicubic resize; 0 disables it


@dataclass
class PackageParams:
    """Submission archive for the SALICON challenge server."""

    format: Literal["2017", "2015"] = "2017"
    algorithm: str = "salgan"
    output: str = "outputs/submission"  # a folder: the archive and manifest.json beside it


@dataclass
class MlflowParams:
    """Tracking and registry; MLFLOW_TRACKING_URI overrides the embedded sqlite default."""

    enabled: bool = True
    tracking_uri: str = "sqlite:///mlflow.db"
    experiment: str = "salgan"
    model_name: str = "salgan"


@dataclass
class Params:
    download: DownloadParams = field(default_factory=DownloadParams)
    prepare: PrepareParams = field(default_factory=PrepareParams)
    model: ModelParams = field(default_factory=ModelParams)
    train: TrainParams = field(default_factory=TrainParams)
    evaluate: EvaluateParams = field(default_factory=EvaluateParams)
    predict: PredictParams = field(default_factory=PredictParams)
    package: PackageParams = field(default_factory=PackageParams)
    mlflow: MlflowParams = field(default_factory=MlflowParams)


def _coerce(value: Any, annotation: Any, key: str) -> Any:
    """Check ``value`` against a field annotation; return it (ints widened to float)."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        for option in typing.get_args(annotation):
            try:
                return _coerce(value, option, key)
            except ConfigError:
                continue
        raise ConfigError(f"{key}: expected {_describe(annotation)}, got {value!r}")
    if origin is Literal:
        if value in typing.get_args(annotation) and type(value) in {type(a) for a in typing.get_args(annotation)}:
            return value
        raise ConfigError(f"{key}: expected one of {list(typing.get_args(annotation))}, got {value!r}")
    if origin is list:
        (item_type,) = typing.get_args(annotation)
        if not isinstance(value, list):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        return [_coerce(v, item_type, f"{key}[{i}]") for i, v in enumerate(value)]
    if dataclasses.is_dataclass(annotation):
        return _build(annotation, value, key)
    if annotation is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if annotation is bool or annotation is int:
        if type(value) is annotation:
            return value
    elif isinstance(value, annotation):
        return value
    raise ConfigError(f"{key}: expected {_describe(annotation)}, got {value!r}")


def _describe(annotation: Any) -> str:
    return getattr(annotation, "__name__", None) or str(annotation).replace("typing.", "")


def _build(cls: type, data: Any, prefix: str) -> Any:
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{prefix or 'params'}: expected a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        where = f"{prefix}." if prefix else ""
        raise ConfigError(f"unknown key {where}{unknown[0]} (known: {', '.join(sorted(names))})")
    values = {k: _coerce(v, hints[k], f"{prefix}.{k}" if prefix else k) for k, v in data.items()}
    return cls(**values)


def params_from_dict(data: dict | None) -> Params:
    """Build validated :class:`Params` from a plain mapping (missing keys take their defaults)."""
    params = _build(Params, data, "")
    check_consistency(params)
    return params


def check_consistency(params: Params) -> None:
    """Cross-key rules that a type alone cannot express."""
    model, train = params.model, params.train
    if model.encoder_weights == "imagenet" and model.width != 1.0:
        raise ConfigError(
            f"model.width: ImageNet VGG16 weights need width 1.0, got {model.width}; "
            "use model.encoder_weights: none for narrower models"
        )
    if model.width <= 0:
        raise ConfigError(f"model.width: must be positive, got {model.width}")
    if not 0 <= model.freeze_blocks <= 5:
        raise ConfigError(f"model.freeze_blocks: must be 0-5, got {model.freeze_blocks}")
    if len(params.prepare.size) != 2 or any(s % 16 or s <= 0 for s in params.prepare.size):
        raise ConfigError(f"prepare.size: expected [W, H], positive multiples of 16, got {params.prepare.size}")
    if not 0 <= train.bce_epochs <= train.epochs:
        raise ConfigError(f"train.bce_epochs: must be between 0 and train.epochs, got {train.bce_epochs}")
    if train.batch_size < 1:
        raise ConfigError(f"train.batch_size: must be at least 1, got {train.batch_size}")
    if train.content_downsample < 1:
        raise ConfigError(f"train.content_downsample: must be at least 1, got {train.content_downsample}")
    if train.adagrad_epsilon < 0 or train.weight_decay < 0:
        key = "adagrad_epsilon" if train.adagrad_epsilon < 0 else "weight_decay"
        raise ConfigError(f"train.{key}: must not be negative, got {getattr(train, key)}")
    if isinstance(train.nproc, int) and train.nproc < 1:
        raise ConfigError(f"train.nproc: must be 'auto' or at least 1, got {train.nproc}")


def load_params(path: str | Path = DEFAULT_PARAMS_FILE) -> Params:
    """Read and validate a params.yaml; errors name the file and the key."""
    import yaml

    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such params file") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    try:
        return params_from_dict(data)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None


def to_dict(params: Any) -> dict:
    """The resolved settings as plain data (for checkpoints, manifests and MLflow)."""
    return dataclasses.asdict(params)


def flatten(data: dict, prefix: str = "") -> dict[str, Any]:
    """``{'train': {'alpha': 0.05}}`` -> ``{'train.alpha': 0.05}``."""
    flat: dict[str, Any] = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten(value, f"{name}."))
        else:
            flat[name] = value
    return flat
