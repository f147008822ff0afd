"""The registered model as a service: MLflow's pyfunc in a Python session and `mlflow models serve` over
HTTP, each giving the same maps as `salgan predict` for the same image files."""

import base64
import io
import json
import os
import sys
import urllib.error
import urllib.request
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from salgan import predict_tool
from salgan.models import Generator
from salgan.serving import MAX_PIXELS_ENV
from tests.conftest import free_port, register_weights, running_server
from tests.test_predict import make_images


@pytest.fixture(scope="module")
def champion(tmp_path_factory):
    """A sqlite store whose model 'salgan' version 1 (a width-1/16 VGG trained at 64x48... with random
    weights: what matters here is the plumbing, and a random generator's maps are not constant) is champion;
    also the weights file and a folder of images in many formats and modes."""
    root = tmp_path_factory.mktemp("serving")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    torch.manual_seed(0)
    weights = root / "generator.pt"
    torch.save(Generator(width=0.0625).state_dict(), weights)
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(root)
        register_weights(uri, weights, alias="champion")
    sizes = make_images(root / "images")
    return uri, weights, root / "images", sizes


def _frame(files: list[Path], overlay: list[bool] | None = None) -> pd.DataFrame:
    data = {"image": [path.read_bytes() for path in files]}
    if overlay is not None:
        data["overlay"] = overlay
    return pd.DataFrame(data)


def _decoded(text: str) -> Image.Image:
    return Image.open(io.BytesIO(base64.b64decode(text)))


def _predicted_by_the_cli(weights: Path, images: Path, out: Path) -> Path:
    predict_tool.main(["--model", str(weights), "--size", "64x48", "--output", str(out), "--overlay", str(images)])
    return out


def test_the_champion_predicts_from_image_bytes_in_python_as_salgan_predict_does(champion, tmp_path, monkeypatch):
    uri, weights, images, sizes = champion
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    model = mlflow.pyfunc.load_model("models:/salgan@champion")
    stems = sorted(sizes)
    files = [next(images.glob(f"{stem}.*")) for stem in stems]
    bad = [images / "broken.jpg", images / "notes.txt"]
    result = model.predict(_frame(files + bad, [True] * len(files) + [False, False]))
    assert list(result.columns) == ["saliency", "overlay", "error"] and len(result) == len(files) + 2
    cli = _predicted_by_the_cli(weights, images, tmp_path / "cli")
    for row, stem in enumerate(stems):
        assert result.error[row] == "", (stem, result.error[row])
        saliency = _decoded(result.saliency[row])
        assert (saliency.mode, saliency.size) == ("L", sizes[stem])
        # one implementation: the served map is byte for byte the map `salgan predict` writes
        assert np.array_equal(np.asarray(saliency), np.asarray(Image.open(cli / f"{stem}.png"))), stem
        assert _decoded(result.overlay[row]).size == sizes[stem]
    assert "broken" not in result.error[len(files)] and "row 9" in result.error[len(files)]  # names the row
    assert "UnidentifiedImageError" in result.error[len(files) + 1] or "OSError" in result.error[len(files) + 1]
    assert result.saliency[len(files)] == "" and result.overlay[len(files) + 1] == ""
    without = model.predict(_frame(files[:1]))  # overlay is optional: no column, no overlay
    assert without.overlay[0] == "" and without.saliency[0] == result.saliency[0]


def test_too_many_pixels_fails_that_row_only(champion, monkeypatch):
    uri, _, images, _ = champion
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv(MAX_PIXELS_ENV, "5000")  # the served pixel limit, read when the model loads
    model = mlflow.pyfunc.load_model("models:/salgan/1")
    result = model.predict(_frame([images / "photo.jpg", images / "tiny.bmp"]))  # 8000 and 693 pixels
    assert "declares 100x80 pixels, more than predict.max_pixels 5000" in result.error[0]
    assert result.error[1] == "" and _decoded(result.saliency[1]).size == (33, 21)


@pytest.fixture(scope="module")
def server(champion):
    """`mlflow models serve -m models:/salgan@champion --env-manager local` on 127.0.0.1."""
    port = free_port()
    command = [sys.executable, "-m", "mlflow", "models", "serve", "-m", "models:/salgan@champion"]
    command += ["--env-manager", "local", "-h", "127.0.0.1", "-p", str(port), "-w", "1"]
    url, log = f"http://127.0.0.1:{port}", Path(champion[2]).parent / "serve.log"
    # MLflow starts the scoring server as `uvicorn` from PATH: this interpreter's, even without an activated venv
    path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"
    env = {**os.environ, "MLFLOW_TRACKING_URI": champion[0], "PATH": path}
    with running_server(command, f"{url}/ping", log, env, 180):
        yield url


def _post(url: str, body: bytes | str, content_type: str = "application/json") -> tuple[int, str]:
    data = body.encode() if isinstance(body, str) else body
    request = urllib.request.Request(f"{url}/invocations", data=data, headers={"Content-Type": content_type})
    try:
        with urllib.request.urlopen(request, timeout=120) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


def _b64(path: Path) -> str:
    return base64.b64encode(path.read_bytes()).decode()


@pytest.mark.slow
def test_the_served_champion_maps_a_photo_and_names_each_bad_row(champion, server):
    _, _, images, sizes = champion
    photo = Image.fromarray(np.random.default_rng(1).integers(0, 255, (240, 320, 3), dtype=np.uint8))
    buffer = io.BytesIO()
    photo.save(buffer, "JPEG")
    rows = [[base64.b64encode(buffer.getvalue()).decode(), True], [_b64(images / "broken.jpg"), False]]
    rows += [[_b64(images / "notes.txt"), False], [_b64(images / "web.webp"), False]]
    status, text = _post(server, json.dumps({"dataframe_split": {"columns": ["image", "overlay"], "data": rows}}))
    assert status == 200, text
    predictions = json.loads(text)["predictions"]
    assert len(predictions) == 4
    saliency = np.asarray(_decoded(predictions[0]["saliency"]))
    assert saliency.shape == (240, 320) and saliency.std() > 0  # the photo's own size, not a constant map
    assert _decoded(predictions[0]["overlay"]).size == (320, 240) and predictions[0]["error"] == ""
    assert predictions[1]["error"].startswith("row 1: ") and predictions[1]["saliency"] == ""
    assert predictions[2]["error"].startswith("row 2: ")
    assert _decoded(predictions[3]["saliency"]).size == sizes["web"] and predictions[3]["error"] == ""
    records = json.dumps({"dataframe_records": [{"image": _b64(images / "tiny.bmp")}]})  # the other JSON layout
    status, text = _post(server, records)
    assert status == 200 and _decoded(json.loads(text)["predictions"][0]["saliency"]).size == (33, 21)


@pytest.mark.slow
@pytest.mark.parametrize(
    "body,reason",
    [
        (json.dumps({"dataframe_split": {"columns": ["picture"], "data": [["aGk="]]}}), "image"),
        ("{not json", "json"),
        (json.dumps({"dataframe_split": {"columns": ["image"], "data": [["%%% not base64 %%%"]]}}), "base64"),
        (json.dumps({"inputs": [[1, 2, 3]]}), "image"),
    ],
    ids=["no image column", "not JSON", "not base64", "a tensor"],
)
def test_a_malformed_request_gets_a_4xx_with_the_reason_never_a_500(server, body, reason):
    status, text = _post(server, body)
    assert 400 <= status < 500, (status, text)
    assert reason in text.lower() and "Traceback" not in text


def _png(width: int, height: int, value: int = 120) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.full((height, width, 3), value, dtype=np.uint8)).save(buffer, "PNG")
    return buffer.getvalue()


def test_a_one_pixel_row_gets_its_map_beside_the_others(champion, monkeypatch):
    uri, _, images, sizes = champion
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    model = mlflow.pyfunc.load_model("models:/salgan/1")
    frame = pd.DataFrame({"image": [(images / "photo.jpg").read_bytes(), _png(1, 1), _png(3, 2)]})
    result = model.predict(frame)
    assert list(result.error) == ["", "", ""]
    assert [_decoded(text).size for text in result.saliency] == [sizes["photo"], (1, 1), (3, 2)]


def test_a_request_over_its_row_or_pixel_limit_is_refused_whole_with_413_and_the_reason(champion, monkeypatch):
    from mlflow.exceptions import MlflowException

    from salgan.serving import MAX_REQUEST_PIXELS_ENV, MAX_ROWS_ENV

    uri, _, images, _ = champion
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv(MAX_ROWS_ENV, "3")
    monkeypatch.setenv(MAX_REQUEST_PIXELS_ENV, "20000")  # read when the model loads, as MAX_PIXELS_ENV
    model = mlflow.pyfunc.load_model("models:/salgan/1")
    with pytest.raises(MlflowException, match=f"4 rows, more than {MAX_ROWS_ENV} 3 in one request") as rows:
        model.predict(pd.DataFrame({"image": [_png(2, 2)] * 4}))
    assert rows.value.get_http_status_code() == 413
    photo = (images / "photo.jpg").read_bytes()  # 100x80: 8000 pixels, 16000 with an overlay
    assert model.predict(pd.DataFrame({"image": [photo, photo]})).error.tolist() == ["", ""]  # 16000 pixels
    with pytest.raises(MlflowException, match=r"declare 24000 pixels together \(overlay rows count twice\)") as big:
        model.predict(pd.DataFrame({"image": [photo, photo], "overlay": [True, False]}))
    assert big.value.get_http_status_code() == 413 and MAX_REQUEST_PIXELS_ENV in big.value.message


@pytest.mark.slow
def test_the_server_answers_413_to_too_many_rows_or_pixels_at_once(server, tmp_path):
    """The issue's requests: 10,000 tiny rows (a 504 after 60 s before), one 7000x7000 PNG with overlay
    (4.8 GB before): each answered at once with 413 and the reason, before any image is decoded."""
    from tests.test_limits import png_declaring

    tiny = base64.b64encode(_png(4, 4)).decode()
    status, text = _post(server, json.dumps({"dataframe_split": {"columns": ["image"], "data": [[tiny]] * 10_000}}))
    assert status == 413 and "10000 rows, more than SALGAN_SERVE_MAX_ROWS 256" in text, (status, text[:300])
    rows = [[base64.b64encode(png_declaring(tmp_path / "big.png", 7000, 7000).read_bytes()).decode(), True]]
    status, text = _post(server, json.dumps({"dataframe_split": {"columns": ["image", "overlay"], "data": rows}}))
    assert status == 413 and "declare 98000000 pixels together" in text, (status, text[:300])
