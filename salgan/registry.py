"""``salgan registry list|promote``: the registry's versions, and the promotion gate on today's data and code.

The registry itself (registration, the alias policy and the comparison) is :mod:`salgan.tracking.registry`;
this module wires the gate to the prepared data, the evaluate stage's scoring and salgan's own model loader
(:class:`Judge`, :func:`gate`), which the command and the retraining flow use.
"""

from __future__ import annotations

import argparse
import functools
import logging
import math
from pathlib import Path
from typing import TYPE_CHECKING

from salgan.cli import command_parser, run_command
from salgan.errors import ConfigError, InputError
from salgan.layout import LOGGED_WEIGHTS, sha256_file
from salgan.metrics import METRIC_NAMES
from salgan.settings import Params, load_params
from salgan.tracking import fingerprint
from salgan.tracking import lock as registry_locks
from salgan.tracking.registry import Opened, Unloadable, check_min_delta, describe, list_versions, promote
from salgan.urls import redact_text

if TYPE_CHECKING:
    from salgan.evaluate import RawImages

log = logging.getLogger(__name__)


class Judge:
    """Opens versions with salgan's loader and values them under today's fingerprint (``train.data``)."""

    def __init__(self, params: Params, name: str):
        self.params, self.name = params, name
        self._inputs: tuple | None = None
        self._floor: dict[str, float] | None = None

    @functools.cached_property
    def common(self) -> dict:
        """Today's fingerprint fields: the prepared splits' versions, the scoring settings and code."""

        data = Path(self.params.train.data)
        for split in ("train", "val"):
            if not (data / split).is_dir():
                raise InputError(
                    f"{data / split}: no prepared {split} split; the gate values versions on today's data, so run "
                    "it where the prepared data is (dvc repro prepare, or dvc pull)"
                )
        return fingerprint.today(self.params)

    def open(self, version) -> Opened:
        """The version's generator read as ``salgan predict`` reads a model (weights only, salgan's format),
        its pyfunc loader checked to be salgan's own, its weights hashed."""
        from salgan.models import ModelError, load_generator
        from salgan.tracking.models import fetched_model

        uri = f"models:/{self.name}/{version.version}"
        try:
            with fetched_model(uri, self.params) as local:
                generator, size = load_generator(local)
                salgan_pyfunc_only(local)
                weights = sha256_file(local / LOGGED_WEIGHTS)
        except ModelError as exc:
            raise Unloadable(f"version {version.version} cannot be opened by salgan's loader: {exc}") from None
        except Exception as exc:  # MlflowException, botocore and HTTP errors alike: it cannot be fetched
            raise Unloadable(
                f"version {version.version} cannot be fetched: {type(exc).__name__}: {redact_text(str(exc))}"
            ) from None
        return Opened(generator, (int(size[0]), int(size[1])), weights)

    def inputs(self) -> tuple:
        """The val split and the arguments every score of it shares, loaded once."""
        if self._inputs is None:
            from salgan.evaluate import scoring_inputs

            self._inputs = scoring_inputs(self.params)
        return self._inputs

    def score(self, opened: Opened) -> dict[str, float]:
        from salgan.evaluate import input_size, score_generator

        val, common = self.inputs()
        images = None if input_size(val) == opened.input_size else self.images_at(opened.input_size)
        size = f"{opened.input_size[0]}x{opened.input_size[1]}"
        log.info("scoring %s at %s under today's settings and code", opened.weights_sha256[:12], size)
        return score_generator(opened.generator, self.params, val, common, images)[1]

    def images_at(self, size: tuple[int, int]) -> RawImages:
        """The val images at ``size``, decoded from the raw tree (``prepare.input``) as prepare decodes them."""
        from salgan.evaluate import val_images_at

        return val_images_at(self.params, self.inputs()[0].names, size)

    def floor(self) -> dict[str, float]:
        if self._floor is None:
            from salgan.evaluate import centre_bias_scores

            self._floor = centre_bias_scores(self.params, *self.inputs())
        return self._floor


def salgan_pyfunc_only(folder: Path) -> None:
    """MLmodel's only flavour is salgan's pyfunc (``loader_module: salgan.serving``): what
    ``mlflow.pyfunc.load_model("models:/salgan@champion")`` then runs is the installed salgan, nothing the
    model brings (a pickle, another loader)."""
    from salgan.models.loading import ModelError, read_mlmodel

    flavors = read_mlmodel(folder).get("flavors")
    loader = (flavors or {}).get("python_function", {}).get("loader_module") if isinstance(flavors, dict) else None
    if loader != "salgan.serving" or set(flavors) != {"python_function"}:
        named = sorted(flavors) if isinstance(flavors, dict) else flavors
        raise ModelError(
            f"{folder}: MLmodel's pyfunc loader is {loader!r} with flavours {named}; salgan's models have only "
            "the python_function flavour with loader_module salgan.serving"
        )


def gate(
    params: Params,
    metric: str = "nss",
    min_delta: float = 0.0,
    name: str | None = None,
    version: str | int | None = None,
    floor: bool = True,
) -> dict:
    """:func:`salgan.tracking.registry.promote` of ``version`` (default: the challenger) against the champion,
    both opened here and valued under today's fingerprint (``train.data``, the settings, the code), under
    the registry's lock (:mod:`salgan.tracking.lock`)."""
    from salgan.tracking.store import client, tracking_uri

    metric, min_delta = check_metric(metric), check_min_delta(min_delta)  # before anything is loaded
    uri = tracking_uri(params)
    name = name or params.mlflow.model_name
    return promote(
        client(params),
        name,
        Judge(params, name),
        metric,
        min_delta,
        version,
        floor,
        lock=lambda: registry_locks.registry_lock(uri),
    )


def check_metric(metric: str) -> str:
    """``metric`` if it is one of the metrics evaluate scores; else :class:`ConfigError` (exit status 2)."""
    if metric not in METRIC_NAMES:
        raise ConfigError(f"metric must be one of {', '.join(METRIC_NAMES)}, got {metric!r}")
    return metric


def _min_delta(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not math.isfinite(value) or value < 0:
        raise argparse.ArgumentTypeError(f"must be finite and >= 0, got {text!r}")
    return value


def main(argv: list[str] | None = None) -> int:
    """``salgan registry list|promote`` (exit statuses: salgan/cli.py; a refused version: 1)."""

    parser = command_parser(
        "registry",
        "The MLflow model registry of SalGAN versions. The tracking URI is MLFLOW_TRACKING_URI when set, else "
        "mlflow.tracking_uri in params.yaml (its defaults where there is no params.yaml).",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    listing = sub.add_parser("list", help="versions, aliases and key metrics as a table")
    listing.add_argument("--name", help="registered model name (default: mlflow.model_name)")
    promoting = sub.add_parser(
        "promote",
        help="move the champion alias to a version when it beats the champion on a metric, both opened with "
        "salgan's loader and valued under today's data, settings and code (train.data; a version scored under "
        "another fingerprint is scored again)",
    )
    promoting.add_argument("--name", help="registered model name (default: mlflow.model_name)")
    promoting.add_argument("--version", type=int, help="the version to promote (default: the challenger alias's)")
    promoting.add_argument("--metric", default="nss", help="metric to compare (default: nss; kld: lower wins)")
    promoting.add_argument(
        "--min-delta", type=_min_delta, default=0.0, help="required improvement, strictly exceeded (default: 0)"
    )
    promoting.add_argument(
        "--no-floor",
        action="store_true",
        help="let a first champion through even if it does not beat the centre-bias baseline",
    )
    args = parser.parse_args(argv)

    def work() -> int:
        from salgan.tracking.store import client

        params = load_params(args.params, require_all=False) if Path(args.params).is_file() else Params()
        name = args.name or params.mlflow.model_name
        if args.command == "list":
            print(list_versions(client(params), name))
            return 0
        result = gate(params, args.metric, args.min_delta, name, args.version, floor=not args.no_floor)
        print(describe(result))
        return 1 if result["decision"] == "refused" else 0

    return run_command("registry", work)


if __name__ == "__main__":
    raise SystemExit(main())
