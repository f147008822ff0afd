import json

import numpy as np
import pytest

from salgan.evaluate import evaluate, summary_table
from salgan.metrics import METRIC_NAMES
from salgan.train import run
from tests.conftest import tiny_params


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory):
    root = tmp_path_factory.mktemp("evaluate")
    params = tiny_params(root, epochs=8, bce_epochs=8)
    params.evaluate.output = str(root / "reports")
    params.evaluate.n_splits = 10
    run(params)
    return root, evaluate(params)


def test_metrics_file_holds_model_and_baselines(evaluated):
    root, metrics = evaluated
    written = json.loads((root / "reports" / "metrics.json").read_text())
    assert written == metrics
    assert set(METRIC_NAMES) <= set(written)
    assert set(METRIC_NAMES) <= set(written["baselines"]["center_bias"])
    assert written["n_images"] == 8


def test_ground_truth_is_the_ceiling(evaluated):
    _, metrics = evaluated
    ceiling = metrics["baselines"]["ground_truth"]
    assert ceiling["cc"] == pytest.approx(1.0) and ceiling["sim"] == pytest.approx(1.0)
    assert ceiling["nss"] > metrics["nss"]


def test_trained_model_beats_the_centre_bias(evaluated):
    _, metrics = evaluated
    center = metrics["baselines"]["center_bias"]
    assert metrics["nss"] > center["nss"] and metrics["cc"] > center["cc"]


def test_per_image_rows_and_example_grid(evaluated):
    root, _ = evaluated
    lines = (root / "reports" / "per_image.csv").read_text().splitlines()
    assert lines[0].startswith("index,name,n_fixations,")
    assert len(lines) == 1 + 8
    from PIL import Image

    grid = Image.open(root / "reports" / "examples.png")
    assert grid.size == (3 * 64, 6 * 48)


def test_summary_table_lists_every_metric(evaluated):
    _, metrics = evaluated
    table = summary_table(metrics)
    assert all(name in table for name in METRIC_NAMES) and "center_bias" in table


def test_evaluate_scores_exactly_the_maps_the_predict_stage_writes(evaluated, tmp_path):
    """One post-processing for both stages: evaluate's val maps, quantised as PNGs are, equal the PNGs the
    predict stage's code writes for the same images."""
    from PIL import Image

    from salgan.evaluate import score_generator
    from salgan.inference import to_uint8
    from salgan.models import load_generator
    from salgan.predict import write_split_maps

    root, _ = evaluated
    params = tiny_params(root)
    generator = load_generator(root / "models" / "generator.pt")
    _, _, predictions = score_generator(generator, params)
    names = write_split_maps(generator, root / "prepared", "val", tmp_path, params)
    assert len(names) == len(predictions) == 8
    for name, prediction in zip(names, predictions, strict=True):
        assert np.array_equal(np.asarray(Image.open(tmp_path / f"{name}.png")), to_uint8(prediction))
