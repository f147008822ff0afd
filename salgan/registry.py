"""``salgan registry list|promote``: the registry's versions, and the promotion gate, from the shell.

The registry itself (registration, the alias policy and the gate) is :mod:`salgan.tracking.registry`.
"""

from __future__ import annotations

from pathlib import Path

from salgan.settings import Params, load_params


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

        from salgan.tracking.registry import describe, gate, list_versions
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
