"""``salgan registry list|promote``: the registry's versions, and the promotion gate on the current data.

The registry itself (registration, the alias policy and the comparison) is :mod:`salgan.tracking.registry`;
this module wires the gate to the prepared data and the evaluate stage's scoring (:func:`gate`), which the
command and the retraining flow use.
"""

from __future__ import annotations

from pathlib import Path

from salgan.settings import Params, load_params
from salgan.tracking.registry import Rescore, promote


def gate(params: Params, metric: str = "nss", min_delta: float = 0.0, name: str | None = None) -> dict:
    """:func:`promote` on the val split in ``train.data`` (scoring again any side measured on other data).

    Without a prepared val split the tags are compared as recorded, if they are on the same data.
    """
    from mlflow import MlflowClient

    from salgan.layout import split_version
    from salgan.tracking.store import configure

    client = MlflowClient(configure(params))
    name = name or params.mlflow.model_name
    if not (Path(params.train.data) / "val").is_dir():
        return promote(client, name, metric, min_delta)
    return promote(client, name, metric, min_delta, split_version(params.train.data, "val"), _rescorer(params, name))


def _rescorer(params: Params, name: str) -> Rescore:
    """Score a registered version on the current val split with the evaluate stage's code."""
    inputs: list = []

    def rescore(version: str) -> dict[str, float]:
        from salgan.evaluate import score_generator, scoring_inputs
        from salgan.predict import load_model

        if not inputs:
            inputs.extend(scoring_inputs(params))  # the val arrays and IG baseline, loaded once
        generator, _ = load_model(f"models:/{name}/{version}", params, None)
        print(f"scoring version {version} of {name} on the current val split")
        return score_generator(generator, params, *inputs)[1]

    return rescore


def main(argv: list[str] | None = None) -> int:
    """``salgan registry list|promote`` (exit statuses: salgan/cli.py)."""
    from salgan.cli import command_parser, run_command

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
        help="move the champion alias to the challenger when it is better on a metric, both measured on the "
        "current val split (train.data; a version scored on older data is scored again)",
    )
    promoting.add_argument("--name", help="registered model name (default: mlflow.model_name)")
    promoting.add_argument("--metric", default="nss", help="metric tag to compare (default: nss; kld: lower wins)")
    promoting.add_argument(
        "--min-delta", type=float, default=0.0, help="required improvement, strictly exceeded (default: 0)"
    )
    args = parser.parse_args(argv)

    def work() -> int:
        from mlflow import MlflowClient

        from salgan.tracking.registry import describe, list_versions
        from salgan.tracking.store import configure

        params = load_params(args.params, require_all=False) if Path(args.params).is_file() else Params()
        name = args.name or params.mlflow.model_name
        if args.command == "list":
            print(list_versions(MlflowClient(configure(params)), name))
        else:
            print(describe(gate(params, args.metric, args.min_delta, name)))
        return 0

    return run_command("registry", work)


if __name__ == "__main__":
    raise SystemExit(main())
