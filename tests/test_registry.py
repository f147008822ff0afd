"""Champion/challenger promotion on a real sqlite registry with real (tiny) registered generators.

Each version is a generator logged and registered by ``record_evaluation``, as the evaluate stage does, with
the metrics given and the scoring fingerprint of today's data, settings and code unless a test says
otherwise; the gate opens every version with salgan's loader. Where a test needs real scores it computes
them independently with the evaluate stage's code (``score_generator``).
"""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from mlflow import MlflowClient

from salgan import registry
from salgan.errors import ConfigError
from salgan.evaluate import score_generator
from salgan.layout import sha256_file
from salgan.models import build_generator, load_generator
from salgan.settings import Params, scoring_keys, to_dict
from salgan.tracking import fingerprint as fingerprints
from salgan.tracking.models import record_evaluation
from salgan.tracking.registry import CHALLENGER, CHAMPION, PREVIOUS, PromotionError
from tests.conftest import tiny_params, write_params_file

REPO = Path(__file__).resolve().parents[1]
TODAY = object()  # register(): record today's fingerprint for the weights


@pytest.fixture(scope="module")
def empty_store(tmp_path_factory):
    """A migrated sqlite store, made once: creating the tables costs seconds, copying the file does not."""
    path = tmp_path_factory.mktemp("store") / "mlflow.db"
    MlflowClient(f"sqlite:///{path}").search_experiments()
    return path


@pytest.fixture
def params(tmp_path, monkeypatch, empty_store) -> Params:
    """Tiny prepared data, a fresh sqlite registry and a params.yaml naming both, in the current folder."""
    shutil.copy(empty_store, tmp_path / "mlflow.db")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.delenv("MLFLOW_RUN_ID", raising=False)
    monkeypatch.chdir(tmp_path)
    params = tiny_params(tmp_path)
    params.mlflow.enabled, params.mlflow.tracking_uri, params.mlflow.experiment = True, uri, "gate"
    params.evaluate.n_splits = 5
    write_params_file(tmp_path / "params.yaml", to_dict(params))
    return params


def client_of(params: Params) -> MlflowClient:
    return MlflowClient(params.mlflow.tracking_uri)


def weights_file(params: Params, seed: int) -> Path:
    """A freshly initialised tiny generator's weights (one seed, one model)."""
    path = Path(params.train.output) / f"generator-{seed}.pt"
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.manual_seed(seed)
        torch.save(build_generator(params.model).state_dict(), path)
    return path


SCORED: dict[tuple, dict[str, float]] = {}


def scores(params: Params, seed: int) -> dict[str, float]:
    """The generator's means under ``params``, computed with the evaluate stage's code (once per data,
    settings and seed)."""
    key = (params.train.data, json.dumps(fingerprints.scoring_settings(params)), seed)
    if key not in SCORED:
        SCORED[key] = score_generator(load_generator(weights_file(params, seed)).generator, params)[1]
    return SCORED[key]


def today(params: Params, seed: int, size=None) -> dict:
    size = size or params.prepare.size
    return fingerprints.fingerprint(fingerprints.today(params), size, sha256_file(weights_file(params, seed)))


def register(params: Params, seed: int, metrics: dict | None = None, fingerprint=TODAY, size=None) -> str:
    """Register generator ``seed`` as evaluate does (alias challenger) with ``metrics`` (default: its real
    scores) recorded under ``fingerprint`` (default: today's; None: none recorded); ``size``: the input
    size the model is registered with."""
    at = params.model_copy(deep=True)
    if size is not None:
        at.prepare.size = list(size)
    if fingerprint is TODAY:
        fingerprint = today(params, seed, size)
    metrics = scores(params, seed) if metrics is None else metrics
    data = fingerprint["val"] if fingerprint else None
    version = record_evaluation(at, metrics, {}, [], weights_file(params, seed), data, fingerprint)
    assert version is not None
    return version


def alias(params: Params, name: str) -> str:
    return str(client_of(params).get_model_version_by_alias("salgan", name).version)


# --- the decision on recorded numbers ---------------------------------------------------------------------


def test_first_model_becomes_champion_without_the_floor(params):
    register(params, 1, {"nss": -5.0})
    result = registry.gate(params, floor=False)
    assert result["decision"] == "promoted" and result["champion"] is None and result["floor"] is None
    assert alias(params, CHAMPION) == "1"


def test_better_moves_worse_stays_and_kld_is_lower_is_better(params):
    register(params, 1, {"nss": 1.0, "kld": 1.0})
    registry.gate(params, floor=False)
    register(params, 2, {"nss": 1.2, "kld": 1.5})
    better = registry.gate(params, "nss")
    assert better["decision"] == "promoted" and alias(params, CHAMPION) == "2" and alias(params, PREVIOUS) == "1"
    assert better["delta"] == pytest.approx(0.2)
    assert not better["challenger"]["rescored"] and not better["champion"]["rescored"]  # today's fingerprints

    register(params, 3, {"nss": 1.1, "kld": 0.5})
    worse = registry.gate(params, "nss")
    assert worse["decision"] == "kept" and alias(params, CHAMPION) == "2"
    kld = registry.gate(params, "kld")  # lower is better: the same version wins on it
    assert kld["decision"] == "promoted" and alias(params, CHAMPION) == "3" and alias(params, PREVIOUS) == "2"
    assert kld["delta"] == pytest.approx(1.0)


def test_min_delta_is_respected_and_must_be_finite_and_not_negative(params, capsys):
    register(params, 1, {"nss": 1.0})
    registry.gate(params, floor=False)
    register(params, 2, {"nss": 1.05})
    assert registry.gate(params, "nss", min_delta=0.1)["decision"] == "kept" and alias(params, CHAMPION) == "1"
    for bad in (math.nan, -0.01, math.inf):
        with pytest.raises(ConfigError, match="min_delta must be finite and >= 0"):
            registry.gate(params, "nss", min_delta=bad)
    for bad in ("nan", "-1", "inf"):
        with pytest.raises(SystemExit) as exit_status:
            registry.main(["promote", "--min-delta", bad])
        assert exit_status.value.code == 2 and "must be finite and >= 0" in capsys.readouterr().err
    assert alias(params, CHAMPION) == "1"
    assert registry.gate(params, "nss", min_delta=0.01)["decision"] == "promoted" and alias(params, CHAMPION) == "2"


def test_an_unknown_metric_is_refused_before_anything_is_opened(params, capsys):
    register(params, 1, {"nss": 1.0})
    with pytest.raises(ConfigError, match="metric must be one of"):
        registry.gate(params, "accuracy")
    assert registry.main(["promote", "--metric", "accuracy"]) == 2


def test_no_challenger_and_no_such_version_are_errors(params, capsys):
    with pytest.raises(PromotionError, match="challenger"):
        registry.gate(params)
    assert registry.main(["promote"]) == 1
    assert "no 'challenger'" in capsys.readouterr().err
    register(params, 1, {"nss": 1.0})
    assert registry.main(["promote", "--version", "7"]) == 1
    assert "has no version 7" in capsys.readouterr().err


def test_a_recorded_number_missing_is_measured_by_the_gate(params):
    register(params, 1, {"nss": 1.0})  # evaluate logged nss only
    result = registry.gate(params, "cc", floor=False)
    challenger = result["challenger"]
    assert challenger["rescored"] and challenger["differs"] == ["no recorded cc"]
    assert challenger["value"] == pytest.approx(scores(params, 1)["cc"], rel=1e-6)


def test_an_explicit_version_is_the_one_compared_whatever_challenger_names(params, capsys):
    register(params, 1, {"nss": 1.0})
    registry.gate(params, floor=False)
    register(params, 2, {"nss": 1.5})
    register(params, 3, {"nss": 0.5})  # registered last: the challenger alias names it
    assert alias(params, CHALLENGER) == "3"
    assert registry.main(["promote", "--version", "2"]) == 0
    out = capsys.readouterr().out
    assert "promoted version 2 to champion: nss 1.5000 (challenger v2) vs 1.0000 (champion v1)" in out
    assert alias(params, CHAMPION) == "2" and alias(params, PREVIOUS) == "1" and alias(params, CHALLENGER) == "3"


def test_cli_promote_and_list(params, capsys):
    register(params, 1, {"nss": 1.0, "cc": 0.4})
    assert registry.main(["promote", "--metric", "nss", "--no-floor"]) == 0
    register(params, 2, {"nss": 0.9, "cc": 0.5})
    assert registry.main(["promote"]) == 0
    out = capsys.readouterr().out
    assert "promoted version 1 to champion" in out
    assert "kept version 1 as champion: nss 0.9000 (challenger v2) vs 1.0000 (champion v1)" in out

    assert registry.main(["list"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split()[:4] == ["version", "aliases", "created", "run"]
    assert lines[1].split()[:2] == ["2", "challenger"] and "0.9000" in lines[1]
    assert lines[2].split()[:2] == ["1", "champion"] and "1.0000" in lines[2] and "0.4000" in lines[2]


# --- the fingerprint --------------------------------------------------------------------------------------


def test_every_scoring_setting_is_in_the_fingerprint_and_changes_it(params):
    """The settings part is derived from the schema's scores marks; each marked setting moves the
    fingerprint, and the marked settings are those the scoring code reads (a new one read there must be
    marked, or this fails)."""
    import inspect
    import re

    from salgan import evaluate
    from salgan.registry import Judge

    keys = scoring_keys()
    assert set(keys) == {
        "evaluate.n_splits",
        "evaluate.sauc_other_images",
        "evaluate.center_bias_sigma",
        "evaluate.ig_baseline_sigma",
        "evaluate.metric_maps",
        "predict.blur_size",
        "predict.metric_map_sigma",
        "predict.sim_fixations",
    }
    code = "".join(
        inspect.getsource(f)
        for f in (evaluate.scoring_inputs, evaluate.score_generator, evaluate.centre_bias_scores, Judge)
    )
    read = set(re.findall(r"params\.((?:evaluate|predict)\.\w+)", code))
    assert read - set(keys) == {"evaluate.batch_size"}  # how many images a batch holds changes no score
    base = fingerprints.today(params)
    flat = {key: getattr(getattr(params, key.split(".")[0]), key.split(".")[1]) for key in keys}
    for key, value in flat.items():
        changed = params.model_copy(deep=True)
        section, name = key.split(".")
        setattr(getattr(changed, section), name, value + 2 if isinstance(value, int) else value * 2)
        assert fingerprints.differences(base, fingerprints.today(changed)) == [f"settings {key}"]


def test_a_version_recorded_under_another_fingerprint_is_scored_again(params):
    """Each field of the fingerprint counts: a difference in any one is a new score, measured here."""
    register(params, 1, {"nss": 99.0}, fingerprint=None)  # a number with no fingerprint: never trusted
    result = registry.gate(params, floor=False)
    assert result["challenger"]["differs"] == ["none recorded"]
    assert result["challenger"]["value"] == pytest.approx(scores(params, 1)["nss"], rel=1e-6)
    for field, value in (("train", "another-train-split"), ("inference", "cuda-bf16"), ("weights", "0" * 64)):
        recorded = today(params, 2) | {field: value}
        register(params, 2, {"nss": 99.0}, recorded)
        result = registry.gate(params, floor=False, version=2)
        assert result["challenger"]["differs"] == [field]
        assert result["challenger"]["value"] == pytest.approx(scores(params, 2)["nss"], rel=1e-6)


def test_a_challenger_scored_under_other_settings_is_scored_again_and_keeps_losing(params):
    """Evaluated under a sharper IG baseline and no blur, a worse model records a higher information gain
    than the champion's; the gate scores it again under today's settings and keeps the champion."""
    (_, worse), (_, better) = sorted((scores(params, seed)["information_gain"], seed) for seed in (1, 2))
    champion = register(params, better)
    registry.gate(params, floor=False)
    other = params.model_copy(deep=True)
    other.evaluate.ig_baseline_sigma, other.predict.blur_size = 0.001, 0
    flattering = scores(other, worse)
    assert flattering["information_gain"] > scores(params, better)["information_gain"]  # what a tag compare saw
    register(params, worse, flattering, fingerprint=today(other, worse))

    result = registry.gate(params, "information_gain")
    assert result["decision"] == "kept" and alias(params, CHAMPION) == champion
    challenger, kept = result["challenger"], result["champion"]
    assert challenger["differs"] == ["settings evaluate.ig_baseline_sigma", "settings predict.blur_size"]
    assert challenger["value"] == pytest.approx(scores(params, worse)["information_gain"], rel=1e-6)
    assert not kept["rescored"] and kept["value"] == pytest.approx(scores(params, better)["information_gain"], rel=1e-6)
    assert challenger["fingerprint"]["settings"]["evaluate.ig_baseline_sigma"] == 0.001


def test_a_champion_scored_by_older_scoring_code_is_scored_again(params):
    """The champion's recorded number came from older scoring code (say, a metric bug that flattered it):
    it is scored again with today's code, and the better challenger wins."""
    (_, worse), (_, better) = sorted((scores(params, seed)["nss"], seed) for seed in (1, 2))
    champion = register(params, worse, {"nss": 50.0}, today(params, worse) | {"code": "older-scoring-code"})
    registry.gate(params, floor=False)
    challenger = register(params, better)
    result = registry.gate(params)
    assert result["decision"] == "promoted" and alias(params, CHAMPION) == challenger
    assert alias(params, PREVIOUS) == champion
    replaced = result["champion"]
    assert replaced["differs"] == ["code"] and replaced["fingerprint"]["code"] == "older-scoring-code"
    assert replaced["value"] == pytest.approx(scores(params, worse)["nss"], rel=1e-6)
    assert result["challenger"]["value"] == pytest.approx(scores(params, better)["nss"], rel=1e-6)


def write_raw_val(params: Params, names: list[str]) -> list[Path]:
    """The raw val images (prepare.input's SALICON layout) behind the prepared split: 640x480 PNGs."""
    import numpy as np
    from PIL import Image

    folder = Path(params.prepare.input) / "images" / "val"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(3)
    paths = []
    for name in names:
        pixels = rng.integers(0, 90, (480, 640, 3), dtype=np.uint8)
        y, x = rng.integers(0, 360), rng.integers(0, 480)
        pixels[y : y + 120, x : x + 160] = (240, 200, 40)
        paths.append(folder / f"{name}.png")
        Image.fromarray(pixels).save(paths[-1])
    return paths


def test_a_version_registered_at_another_input_size_is_scored_again_at_its_own_size(params, tmp_path):
    import numpy as np
    from PIL import Image

    from salgan.layout import read_split

    params.prepare.input = str(tmp_path / "raw")
    raw = write_raw_val(params, read_split(params.train.data, "val").names)
    size = (96, 64)  # the prepared data is 64x48
    recorded = today(params, 1, size) | {"val": "the-val-split-prepared-at-96x64"}
    register(params, 1, {"nss": 9.0}, recorded, size=size)
    result = registry.gate(params, floor=False)
    challenger = result["challenger"]
    assert challenger["input_size"] == [96, 64] and challenger["differs"] == ["val"]
    images = np.stack([np.asarray(Image.open(p).convert("RGB").resize(size, Image.Resampling.BILINEAR)) for p in raw])
    generator = load_generator(weights_file(params, 1)).generator
    at_its_size = score_generator(generator, params, images=images)[1]["nss"]
    assert challenger["value"] == pytest.approx(at_its_size, rel=1e-6)
    assert challenger["value"] != pytest.approx(scores(params, 1)["nss"], rel=1e-3)  # not the prepared 64x48


# --- racing gates -----------------------------------------------------------------------------------------

RACER = """
import contextlib, json, logging, sys, time
from pathlib import Path

import salgan.tracking.lock as lock
from salgan.registry import gate
from salgan.settings import load_params

logging.basicConfig(level=logging.INFO, stream=sys.stdout, format="%(message)s")  # the gate's reports
me, other, version = sys.argv[1], sys.argv[2], sys.argv[3]
real = lock.registry_lock


def wait_for(path):
    # generous: on a loaded 2-core machine each racer imports torch and MLflow and scores two versions
    deadline = time.time() + 400
    while not Path(path).exists():
        if Path(other + ".failed").exists():
            raise RuntimeError(other + " failed before " + path)
        if Path(other + ".done").exists() and not Path(path).exists():  # decided without the lock
            raise RuntimeError(other + " ended before " + path + ": " + Path(other + ".done").read_text())
        if time.time() > deadline:
            raise TimeoutError(path)
        time.sleep(0.05)


@contextlib.contextmanager
def after_both_compared(uri):
    # Both gates have compared their version with the same champion before either may move it; the
    # worse one moves last, the order in which a gate without the re-check lets the worse one win.
    Path(me + ".compared").touch()
    wait_for(other + ".compared")
    if me == "worse":
        wait_for("better.done")
    with real(uri) as held:
        yield held


lock.registry_lock = after_both_compared
try:
    result = gate(load_params("params.yaml"), version=version, floor=False)
except BaseException:
    Path(me + ".failed").touch()  # the other racer stops waiting for this one
    raise
report = {"decision": result["decision"], "champion": (result["champion"] or {}).get("version")}
Path(me + ".done").write_text(json.dumps(report | {"reason": result.get("reason")}))
print(json.dumps(report))
"""


@pytest.mark.slow
def test_two_gates_racing_from_two_processes_end_as_one_after_the_other(params, tmp_path):
    """Two gates on one sqlite store both beat the same champion; the better moves the alias first. The
    worse one finds the champion moved, compares again with the new one and keeps it: the end state of
    the serial order better-then-worse, with previous_champion the champion the better one replaced."""
    ranked = sorted((scores(params, seed)["nss"], seed) for seed in (1, 2, 3))
    (_, oldest), (_, worse), (_, better) = ranked  # real scores: worst, middle, best
    champion = register(params, oldest)
    registry.gate(params, floor=False)
    versions = {"worse": register(params, worse), "better": register(params, better)}
    assert alias(params, CHAMPION) == champion
    env = {"PYTHONPATH": str(REPO), "PATH": str(Path(sys.executable).parent)}
    env |= {"MLFLOW_TRACKING_URI": params.mlflow.tracking_uri, "HOME": str(tmp_path)}
    racers = {
        me: subprocess.Popen(
            [sys.executable, "-c", RACER, me, other, versions[me]],
            cwd=tmp_path,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for me, other in (("worse", "better"), ("better", "worse"))
    }
    outputs = {me: process.communicate(timeout=600) for me, process in racers.items()}
    failed = {me: err[-3000:] for me, (_, err) in outputs.items() if racers[me].returncode != 0}
    assert not failed, failed
    last = {me: json.loads(out.strip().splitlines()[-1]) for me, (out, _) in outputs.items()}
    assert last["better"] == {"decision": "promoted", "champion": champion}
    assert last["worse"] == {"decision": "kept", "champion": versions["better"]}  # compared again
    assert "moved from v" in outputs["worse"][0]
    assert alias(params, CHAMPION) == versions["better"]
    assert alias(params, PREVIOUS) == champion


PROBE = """
import sys
import filelock
import salgan.tracking.lock as lock

lock.WAIT_S = 0.5
try:
    with lock.registry_lock(sys.argv[1]) as held:
        print(held)
except filelock.Timeout:
    sys.exit(3)
"""


def test_the_registry_lock_of_a_sqlite_store_is_shared_by_every_checkout(tmp_path):
    """Two checkouts naming one store (an absolute and a relative URI) contend for one lock beside it."""
    from salgan.tracking.lock import registry_lock

    store = tmp_path / "shared" / "mlflow.db"
    other_checkout = tmp_path / "elsewhere"
    other_checkout.mkdir()
    env = {"PYTHONPATH": str(REPO), "PATH": str(Path(sys.executable).parent)}

    def probe(uri: str) -> int:
        return subprocess.run([sys.executable, "-c", PROBE, uri], cwd=other_checkout, env=env).returncode

    with registry_lock(f"sqlite:///{store}") as held:
        assert held == f"file lock {store.parent / '.mlflow.db.salgan-registry.lock'}"
        assert probe("sqlite:///../shared/mlflow.db") == 3
        assert probe(f"sqlite:///{tmp_path / 'other.db'}") == 0  # another store: another lock
    started = time.monotonic()
    assert probe("sqlite:///../shared/mlflow.db") == 0 and time.monotonic() - started < 30


def test_a_flows_parameters_are_checked_like_the_command_line():
    from flows.retrain import salgan_retrain

    for bad in (math.nan, -1.0):
        with pytest.raises(ValueError, match="min_delta must be finite and >= 0"):
            salgan_retrain.fn(refresh="none", workdir=".", min_delta=bad)
