"""The typed schema of params.yaml: every setting, its type, its limits and its default, in one place.

params.yaml is the only place a pipeline's settings live; this module says what it may hold. Each stage
reads its own section (:class:`Params` ``.download``, ``.prepare``, ...). Loading a file rejects unknown
keys, ill-typed values, values out of range and missing keys, with the file, the key and the reason
(``params.yaml: train.batch_size: expected an integer, got 'big'``); the rules that tie keys together
are here too (:meth:`Params.check_rules`). The defaults below are the offline default that params.yaml
holds (a test keeps the two equal); the paper's values are in profiles/salicon-gpu.yaml and docs/model.md.

The same schema checks every override, whichever way it arrives (``-S key=value`` on a command line, a
Prefect flow's ``overrides`` parameter, an ablation arm): :func:`validate_overrides` accepts only known
``section.key`` names and values of the declared type, and :func:`override_args` writes them for
``dvc exp run`` so that DVC's Hydra parser reads plain values, never syntax (see Trust boundaries in
DESIGN.md).
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from salgan.encoder_table import ENCODERS, MAX_WIDTH, MIN_STRIDE, STAGES, size_problem, width_problem
from salgan.errors import ConfigError
from salgan.urls import redact_text, remember_secrets

__all__ = ["ConfigError", "Params", "load_params", "override_args", "params_from_dict", "validate_overrides"]

DEFAULT_PARAMS_FILE = "params.yaml"
ALGORITHM_NAME = r"[A-Za-z0-9_.-]+"  # goes into file names inside the 2015 submission


class Section(BaseModel):
    """A params.yaml section: unknown keys are errors, values must have their declared type (an int is
    accepted where a float is declared, nothing else is converted)."""

    model_config = ConfigDict(extra="forbid", strict=True, validate_default=True)


PositiveInt = Annotated[int, Field(ge=1)]

# Trust classes (docs/security.md, DESIGN's Trust boundaries): what a flow or deployment parameter, or an
# ablation profile from outside the checkout, may do to a setting; salgan/trust.py enforces them.
KNOB = "knob"  # a training or scoring setting: may be set within its range
PLACE = "place"  # a path the stages read or write: must resolve inside the workspace
HOST = "host"  # a server, store, registry name or file from elsewhere: only where the operator allows the key
LIMIT = "limit"  # a bound on what an input may cost: may be lowered, never raised
TRUST_CLASSES = (KNOB, PLACE, HOST, LIMIT)
MAX_BATCH = 4096  # batch sizes: far above any GPU's, far below what exhausts a host
MAX_SAMPLE_IMAGES = 100_000  # per split of the generated sample: 10x SALICON's train split
MAX_WORKERS = 256  # prepare.workers, processes
MAX_NPROC = 64  # train.nproc, processes per node


def trust(kind: str, safe_values: tuple[str, ...] = (), scores: bool = False) -> Any:
    """A field's trust class, as ``Annotated[type, trust(KNOB)]`` (in its JSON schema as ``trust``). A
    host's ``safe_values`` name no host (``model.encoder_weights: none``) and are set as knobs. ``scores``
    marks a setting that changes a validation score: the promotion gate's fingerprint holds every such
    setting (:func:`scoring_keys`), so a new one cannot be left out of it."""
    return Field(json_schema_extra={"trust": kind, "safe_values": list(safe_values), "scores": scores})


DATASETS = ("salicon", "mit1003", "cat2000", "fixations_csv")  # the raw layouts salgan/datasets/ reads


class DownloadParams(Section):
    """Which dataset (its raw layout, salgan/datasets/), where it comes from, and where it lands."""

    # salicon (docs/reference.md §2) | mit1003 | cat2000 | fixations_csv (docs/datasets.md)
    dataset: Annotated[Literal[DATASETS], trust(KNOB)] = "salicon"
    # sample | salicon | mit1003 | cat2000 | s3://bucket/prefix | https://host/prefix | a local directory or zip
    source: Annotated[str, trust(HOST, ("sample", "salicon", "mit1003", "cat2000"))] = "sample"
    fixations_edition: Annotated[Literal["2015", "2017"], trust(KNOB)] = "2017"
    output: Annotated[str, trust(PLACE)] = "data/raw"
    cache_dir: Annotated[str, trust(HOST)] = "data/downloads"  # may be shared by checkouts
    sample_train: Annotated[PositiveInt, trust(KNOB)] = Field(default=240, le=MAX_SAMPLE_IMAGES)
    sample_val: Annotated[PositiveInt, trust(KNOB)] = Field(default=48, le=MAX_SAMPLE_IMAGES)
    sample_test: Annotated[PositiveInt, trust(KNOB)] = Field(default=24, le=MAX_SAMPLE_IMAGES)
    sample_seed: Annotated[int, trust(KNOB)] = 0
    # an archive entry inflating past this is refused (SALICON's: < 1 MB)
    max_entry_bytes: Annotated[PositiveInt, trust(LIMIT)] = 256 << 20
    # a larger ratio, of one entry or of a whole archive, is a zip bomb, not JPEGs or PNGs
    max_compression_ratio: Annotated[float, trust(LIMIT)] = Field(default=200.0, gt=1)
    # all the entries of one archive together (SALICON's largest, images.zip, holds 3 GB)
    max_archive_bytes: Annotated[PositiveInt, trust(LIMIT)] = 16 << 30
    max_archive_entries: Annotated[PositiveInt, trust(LIMIT)] = 100_000  # SALICON's largest: 20,000 files
    # datasets without an official val split: this fraction of the labelled images, drawn with split_seed
    val_fraction: Annotated[float, trust(KNOB)] = Field(default=0.1, gt=0, le=0.5)
    split_seed: Annotated[int, trust(KNOB)] = 0
    # the test split of a dataset without one: none | mit300 (the benchmark's images) | a folder, zip or URL
    test_source: Annotated[str, trust(HOST, ("none", "mit300"))] = "none"

    @field_validator("source", "test_source")
    @classmethod
    def _no_credentials(cls, source: str) -> str:
        """Credentials in a URL would end up in dvc.lock, MLflow and every message: refuse them here."""
        if "://" in source:
            parts = urlsplit(source)
            if parts.username or parts.password:
                raise ValueError(
                    "a URL with credentials (user:password@) is not allowed here; use the standard "
                    "settings (AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY, ~/.netrc) instead"
                )
        return source


class PrepareParams(Section):
    """Resizing of images and maps into arrays that train without decoding."""

    input: Annotated[str, trust(PLACE)] = "data/raw"
    output: Annotated[str, trust(PLACE)] = "data/prepared"
    # W x H; the paper uses 256x192
    size: Annotated[list[int], trust(KNOB)] = Field(default=[128, 96], min_length=2, max_length=2)
    skip_bad: Annotated[bool, trust(KNOB)] = False
    workers: Annotated[int, trust(KNOB)] = Field(default=0, ge=0, le=MAX_WORKERS)  # 0: one per core
    # an image or map declaring more is refused (SALICON's are 0.3 MP)
    max_pixels: Annotated[PositiveInt, trust(LIMIT)] = 50_000_000
    # per fixation file, all observers (SALICON has a few hundred)
    max_fixations: Annotated[PositiveInt, trust(LIMIT)] = 100_000
    # fixations_csv: the Gaussian of the maps made from fixations, in px at 640x480 (SALICON's 19), scaled
    # with each image's diagonal
    map_sigma: Annotated[float, trust(KNOB)] = Field(default=19.0, gt=0, le=1000)

    @field_validator("size")
    @classmethod
    def _multiples_of_the_stride(cls, size: list[int]) -> list[int]:
        if any(side <= 0 or side % MIN_STRIDE for side in size):
            raise ValueError(
                f"expected [W, H], positive multiples of {MIN_STRIDE} (the generator's four poolings), got {size}"
            )
        return size


class ModelParams(Section):
    """SalGAN generator and discriminator (Pan et al. 2017, docs/reference.md §1)."""

    # vgg16: the paper; the others (torchvision builders, skip decoder) are docs/model.md's "Encoders and losses"
    encoder: Annotated[Literal[ENCODERS], trust(KNOB)] = "vgg16"  # salgan/encoder_table.py
    # imagenet | none | path to a state_dict of torchvision's model.encoder
    encoder_weights: Annotated[str, trust(HOST, ("imagenet", "none"))] = "none"
    # encoder stages frozen from the input side; the paper: 3
    freeze_blocks: Annotated[int, trust(KNOB)] = Field(default=0, ge=0, le=STAGES)
    # channel multiplier (vgg16, mobilenet_v3_large); 1.0: as published
    width: Annotated[float, trust(KNOB)] = Field(default=0.125, gt=0, le=MAX_WIDTH)
    # D's conv channels (32, 64) times this; 1.0: as published. Not tied to width: D is the same for every G
    discriminator_width: Annotated[float, trust(KNOB)] = Field(default=0.25, gt=0, le=MAX_WIDTH)
    discriminator_first_pool: Annotated[Literal[2, 4], trust(KNOB)] = 4  # 4 in the original code, 2 in the paper's
    # weight norm on conv3_1/conv3_2 as the original code; not in the paper
    discriminator_weight_norm: Annotated[bool, trust(KNOB)] = True
    # fixed: g = 1 as the original; trainable: PyTorch's weight norm
    discriminator_weight_norm_gain: Annotated[Literal["fixed", "trainable"], trust(KNOB)] = "fixed"
    # raw: 0-255, the original; or ImageNet mean/std
    discriminator_image: Annotated[Literal["raw", "normalised"], trust(KNOB)] = "normalised"
    # VGG16 decoder: glorot, the original (Lasagne's default); or He
    decoder_init: Annotated[Literal["glorot", "he"], trust(KNOB)] = "he"
    # start from this generator's weights and architecture (fine-tuning): none | models:/NAME@ALIAS |
    # models:/NAME/N | runs:/ID/model | a weights file; encoder, width and encoder_weights then come from it
    init_from: Annotated[str, trust(HOST, ("none",))] = "none"
    # map: the paper's sigmoid map; density: a log-density over pixels (Kümmerer et al. 2018; models/density.py)
    output: Annotated[Literal["map", "density"], trust(KNOB)] = "map"
    # density: the centre-bias log-prior fitted on the train fixations, blurred with this fraction of the
    # image diagonal (as evaluate.ig_baseline_sigma); null: no prior
    density_prior_sigma: Annotated[float | None, trust(KNOB)] = Field(default=0.05, gt=0, le=1)
    density_blur: Annotated[bool, trust(KNOB)] = False  # density: a learned Gaussian blur of the logits


class TrainParams(Section):
    """BCE pre-training then adversarial training (seed paper Eqs. 1-3)."""

    data: Annotated[str, trust(PLACE)] = "data/prepared"
    output: Annotated[str, trust(PLACE)] = "models"
    epochs: Annotated[PositiveInt, trust(KNOB)] = 16
    bce_epochs: Annotated[int, trust(KNOB)] = Field(default=10, ge=0)
    batch_size: Annotated[PositiveInt, trust(KNOB)] = Field(default=8, le=MAX_BATCH)  # global, split across processes
    # the adversarial phase's (and the BCE phase's without lr_bce)
    lr_generator: Annotated[float, trust(KNOB)] = Field(default=5e-5, gt=0)
    lr_discriminator: Annotated[float, trust(KNOB)] = Field(default=1e-2, gt=0)
    # the paper's L2 1e-4; the original computes it, never adds it
    weight_decay: Annotated[float, trust(KNOB)] = Field(default=0.0, ge=0)
    decay_biases: Annotated[bool, trust(KNOB)] = False  # false: weights only, as Lasagne's l2 regularisation
    # Lasagne's: lr g / sqrt(sum g^2 + eps); 0: PyTorch's form
    adagrad_epsilon: Annotated[float, trust(KNOB)] = Field(default=1e-6, ge=0)
    # weight of the content loss in G's adversarial loss; 1/20 in the original code, 20 offline (params.yaml)
    alpha: Annotated[float, trust(KNOB)] = Field(default=20.0, ge=0)
    # both: D steps then a G step on every batch; alternate (the original): one batch to D, the next to G
    adversarial_schedule: Annotated[Literal["alternate", "both"], trust(KNOB)] = "both"
    # a fresh G optimiser for the adversarial phase, as the original
    reset_optimizer_at_adversarial: Annotated[bool, trust(KNOB)] = True
    # BCE phase: AdaGrad (paper) | the original's Nesterov
    bce_optimizer: Annotated[Literal["adagrad", "nesterov"], trust(KNOB)] = "adagrad"
    # the BCE phase's learning rate; null: lr_generator
    lr_bce: Annotated[float | None, trust(KNOB)] = Field(default=3e-3, gt=0)
    # Nesterov momentum (0.5 in the original's BCE script)
    bce_momentum: Annotated[float, trust(KNOB)] = Field(default=0.5, ge=0, lt=1)
    # D updates per G update (1 in the original)
    d_steps_per_g: Annotated[PositiveInt, trust(KNOB)] = Field(default=8, le=64)
    # the adversarial G lr rises linearly over this many G updates
    g_warmup_steps: Annotated[int, trust(KNOB)] = Field(default=0, ge=0)
    # the first N val images: D's accuracy etc. each adversarial epoch
    diagnostics_images: Annotated[PositiveInt, trust(KNOB)] = Field(default=64, le=4096)
    # each of D's training pairs mirrored left-right (image and map together) with probability 1/2
    discriminator_flip: Annotated[bool, trust(KNOB)] = True
    # mean of the real and fake BCE (original) or their sum
    discriminator_loss: Annotated[Literal["mean", "sum"], trust(KNOB)] = "mean"
    content_downsample: Annotated[PositiveInt, trust(KNOB)] = 4  # BCE on maps average-pooled 4x4 (paper Table 2)
    # bce (the paper) or a weighted sum of metric terms, e.g. {kld: 1.0, cc: -0.2, nss: -0.1} (SAM's loss)
    # nll: the fixations' negative log-likelihood under the map as a density (nats per fixation)
    content_loss: Annotated[Literal["bce"] | dict[Literal["bce", "kld", "cc", "nss", "nll"], float], trust(KNOB)] = (
        "bce"
    )
    seed: Annotated[int, trust(KNOB)] = 0
    # auto: every visible GPU, 1 on CPU
    nproc: Annotated[Annotated[int, Field(ge=1, le=MAX_NPROC)] | Literal["auto"], trust(KNOB)] = "auto"
    device: Annotated[Literal["auto", "cpu", "cuda"], trust(KNOB)] = "auto"
    # index of the val image saved every epoch (seed paper Fig. 3)
    snapshot_image: Annotated[int, trust(KNOB)] = Field(default=0, ge=0)
    compile: Annotated[bool, trust(KNOB)] = False  # torch.compile the models (checkpoint keys unchanged)
    # Where the prepared train and val splits live while training: on the device (batches sliced there), or
    # in pinned host memory with each batch copied over while the previous one computes (stream). auto:
    # the device when both splits fit data_budget_gb, else stream.
    data_placement: Annotated[Literal["auto", "device", "stream"], trust(KNOB)] = "auto"
    # null: half the free memory torch reports
    data_budget_gb: Annotated[float | None, trust(KNOB)] = Field(default=None, gt=0)


class EvaluateParams(Section):
    """Validation scoring at the original resolution (docs/reference.md §3)."""

    output: Annotated[str, trust(PLACE)] = "reports"
    batch_size: Annotated[PositiveInt, trust(KNOB)] = Field(default=16, le=MAX_BATCH)
    # AUC-Borji / sAUC resampling
    n_splits: Annotated[PositiveInt, trust(KNOB, scores=True)] = Field(default=100, le=10_000)
    # sAUC negatives: fixations of this many other images
    sauc_other_images: Annotated[PositiveInt, trust(KNOB, scores=True)] = Field(default=10, le=1000)
    # the centre-bias baseline (the first champion's floor), in units of the image diagonal
    center_bias_sigma: Annotated[float, trust(KNOB, scores=True)] = Field(default=0.25, gt=0)
    # blur of the training-fixation density for IG
    ig_baseline_sigma: Annotated[float, trust(KNOB, scores=True)] = Field(default=0.05, gt=0)
    grid_images: Annotated[PositiveInt, trust(KNOB)] = Field(default=6, le=100)
    # density models: also score each metric on its own derived map (Kümmerer et al. 2018)
    metric_maps: Annotated[bool, trust(KNOB, scores=True)] = False


class PredictParams(Section):
    """Test-split prediction at the original resolution, as the original scripts/utils.py."""

    output: Annotated[str, trust(PLACE)] = "outputs/test_maps"
    batch_size: Annotated[PositiveInt, trust(KNOB)] = Field(default=16, le=MAX_BATCH)
    # Gaussian blur kernel after the bicubic resize; 0 disables it; shrunk to fit a smaller map
    blur_size: Annotated[int, trust(KNOB, scores=True)] = Field(default=5, ge=0, le=99)
    # salgan predict's inputs declaring more pixels are skipped, named
    max_pixels: Annotated[PositiveInt, trust(LIMIT)] = 50_000_000
    # metric maps of a density model: the ground-truth maps' Gaussian (px at the original size; salicon-api's
    # 19), which the CC, KLD and SIM maps blur the density with
    metric_map_sigma: Annotated[float, trust(KNOB, scores=True)] = Field(default=19.0, gt=0, le=1000)
    # the SIM map: fixations per simulated ground-truth map it is optimised against
    sim_fixations: Annotated[PositiveInt, trust(KNOB, scores=True)] = Field(default=100, le=100_000)

    @field_validator("blur_size")
    @classmethod
    def _odd(cls, size: int) -> int:
        if size > 1 and size % 2 == 0:
            raise ValueError(f"a Gaussian kernel needs an odd size (or 0 for no blur), got {size}")
        return size


class PackageParams(Section):
    """Submission archive: the SALICON challenge server's, or the MIT/Tuebingen benchmark's."""

    # 2017 | 2015 (SALICON) | mit-tuebingen (maps for the MIT/Tuebingen benchmark) | mit-tuebingen-density (one
    # .npy log-density per test image; model.output density)
    format: Annotated[Literal["2017", "2015", "mit-tuebingen", "mit-tuebingen-density"], trust(KNOB)] = "2017"
    # letters, digits, _ - .
    algorithm: Annotated[str, trust(KNOB)] = Field(default="salgan", pattern=f"^{ALGORITHM_NAME}$")
    output: Annotated[str, trust(PLACE)] = "outputs/submission"  # a folder: the archive and manifest.json beside it


class MlflowParams(Section):
    """Tracking and registry; MLFLOW_TRACKING_URI overrides the embedded sqlite default."""

    enabled: Annotated[bool, trust(HOST)] = True
    tracking_uri: Annotated[str, trust(HOST)] = "sqlite:///mlflow.db"
    experiment: Annotated[str, trust(HOST)] = "salgan"
    model_name: Annotated[str, trust(HOST)] = "salgan"


class Params(Section):
    """params.yaml: one section per stage."""

    download: DownloadParams = Field(default_factory=DownloadParams)
    prepare: PrepareParams = Field(default_factory=PrepareParams)
    model: ModelParams = Field(default_factory=ModelParams)
    train: TrainParams = Field(default_factory=TrainParams)
    evaluate: EvaluateParams = Field(default_factory=EvaluateParams)
    predict: PredictParams = Field(default_factory=PredictParams)
    package: PackageParams = Field(default_factory=PackageParams)
    mlflow: MlflowParams = Field(default_factory=MlflowParams)

    @model_validator(mode="after")
    def check_rules(self) -> Params:
        """Rules between keys, each raising with the key it is about."""
        model, train = self.model, self.train
        if model.encoder_weights == "imagenet" and model.width != 1.0:
            raise _RuleError(
                "model.width",
                f"ImageNet {model.encoder} weights need width 1.0, got {model.width}; "
                "use encoder_weights none for narrower",
            )
        problem = width_problem(model.encoder, model.width)
        if problem:
            raise _RuleError("model.width", problem)
        problem = size_problem(model.encoder, self.prepare.size)
        if problem:
            raise _RuleError("prepare.size", problem)
        if isinstance(train.content_loss, dict) and not any(train.content_loss.values()):
            raise _RuleError("train.content_loss", f"needs at least one non-zero weight, got {train.content_loss}")
        if model.freeze_blocks and model.encoder_weights == "none" and model.init_from == "none":
            raise _RuleError(
                "model.freeze_blocks",
                "freezing needs pretrained encoder weights (or model.init_from), encoder_weights is none",
            )
        if train.bce_optimizer == "nesterov" and not train.reset_optimizer_at_adversarial:
            raise _RuleError(
                "train.reset_optimizer_at_adversarial",
                "the adversarial phase's AdaGrad cannot carry on the state of a Nesterov BCE phase "
                "(train.bce_optimizer nesterov); expected true",
            )
        if train.bce_epochs > train.epochs:
            raise _RuleError("train.bce_epochs", f"must not exceed train.epochs {train.epochs}, got {train.bce_epochs}")
        self._check_density_rules()
        return self

    def _check_density_rules(self) -> None:
        """A density model trains without BCE (a density is no map in (0, 1) to compare pixel by pixel); metric
        maps and the density submission need one."""
        loss = self.train.content_loss
        if self.model.output == "density" and (loss == "bce" or (isinstance(loss, dict) and loss.get("bce"))):
            raise _RuleError(
                "train.content_loss",
                f"model.output density trains on nll, kld, cc or nss, not bce; got {loss!r} (try {{nll: 1.0}})",
            )
        if self.model.output != "density":
            if self.evaluate.metric_maps:
                raise _RuleError("evaluate.metric_maps", "metric-specific maps need model.output density")
            if self.package.format == "mit-tuebingen-density":
                raise _RuleError("package.format", "mit-tuebingen-density needs model.output density")


class _RuleError(ValueError):
    """A cross-key rule failed; carries the key so the message can name it like a type error."""

    def __init__(self, key: str, reason: str):
        super().__init__(f"{key}: {reason}")
        self.key, self.reason = key, reason


# --- reading and writing --------------------------------------------------------------------------------


def params_from_dict(data: Mapping | None) -> Params:
    """Validated :class:`Params` from a plain mapping; missing keys take their defaults (code and tests
    build settings this way; files go through :func:`load_params`, which wants every key)."""
    try:
        params = Params.model_validate(dict(data or {}))
    except ValidationError as exc:
        raise ConfigError(_describe(exc)) from None
    for url in (params.download.source, params.download.test_source, params.mlflow.tracking_uri):
        remember_secrets(url)  # a signed source's signature is redacted from every later message and record
    return params


# params.yaml is read as DVC reads and writes it (ruamel, YAML 1.2): after `dvc exp run -S` it may hold
# floats without a dot (1e-06) and plain strings that YAML 1.1 takes for other types (yes, off, 12:30). With
# PyYAML's YAML 1.1 rules a float setting would refuse its own file and a string would turn into a bool
# or an int; so booleans are true/false only, numbers have no base 60, and exponents need no dot.
_YAML_1_2_SCALARS = (
    ("tag:yaml.org,2002:bool", r"^(?:true|True|TRUE|false|False|FALSE)$", "tTfF"),
    ("tag:yaml.org,2002:int", r"^[-+]?(?:0b[0-1_]+|0[0-7_]+|0|[1-9][0-9_]*|0x[0-9a-fA-F_]+)$", "-+0123456789"),
    (
        "tag:yaml.org,2002:float",
        r"^(?:[-+]?(?:[0-9][0-9_]*(?:\.[0-9_]*)?|\.[0-9_]+)(?:[eE][-+]?[0-9]+)?|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$",
        "-+0123456789.",
    ),
)


def read_yaml(text: str) -> Any:
    """``text`` read as params.yaml is everywhere: safe, with YAML 1.2's booleans and numbers (above)."""
    import yaml

    class Loader(yaml.SafeLoader):
        yaml_implicit_resolvers = {
            first: [(tag, rule) for tag, rule in rules if tag.rsplit(":", 1)[-1] not in ("bool", "int", "float")]
            for first, rules in yaml.SafeLoader.yaml_implicit_resolvers.items()
        }

    for tag, rule, first in _YAML_1_2_SCALARS:
        Loader.add_implicit_resolver(tag, re.compile(rule), list(first))
    return yaml.load(text, Loader=Loader)  # noqa: S506 -- a SafeLoader subclass


def load_params(path: str | Path = DEFAULT_PARAMS_FILE, require_all: bool = True) -> Params:
    """Read and validate a params file; errors name the file and the key.

    With ``require_all`` (stages, whose keys DVC tracks) every key of the schema must be in the file: a
    missing key is an error naming it and its default, never a silent default.
    """
    import yaml

    path = Path(path)
    try:
        data = read_yaml(path.read_text()) or {}
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such params file") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of sections, got {type(data).__name__}")
    try:
        params = params_from_dict(data)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None
    if require_all:
        missing = sorted(set(flatten(to_dict(Params()))) - set(flatten(data)))
        if missing:
            default = flatten(to_dict(Params()))[missing[0]]
            more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
            raise ConfigError(f"{path}: missing key {missing[0]}{more}; add it (default: {default!r})")
    return params


def to_dict(params: BaseModel) -> dict:
    """The resolved settings as plain data."""
    return params.model_dump(mode="python")


def to_record(params: Params) -> dict:
    """The resolved settings as stored outside params.yaml (checkpoints, MLflow): every URL redacted, since a
    signed ``download.source`` carries its signature in the query string."""
    flat = flatten(to_dict(params))
    return nest({key: redact_text(value) if isinstance(value, str) else value for key, value in flat.items()})


def flatten(data: Mapping) -> dict[str, Any]:
    """``{'train': {'alpha': 0.05}}`` -> ``{'train.alpha': 0.05}``: sections to ``section.key``; a value that
    is itself a mapping (``train.content_loss: {kld: 1.0}``) stays one value, and ``section.key`` entries
    pass unchanged."""
    flat: dict[str, Any] = {}
    for key, value in data.items():
        if isinstance(value, Mapping) and "." not in str(key):
            flat.update({f"{key}.{name}": item for name, item in value.items()})
        else:
            flat[key] = value
    return flat


def nest(flat: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """``{'train.alpha': 0.05}`` -> ``{'train': {'alpha': 0.05}}`` (the inverse of :func:`flatten`)."""
    nested: dict[str, dict[str, Any]] = {}
    for key, value in flat.items():
        section, _, name = key.partition(".")
        nested.setdefault(section, {})[name] = value
    return nested


def scoring_keys() -> list[str]:
    """``section.key`` of every setting marked ``scores`` (:func:`trust`), in schema order."""
    keys = []
    for section, field in Params.model_fields.items():
        for name, info in field.annotation.model_fields.items():
            if isinstance(info.json_schema_extra, dict) and info.json_schema_extra.get("scores"):
                keys.append(f"{section}.{name}")
    return keys


def validate_section(section: type[Section], values: Mapping, prefix: str = "") -> Section:
    """One section's values checked as params.yaml's are (what a command-line option sets, an override);
    the error is ``prefix`` + ``key: reason``."""
    try:
        return section.model_validate(dict(values))
    except ValidationError as exc:
        raise ConfigError(f"{prefix}{_describe(exc)}") from None


def _describe(exc: ValidationError) -> str:
    """The first problem of a pydantic error as ``key: reason``, union alternatives merged."""
    first = exc.errors()[0]
    # Of a union's alternatives, the one that got furthest into the value says most (a mapping given for
    # train.content_loss is wrong in one of its keys, not in being a mapping instead of 'bce').
    deeper = [e for e in exc.errors() if _key(e["loc"]).startswith(_key(first["loc"]) + ".")]
    first = max(deeper, key=lambda e: len(_key(e["loc"])), default=first)
    context = first.get("ctx") or {}
    if isinstance(context.get("error"), _RuleError):
        return str(context["error"])
    key = _key(first["loc"])
    same = [e for e in exc.errors() if _key(e["loc"]) == key]
    if first["type"] == "extra_forbidden":  # the unknown key as written, whatever characters it holds
        section = _key(first["loc"][:-1])
        key = ".".join(filter(None, (section, str(first["loc"][-1]))))
        known = _known_keys(section)
        return f"unknown key {key}" + (f" (known: {', '.join(known)})" if known else "")
    reasons = "; or ".join(dict.fromkeys(_reason(e) for e in same))
    if first["type"] == "value_error":  # our own validators' messages already quote the value
        return f"{key}: {reasons}"
    return f"{key}: {reasons}, got {first['input']!r}"


def _key(loc: tuple) -> str:
    """``('train', 'nproc', 'int')`` -> ``train.nproc``; ``('prepare', 'size', 1)`` -> ``prepare.size[1]``."""
    names: list[str] = []
    for part in loc:
        if isinstance(part, int):
            names[-1] += f"[{part}]"
        elif re.fullmatch(r"[a-z_0-9]+", part):
            names.append(part)
    return ".".join(names)


def _reason(error: dict) -> str:
    message = error["msg"]
    return message[len("Value error, ") :] if message.startswith("Value error, ") else message[0].lower() + message[1:]


def _known_keys(section: str) -> list[str]:
    model: type[BaseModel] = Params
    for name in filter(None, section.split(".")):
        annotation = model.model_fields.get(name)
        if annotation is None or not isinstance(annotation.annotation, type):
            return []
        model = annotation.annotation
    return sorted(model.model_fields)


# --- overrides ------------------------------------------------------------------------------------------

# Strings are passed to DVC single-quoted, where Hydra's grammar still reads quotes, escapes and ${...}
# interpolation; a string holding any of them (or a control character) is refused rather than escaped.
_SYNTAX_IN_STRINGS = re.compile(r"[$'\"\\\x00-\x1f]")
_KEY = re.compile(r"[a-z_]+\.[a-z_0-9]+")


def validate_overrides(overrides: Mapping[str, Any] | None, base: Params | None = None) -> dict[str, Any]:
    """``{"train.epochs": 5}`` or ``{"train": {"epochs": 5}}`` checked against the schema, flattened.

    Only ``section.key`` names of params.yaml are accepted (no ``file:`` prefix, no Hydra ``+``/``~``
    forms), with values of the declared type and range; with ``base`` (the settings they will apply to)
    the result must also pass the rules between keys. Strings may not hold characters that DVC's override
    grammar reads as syntax (``${...}`` interpolation among them). Returns the values as validated (an int
    given for a float comes back a float). Raises :class:`ConfigError` naming the key and the reason.
    """
    flat = flatten(overrides or {})
    known = flatten(to_dict(Params()))
    for key, value in flat.items():
        if not isinstance(key, str) or not _KEY.fullmatch(key):
            raise ConfigError(f"override {key!r}: expected section.key of params.yaml, such as train.epochs")
        if key not in known:
            raise ConfigError(f"override {key}: unknown key (params.yaml has no {key})")
        _check_plain(key, value)
    checked = {
        section: validate_section(Params.model_fields[section].annotation, values, f"override {section}.")
        for section, values in nest(flat).items()
    }
    if base is not None:
        try:
            params_from_dict(nest(flatten(to_dict(base)) | flat))
        except ConfigError as exc:
            raise ConfigError(f"override {exc}") from None
    return {key: getattr(checked[key.partition(".")[0]], key.partition(".")[2]) for key in flat}


def _check_plain(key: str, value: Any) -> None:
    """A value DVC will read back as the same plain value: a number, a bool, a safe string, or a list or
    mapping of them."""
    if isinstance(value, Mapping):
        for name, item in value.items():
            _check_plain(key, name)
            _check_plain(key, item)
    elif isinstance(value, list):
        for item in value:
            _check_plain(key, item)
    elif isinstance(value, str):
        if _SYNTAX_IN_STRINGS.search(value) or value != value.strip() or not value:
            raise ConfigError(
                f"override {key}: {value!r} holds characters DVC would read as override syntax (quotes, "
                "backslashes, $ for interpolation) or control characters; set such a value in params.yaml"
            )
    elif isinstance(value, float) and not math.isfinite(value):
        raise ConfigError(f"override {key}: expected a finite number, got {value!r}")
    elif value is not None and not isinstance(value, bool | int | float):
        raise ConfigError(f"override {key}: expected a number, a bool, a string or a list, got {value!r}")


def override_args(overrides: Mapping[str, Any] | None) -> list[str]:
    """``-S key=value`` arguments for ``dvc exp run``, values validated and written in DVC's grammar."""
    args: list[str] = []
    for key, value in validate_overrides(overrides).items():
        args += ["-S", f"{key}={_encode(value)}"]
    return args


def _encode(value: Any) -> str:
    """``value`` in the override grammar of DVC (Hydra), read back as exactly ``value``: null for None,
    floats in repr's shortest exact form, strings quoted."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list):
        return "[" + ",".join(_encode(item) for item in value) + "]"
    if isinstance(value, Mapping):
        return "{" + ",".join(f"{name}:{_encode(item)}" for name, item in value.items()) + "}"
    if isinstance(value, str):
        return f"'{value}'"  # quoted: 'none', '2017' and 'true' stay strings
    return repr(value)


def parse_override(text: str) -> tuple[str, Any]:
    """``"train.epochs=5"`` -> ``("train.epochs", 5)``; the value is read as YAML, as params.yaml is."""
    import yaml

    key, sep, raw = text.partition("=")
    if not sep or not key:
        raise ConfigError(f"-S expects KEY=VALUE, got {text!r}")
    try:
        value = read_yaml(raw)
    except yaml.YAMLError as exc:
        raise ConfigError(f"-S {text!r}: the value is not valid YAML ({exc})") from None
    return key.strip(), value
