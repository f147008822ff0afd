"""A density model on the offline sample, as a user runs one: trained on the fixations' likelihood
(train.content_loss {nll: 1.0}), scored by evaluate (LL, IG, metric maps), written by salgan predict --kind,
packaged for the MIT/Tuebingen benchmark and served through MLflow's pyfunc."""

import base64
import io
import json
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy.special import logsumexp

from salgan import download, evaluate, predict_tool, prepare, train
from salgan import package as package_stage
from salgan.density.inference import BatchedLogDensities, MetricMaps, centre_log_density, log_densities
from salgan.density.maps import metric_map, shuffled_map
from salgan.density.submission import ARCHIVE, validate_archive
from salgan.imaging import decode_rgb
from salgan.layout import read_split
from salgan.models import Generator, load_generator
from salgan.settings import load_params
from tests.conftest import tiny_params, write_params_file
from tests.test_encoders import _absolute

DENSITY = {
    "download": {"sample_train": 64, "sample_val": 8, "sample_test": 3},
    "prepare": {"size": [64, 48], "workers": 1},
    "model": {"output": "density", "width": 0.0625},
    "train": {"batch_size": 8, "nproc": 1, "device": "cpu", "epochs": 6, "bce_epochs": 6, "content_loss": {"nll": 1.0}},
    "evaluate": {"n_splits": 10, "grid_images": 2, "metric_maps": True},
    "package": {"format": "mit-tuebingen-density"},
    "mlflow": {"enabled": False},
}


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """The offline sample (64 train, 8 val, 3 test images at 64x48), a width-1/16 density model trained 6
    epochs on the nll alone, and evaluate's metrics with metric maps."""
    root = tmp_path_factory.mktemp("density")
    settings = _absolute(root, DENSITY)
    settings["package"]["output"] = str(root / "submission")
    params_file = write_params_file(root / "params.yaml", settings)
    assert download.main(["--params", str(params_file)]) == 0
    assert prepare.main(["--params", str(params_file)]) == 0
    params = load_params(params_file)
    assert train.run(params) == 0
    return root, params_file, params, evaluate.evaluate(params)


def test_nll_training_raises_the_log_likelihood_above_the_centre_bias(trained):
    root, _, params, metrics = trained
    centre = metrics["baselines"]["center_bias"]
    assert metrics["log_likelihood"] > centre["log_likelihood"] + 0.1, (metrics["log_likelihood"], centre)
    assert metrics["density_information_gain"] > 0.02  # over the training fixations' density, a stronger bar
    # both in bits per fixation over the same fixations and the same baseline: IGs differ as LLs do
    assert metrics["density_information_gain"] - centre["density_information_gain"] == pytest.approx(
        metrics["log_likelihood"] - centre["log_likelihood"]
    )
    assert centre["density_information_gain"] < 0  # the Gaussian explains the fixations worse than the IG baseline
    history = json.loads((root / "models" / "history.json").read_text())
    assert history[-1]["val_content_loss"] < history[0]["val_content_loss"] - 0.05  # nats per fixation
    written = json.loads((root / "reports" / "metrics.json").read_text())
    assert written["log_likelihood"] == metrics["log_likelihood"] and set(written["metric_maps"]) == set(
        metrics["metric_maps"]
    )
    header = (root / "reports" / "per_image.csv").read_text().splitlines()[0]
    assert "log_likelihood" in header and "density_information_gain" in header
    assert "log_likelihood" in evaluate.summary_table(metrics) and "metric maps" in evaluate.summary_table(metrics)


def test_the_sauc_map_scores_at_least_the_plain_density_maps_sauc(trained):
    """Kuemmerer et al. 2018: sAUC's negatives are other images' fixations, so the density divided by the
    centre-bias density ranks a pixel better than the density does."""
    from salgan.evaluate import scoring_inputs
    from salgan.scoring import score_split

    root, _, params, metrics = trained
    model = load_generator(root / "models" / "generator.pt").generator
    val, common = scoring_inputs(params)
    densities = BatchedLogDensities(model, val.images, val.original_sizes)
    centre = centre_log_density(model, (480, 640), params.evaluate.center_bias_sigma)
    plain = score_split(MetricMaps(densities, "density", centre, 19.0, 100), val.maps_full, progress=False, **common)
    assert metrics["metric_maps"]["auc_shuffled"] >= plain[1]["auc_shuffled"], (metrics["metric_maps"], plain[1])
    assert metrics["metric_maps"]["nss"] == pytest.approx(plain[1]["nss"])  # NSS's map is the density itself


def test_predict_writes_log_densities_and_metric_maps_at_each_images_size(trained, tmp_path):
    from PIL import Image

    root, params_file, params, _ = trained
    weights = root / "models" / "generator.pt"
    test_images = sorted((root / "raw" / "images" / "test").glob("*.jpg"))
    odd = tmp_path / "odd"
    odd.mkdir()
    Image.open(test_images[0]).resize((37, 23)).save(odd / "small.png")
    args = ["--params", str(params_file), "--model", str(weights), "--size", "64x48", "--device", "cpu"]
    out = tmp_path / "log"
    assert (
        predict_tool.main([*args, "--kind", "log-density", "--output", str(out), *map(str, test_images), str(odd)]) == 0
    )

    model = load_generator(weights).generator
    decoded = [_decoded(path) for path in [*test_images, odd / "small.png"]]
    images, sizes = np.stack([d.array for d in decoded]), np.array([d.original_size for d in decoded])
    expected = list(log_densities(model, images, sizes, device=torch.device("cpu")))
    for path, wanted in zip([*test_images, odd / "small.png"], expected, strict=True):
        written = np.load(out / f"{path.stem}.npy")
        assert written.dtype == np.float32 and written.shape == wanted.shape == (
            Image.open(path).height,
            Image.open(path).width,
        )
        assert abs(logsumexp(written.astype(np.float64))) <= 0.01
        np.testing.assert_allclose(written, wanted, atol=1e-5)
    assert np.load(out / "small.npy").shape == (23, 37)

    maps_out = tmp_path / "sauc"
    assert predict_tool.main([*args, "--kind", "metric-map", "--metric", "auc_shuffled", "--output", str(maps_out),
                         str(test_images[0])]) == 0  # fmt: skip
    centre = centre_log_density(model, (480, 640), params.evaluate.center_bias_sigma)
    np.testing.assert_allclose(
        np.load(maps_out / f"{test_images[0].stem}.npy"), shuffled_map(expected[0], centre), rtol=1e-3, atol=1e-12
    )


def test_predict_refuses_a_density_kind_for_a_map_model_and_a_metric_map_without_its_metric(tmp_path, capsys):
    from PIL import Image

    weights = tmp_path / "map.pt"
    torch.save(Generator(width=0.0625).state_dict(), weights)
    Image.new("RGB", (64, 48)).save(tmp_path / "a.png")
    base = ["--model", str(weights), "--size", "64x48", "--output", str(tmp_path / "out"), str(tmp_path / "a.png")]
    assert predict_tool.main([*base, "--kind", "log-density"]) == 1
    assert "needs a density model (model.output: density)" in capsys.readouterr().err
    with pytest.raises(SystemExit) as usage:
        predict_tool.main([*base, "--kind", "metric-map"])
    assert usage.value.code == 2 and "--kind metric-map needs --metric" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        predict_tool.main([*base, "--kind", "log-density", "--overlay"])
    assert not (tmp_path / "out").exists()


def test_the_mit_tuebingen_density_submission_holds_each_test_images_log_density(trained):
    root, params_file, params, _ = trained
    assert package_stage.main(["--params", str(params_file)]) == 0
    archive = root / "submission" / ARCHIVE
    test = read_split(root / "prepared", "test")
    sizes = {name: (int(w), int(h)) for name, (h, w) in zip(test.names, test.original_sizes, strict=True)}
    assert validate_archive(archive, test.names, sizes) == [f"{name}.npy" for name in test.names]
    model = load_generator(root / "models" / "generator.pt").generator
    expected = log_densities(model, test.images, test.original_sizes, device=torch.device("cpu"))
    with zipfile.ZipFile(archive) as opened:
        for name, wanted in zip(test.names, expected, strict=True):
            np.testing.assert_array_equal(np.load(io.BytesIO(opened.read(f"{name}.npy"))), wanted.astype(np.float32))
    manifest = json.loads((root / "submission" / "manifest.json").read_text())
    assert manifest["format"] == "mit-tuebingen-density" and manifest["counts"] == {"test": 3}


def test_the_density_submission_refuses_a_map_model_and_writes_nothing(trained, tmp_path, capsys):
    root, params_file, _, _ = trained
    weights = tmp_path / "map.pt"
    torch.save(Generator(width=0.0625).state_dict(), weights)
    before = sorted(p.name for p in (root / "submission").glob("*")) if (root / "submission").exists() else []
    assert package_stage.main(["--params", str(params_file), "--model", str(weights)]) == 1
    assert "a saliency-map model; package.format mit-tuebingen-density needs a density model" in capsys.readouterr().err
    after = sorted(p.name for p in (root / "submission").glob("*")) if (root / "submission").exists() else []
    assert after == before


def test_the_served_density_model_returns_log_densities_and_metric_maps(trained, tmp_path, monkeypatch):
    """The registered model carries its output kind (MLmodel metadata) and, asked for a kind, answers with
    base64 .npy bytes, the same arrays salgan predict writes; a PNG map when asked for none."""
    import mlflow
    import pandas as pd
    import yaml

    from tests.conftest import register_weights

    root, _, params, _ = trained
    weights = root / "models" / "generator.pt"
    monkeypatch.chdir(tmp_path)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    version = register_weights(uri, weights)
    client = mlflow.MlflowClient(uri)
    local = Path(
        mlflow.artifacts.download_artifacts(
            client.get_model_version_download_uri("salgan", version), dst_path=str(tmp_path / "model")
        )
    )
    assert yaml.safe_load((local / "MLmodel").read_text())["metadata"]["output"] == "density"
    image = sorted((root / "raw" / "images" / "test").glob("*.jpg"))[0]
    frame = pd.DataFrame(
        {
            "image": [image.read_bytes()] * 4,
            "kind": ["log-density", "metric-map", None, "probability"],
            "metric": [None, "cc", None, None],
        }
    )
    result = mlflow.pyfunc.load_model(str(local)).predict(frame)
    assert list(result["error"])[:3] == ["", "", ""] and "kind 'probability' is not one of" in result["error"][3]
    arrays = [np.load(io.BytesIO(base64.b64decode(result["saliency"][row]))) for row in (0, 1)]
    model = load_generator(weights).generator
    decoded = _decoded(image)
    wanted = next(
        log_densities(model, decoded.array[None], np.array([decoded.original_size]), device=torch.device("cpu"))
    )
    np.testing.assert_allclose(arrays[0], wanted, atol=1e-4)
    np.testing.assert_allclose(arrays[1], metric_map(wanted, "cc", sigma=19.0), rtol=1e-3, atol=1e-12)
    assert base64.b64decode(result["saliency"][2])[:8] == b"\x89PNG\r\n\x1a\n"  # no kind: the map, as before


def test_the_adversarial_term_still_trains_a_density_model(tmp_path):
    """With train.alpha, the adversarial phase shows the discriminator the density over its maximum beside
    the ground-truth maps, and the generator steps on it and on nll beside nss."""
    params = tiny_params(tmp_path, epochs=1, bce_epochs=0, content_loss={"nll": 1.0, "nss": -0.1})
    params.model.output = "density"
    assert train.run(params) == 0
    history = json.loads((tmp_path / "models" / "history.json").read_text())
    assert history[0]["phase"] == "adversarial" and np.isfinite(history[0]["d_loss"]) and history[0]["d_loss"] > 0
    assert np.isfinite(history[0]["g_loss"]) and history[0]["g_loss"] != history[0]["content_loss"]
    model = load_generator(tmp_path / "models" / "generator.pt").generator
    assert type(model).__name__ == "DensityGenerator" and model.prior_shape == [48, 64]


def _decoded(path: Path):
    """An image as salgan predict decodes it for a 64x48 model (salgan/imaging.py)."""
    return decode_rgb(path, (64, 48), 50_000_000, "predict.max_pixels", exif=True)
