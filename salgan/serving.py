"""Saliency as a service: the generator as an MLflow pyfunc model that takes encoded images, returns maps.

This module is both the model's flavor (:func:`save_model`, which ``mlflow.models.Model.log`` calls) and
its pyfunc loader (:func:`_load_pyfunc`, named by MLmodel's ``loader_module``). The model folder holds
the generator's weights (a plain state_dict, read with ``weights_only=True``) and its settings as JSON;
the code that runs is this installed package, never a pickle or code shipped in the model folder.

A request holds at most ``SALGAN_SERVE_MAX_ROWS`` rows (256) and ``SALGAN_SERVE_MAX_REQUEST_PIXELS`` pixels
in all its images (25 million; an overlay row counts twice), read from each image's header before any is
decoded; a larger request is answered 413 with the reason, a malformed one 400.

Input, a DataFrame (MLflow's ``dataframe_split`` or ``dataframe_records`` over HTTP): a column ``image``
of encoded image bytes (JPEG, PNG, WebP, TIFF, BMP, in any mode; base64 strings in JSON) and an optional
boolean column ``overlay``. Output, one row per input row: ``saliency``, the map at the image's own size
as a base64 PNG; ``overlay``, a base64 JPEG heat map over the image when asked, else empty; and
``error``, empty when the row succeeded, else why it did not (a row that cannot be read fails alone).
The decoding, resizing, prediction and post-processing are those of every prediction (:mod:`salgan.imaging`,
:func:`salgan.inference.predict_images`).

A density model (``model.output: density``; MLmodel ``metadata.output``) answers a row with an optional
``kind`` column of ``log-density`` with its log-density, and of ``metric-map`` (with ``metric``, one of
salgan.metrics.METRIC_NAMES) with that metric's map (salgan/density/), in ``saliency`` as base64 ``.npy``
bytes (float32, the image's size; ``numpy.load`` reads them); ``map`` or no kind: the PNG map as above.
"""

from __future__ import annotations

import base64
import binascii
import io
import json
import os
import shutil
from pathlib import Path

import numpy as np

from salgan.imaging import Decoded, declared_pixels, decode_rgb, encoded, save_map, save_overlay
from salgan.inference import default_device, failure_reason, predict_images
from salgan.layout import LOGGED_WEIGHTS
from salgan.models import load_generator
from salgan.settings import PredictParams

SETTINGS_FILE = "extra_files/serving.json"
# the predict settings a logged model serves with (the last two: a density model's metric maps)
SERVED_OPTIONS = ("batch_size", "blur_size", "max_pixels", "metric_map_sigma", "sim_fixations")
PYTHON_ENV = "python_env.yaml"
MAX_PIXELS_ENV = "SALGAN_SERVE_MAX_PIXELS"  # overrides the logged predict.max_pixels where the model serves
# What one request may hold, read where the model serves: rows, and pixels of all its images together (an
# overlay row counts twice: it keeps the image and draws over it). Beyond them: 413 with the reason.
MAX_ROWS_ENV, DEFAULT_MAX_ROWS = "SALGAN_SERVE_MAX_ROWS", 256
MAX_REQUEST_PIXELS_ENV, DEFAULT_MAX_REQUEST_PIXELS = "SALGAN_SERVE_MAX_REQUEST_PIXELS", 25_000_000


def signature():
    """The model's MLflow signature: ``image`` (binary) and optional ``overlay`` (boolean) in; ``saliency``,
    ``overlay`` and ``error`` (strings) out."""
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, Schema

    inputs = Schema(
        [
            ColSpec("binary", "image"),
            ColSpec("boolean", "overlay", required=False),
            ColSpec("string", "kind", required=False),  # map | log-density | metric-map (density models)
            ColSpec("string", "metric", required=False),
        ]
    )
    outputs = Schema([ColSpec("string", "saliency"), ColSpec("string", "overlay"), ColSpec("string", "error")])
    return ModelSignature(inputs=inputs, outputs=outputs)


def input_example():
    """One 64x48 PNG (a smooth colour gradient) with an overlay asked for."""
    import pandas as pd
    from PIL import Image

    rows, cols = np.mgrid[0:48, 0:64]
    image = np.stack([rows * 5, cols * 4, (rows + cols) * 2], axis=-1).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, "PNG")
    return pd.DataFrame({"image": [buffer.getvalue()], "overlay": [True]})


def save_model(path, mlflow_model, generator_path, size, options, **_):
    """Write the model folder: the weights at ``extra_files/generator.pt``, the serving settings (``options``:
    the ``predict`` settings it serves with), the signature and input example, the environment, and MLmodel
    with this module as the pyfunc loader."""
    import mlflow.pyfunc
    import PIL
    import torch

    path = Path(path)
    (path / LOGGED_WEIGHTS).parent.mkdir(parents=True)
    shutil.copyfile(generator_path, path / LOGGED_WEIGHTS)
    settings = {"input_size": [int(size[0]), int(size[1])]}
    settings |= {key: getattr(options, key) for key in SERVED_OPTIONS}
    (path / SETTINGS_FILE).write_text(json.dumps(settings, indent=1) + "\n")
    mlflow_model.signature = signature()
    _write_input_example(mlflow_model, path)
    torch_version = torch.__version__.split("+")[0]  # "2.14.1+cu130" is not installable from PyPI
    requirements = [f"torch=={torch_version}", f"numpy=={np.__version__}", f"pillow=={PIL.__version__}"]
    (path / "requirements.txt").write_text("\n".join(requirements) + "\n")
    (path / PYTHON_ENV).write_text(_python_env())
    mlflow.pyfunc.add_to_model(mlflow_model, loader_module=__name__, data="extra_files", python_env=PYTHON_ENV)
    mlflow_model.save(str(path / "MLmodel"))


def _write_input_example(mlflow_model, path: Path) -> None:
    """:func:`input_example` as MLflow keeps one: ``input_example.json`` (the frame, pandas' split orient,
    bytes in base64) and the request that serves it, named in MLmodel's ``saved_input_example_info``."""
    from mlflow.models import convert_input_example_to_serving_input

    example = input_example()
    rows = [[base64.b64encode(image).decode("ascii"), overlay] for image, overlay in example.itertuples(index=False)]
    (path / "input_example.json").write_text(json.dumps({"columns": list(example.columns), "data": rows}))
    (path / "serving_input_example.json").write_text(convert_input_example_to_serving_input(example))
    mlflow_model.saved_input_example_info = {
        "artifact_path": "input_example.json",
        "type": "dataframe",
        "pandas_orient": "split",
        "serving_input_path": "serving_input_example.json",
    }


def _python_env() -> str:
    """``python_env.yaml``: this Python's version, the packaging tools it has, the model's requirements."""
    import platform
    from importlib.metadata import PackageNotFoundError, version

    import yaml

    tools = []
    for tool in ("pip", "setuptools", "wheel"):
        try:
            tools.append(f"{tool}=={version(tool)}")
        except PackageNotFoundError:
            tools.append(tool)
    environment = {
        "python": platform.python_version(),
        "build_dependencies": tools,
        "dependencies": ["-r requirements.txt"],
    }
    return yaml.safe_dump(environment, sort_keys=False)


def _load_pyfunc(data_path: str, model_config=None) -> SaliencyService:
    """MLflow's pyfunc loader protocol: ``data_path`` is the model's ``extra_files`` folder."""

    folder = Path(data_path).parent
    settings = json.loads((folder / SETTINGS_FILE).read_text())
    options = PredictParams(**{key: settings[key] for key in SERVED_OPTIONS if key in settings})
    if os.environ.get(MAX_PIXELS_ENV):
        options.max_pixels = int(os.environ[MAX_PIXELS_ENV])
    size = (int(settings["input_size"][0]), int(settings["input_size"][1]))
    service = SaliencyService(load_generator(folder).generator, size, options)
    service.max_rows = int(os.environ.get(MAX_ROWS_ENV) or DEFAULT_MAX_ROWS)
    service.max_request_pixels = int(os.environ.get(MAX_REQUEST_PIXELS_ENV) or DEFAULT_MAX_REQUEST_PIXELS)
    return service


class SaliencyService:
    """Encoded images in, base64 maps out (module docstring); what ``mlflow.pyfunc.load_model`` returns
    inside its PyFuncModel and ``mlflow models serve`` calls per request."""

    def __init__(self, generator, size: tuple[int, int], options):
        """``options``: the ``predict`` settings the model was logged with (batch size, blur, pixel limit)."""
        self.device = default_device()
        self.generator = generator.to(self.device).eval()
        self.size = size
        self.batch_size, self.blur_size, self.max_pixels = options.batch_size, options.blur_size, options.max_pixels
        self.max_rows, self.max_request_pixels = DEFAULT_MAX_ROWS, DEFAULT_MAX_REQUEST_PIXELS
        self.options = options

    def get_raw_model(self):
        """The generator itself (``PyFuncModel.get_raw_model()``): a torch module taking (N, 3, H, W) RGB in
        [0, 1] at the model's input size and returning maps of that size."""
        return self.generator

    def predict(self, model_input, params=None):
        import pandas as pd

        frame = model_input if isinstance(model_input, pd.DataFrame) else pd.DataFrame(model_input)
        if "image" not in frame.columns:
            _refuse(f"expected a column 'image' of encoded image bytes, got columns {list(frame.columns)}")
        if len(frame) > self.max_rows:
            _refuse(f"{len(frame)} rows, more than {MAX_ROWS_ENV} {self.max_rows} in one request", 413)
        wanted = (
            [value is True for value in frame["overlay"].tolist()]
            if "overlay" in frame.columns
            else [False] * len(frame)
        )
        results = [{"saliency": "", "overlay": "", "error": ""} for _ in range(len(frame))]
        encoded_rows = {}
        for row, value in enumerate(frame["image"].tolist()):
            try:
                encoded_rows[row] = _image_bytes(value)
            except ValueError as exc:
                results[row]["error"] = f"row {row}: {exc}"
        self._check_request_pixels(encoded_rows, wanted)

        def decode(row: int) -> Decoded:
            data = io.BytesIO(encoded_rows[row])
            return decode_rgb(data, self.size, self.max_pixels, "predict.max_pixels", exif=True, keep_full=wanted[row])

        if {"kind", "metric"} & set(frame.columns):  # density kinds, row by row (salgan/density/inference.py)
            from salgan.density.inference import answer_rows

            answer_rows(self.generator, frame, list(encoded_rows), decode, results, self.options, self.device)
        rows = [row for row in encoded_rows if not (results[row]["saliency"] or results[row]["error"])]
        outcomes = predict_images(self.generator, rows, decode, self.batch_size, self.blur_size, self.device)
        for outcome in outcomes:
            row = outcome.item
            if outcome.error is not None:  # this row alone fails; the others keep their maps
                results[row]["error"] = f"row {row}: {failure_reason(outcome.error)}"
                continue
            results[row]["saliency"] = _base64(encoded(save_map, outcome.saliency))
            if wanted[row]:
                results[row]["overlay"] = _base64(encoded(save_overlay, outcome.decoded.full, outcome.saliency))
        return pd.DataFrame(results, columns=["saliency", "overlay", "error"])

    def _check_request_pixels(self, encoded_rows: dict[int, bytes], wanted: list[bool]) -> None:
        """Refuse (413) a request whose images declare more pixels together than the request may hold, from
        their headers (nothing decoded); a row whose header does not read is left to fail alone."""
        total = 0
        for row, data in encoded_rows.items():
            total += (declared_pixels(data) or 0) * (2 if wanted[row] else 1)
        if total > self.max_request_pixels:
            _refuse(
                f"the request's images declare {total} pixels together (overlay rows count twice), more than "
                f"{MAX_REQUEST_PIXELS_ENV} {self.max_request_pixels}; send fewer or smaller images",
                413,
            )


def _image_bytes(value) -> bytes:
    """A cell of the ``image`` column: bytes, or a base64 string (as JSON carries bytes)."""
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value)
    if isinstance(value, str):
        try:
            return base64.b64decode(value, validate=True)
        except (binascii.Error, ValueError):
            raise ValueError("not base64-encoded bytes") from None
    raise ValueError(f"expected encoded image bytes, got {type(value).__name__}")


def _base64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _refuse(reason: str, status: int = 400):
    """A request the model cannot serve at all: MLflow answers it with ``status`` (400, or 413 for a request
    too large) and this reason."""
    from mlflow.exceptions import MlflowException
    from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE, RESOURCE_EXHAUSTED

    class Refused(MlflowException):
        def get_http_status_code(self) -> int:
            return status

    raise Refused(reason, error_code=INVALID_PARAMETER_VALUE if status == 400 else RESOURCE_EXHAUSTED)
