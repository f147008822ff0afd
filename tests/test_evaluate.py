import json
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest

from salgan.evaluate import evaluate, summary_table
from salgan.metrics import METRIC_NAMES, TABLE_I
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


def test_per_image_rows_and_the_figures(evaluated):
    root, _ = evaluated
    lines = (root / "reports" / "per_image.csv").read_text().splitlines()
    assert lines[0].startswith("index,name,n_fixations,")
    assert len(lines) == 1 + 8
    from PIL import Image

    with Image.open(root / "reports" / "progression.gif") as gif:
        assert gif.n_frames == 8  # one frame per epoch
    for name in ("examples.png", "progression.png", "losses.png"):
        with Image.open(root / "reports" / name) as figure:
            assert figure.format == "PNG" and min(figure.size) > 200


def test_example_rows_run_from_the_best_through_the_median_to_the_worst():
    from salgan.figures import pick_rows

    nss = [0.5, 2.0, -1.0, 1.0, 3.0, 0.0, 1.5]  # best index 4, worst index 2, median 1.0 at index 3
    assert pick_rows(nss, 3) == [4, 3, 2]
    assert pick_rows(nss, 7) == [4, 1, 6, 3, 0, 5, 2]
    assert pick_rows(nss, 10) == [4, 1, 6, 3, 0, 5, 2]


class _Page(HTMLParser):
    """The metric table's rows and the images of reports/report.html."""

    def __init__(self):
        super().__init__()
        self.rows, self.images, self._row, self._cell = {}, [], None, None

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "tr" and "data-metric" in attrs:
            self._row = self.rows.setdefault(attrs["data-metric"], [])
        elif tag == "td" and self._row is not None:
            self._cell = ""
        elif tag == "img":
            self.images.append(attrs)

    def handle_data(self, data):
        if self._cell is not None:
            self._cell += data

    def handle_endtag(self, tag):
        if tag == "td" and self._cell is not None:
            self._row.append(self._cell)
            self._cell = None
        elif tag == "tr":
            self._row = None


def test_the_report_page_holds_the_metrics_and_embeds_every_figure(evaluated):
    import base64
    import io

    from PIL import Image

    root, metrics = evaluated
    page = _Page()
    page.feed((root / "reports" / "report.html").read_text())
    for key in METRIC_NAMES:  # model, centre bias, ceiling, then the two Table I rows
        model, center, ceiling, *published = page.rows[key]
        assert float(model) == pytest.approx(metrics[key], abs=5e-5)
        assert float(center) == pytest.approx(metrics["baselines"]["center_bias"][key], abs=5e-5)
        assert float(ceiling) == pytest.approx(metrics["baselines"]["ground_truth"][key], abs=5e-5)
        assert len(published) == 2
    assert page.rows["nss"][3:] == ["2.459", "1.581"]  # SalGAN and the seed paper's random encoder
    assert [image["id"] for image in page.images] == ["examples", "progression", "animation", "losses"]
    for image in page.images:
        header, data = image["src"].split(",", 1)
        assert header in ("data:image/png;base64", "data:image/gif;base64")  # self-contained: no file, no network
        Image.open(io.BytesIO(base64.b64decode(data))).verify()


def test_summary_table_lists_every_metric(evaluated):
    _, metrics = evaluated
    table = summary_table(metrics)
    assert all(name in table for name in METRIC_NAMES) and "center_bias" in table


def test_evaluate_scores_exactly_the_maps_the_predict_stage_writes(evaluated, tmp_path):
    """One post-processing for both stages: evaluate's val maps, quantised as PNGs are, equal the PNGs the
    predict stage's code writes for the same images."""
    from PIL import Image

    from salgan.evaluate import score_generator
    from salgan.imaging import to_uint8
    from salgan.inference import write_split_maps
    from salgan.models import load_generator

    root, _ = evaluated
    params = tiny_params(root)
    generator = load_generator(root / "models" / "generator.pt").generator
    _, _, predictions = score_generator(generator, params)
    names = write_split_maps(generator, root / "prepared", "val", tmp_path, params.predict)
    assert len(names) == len(predictions) == 8
    for name, prediction in zip(names, predictions, strict=True):
        assert np.array_equal(np.asarray(Image.open(tmp_path / f"{name}.png")), to_uint8(prediction))


def test_evaluate_streams_one_batch_of_maps_at_a_time(evaluated):
    """Scoring predicts each batch once, in order, and holds no more than one batch of full-size maps;
    an image asked for again later (the example grid) costs one more batch, and gives the same map."""
    from salgan.evaluate import score_generator, scoring_inputs
    from salgan.layout import NpyRows
    from salgan.models import load_generator

    root, metrics = evaluated
    params = tiny_params(root)
    params.evaluate.batch_size = 3
    generator = load_generator(root / "models" / "generator.pt").generator
    batches = []
    generator.register_forward_hook(lambda module, inputs, output: batches.append(len(inputs[0])))
    val, common = scoring_inputs(params)
    assert isinstance(val.images, NpyRows) and isinstance(val.maps_full, NpyRows)
    _, means, predictions = score_generator(generator, params, val, common)
    assert batches == [3, 3, 2]  # 8 val images, each predicted once
    assert len(predictions._maps) <= 3
    assert means["nss"] == pytest.approx(metrics["nss"])  # the same scores as the stage's run
    first = predictions[0].copy()
    assert batches == [3, 3, 2, 3] and np.array_equal(predictions[0], first)


def _chromium() -> str:
    import shutil

    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if path is None:
        pytest.skip("no Chromium here (.ci/run installs Debian's chromium package: apt-get install chromium)")
    return path


def _in_browser(url: str, expression: str):
    """Load ``url`` in headless Chromium and return the value of a JavaScript ``expression`` (may await),
    through the DevTools protocol."""
    import subprocess
    import tempfile
    import time
    import urllib.request

    from websockets.sync.client import connect

    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run"]
    flags += ["--disable-background-networking", "--disable-component-update", "--disable-sync"]
    with tempfile.TemporaryDirectory() as profile:
        browser = subprocess.Popen(
            [_chromium(), *flags, f"--user-data-dir={profile}", "--remote-debugging-port=0", "about:blank"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,  # its own process group, so that its helpers stop with it
        )
        try:
            port_file, deadline = Path(profile) / "DevToolsActivePort", time.monotonic() + 60
            while not (port_file.exists() and port_file.read_text().strip()):
                assert time.monotonic() < deadline and browser.poll() is None, "Chromium did not start"
                time.sleep(0.1)
            port, page = port_file.read_text().split()[0], None
            while page is None:  # on a busy machine the port is up before the first page is listed
                targets = json.load(urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=10))
                page = next((target for target in targets if target["type"] == "page"), None)
                assert page or time.monotonic() < deadline, "Chromium listed no page"
                time.sleep(0 if page else 0.1)
            with connect(page["webSocketDebuggerUrl"], max_size=None, open_timeout=30) as socket:
                calls = iter(range(1, 100))

                def call(method: str, **params) -> dict:
                    number = next(calls)
                    socket.send(json.dumps({"id": number, "method": method, "params": params}))
                    while True:
                        message = json.loads(socket.recv(timeout=60))
                        if message.get("id") == number:
                            return message["result"]
                        if message.get("method") == "Page.loadEventFired":
                            loaded.append(True)

                loaded: list[bool] = []
                call("Page.enable")
                call("Page.navigate", url=url)
                while not loaded:
                    message = json.loads(socket.recv(timeout=60))
                    loaded += [True] if message.get("method") == "Page.loadEventFired" else []
                result = call("Runtime.evaluate", expression=expression, awaitPromise=True, returnByValue=True)
                return result["result"]["value"]
        finally:
            _stop_group(browser)


def _stop_group(process) -> None:
    """Kill ``process`` and every process of its group, and wait until none is left: Chromium's renderer
    and zygote helpers otherwise go on writing to the profile folder while it is being removed."""
    import os
    import signal
    import time

    process.kill()
    process.wait()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            os.killpg(process.pid, signal.SIGKILL)
        except ProcessLookupError:
            return
        time.sleep(0.1)


@pytest.mark.slow
def test_the_report_page_shows_every_image_and_the_metrics_in_a_real_browser(evaluated):
    root, metrics = evaluated
    shown = _in_browser(
        (root / "reports" / "report.html").as_uri(),
        """(async () => {
            const images = [...document.images];
            const decoded = await Promise.all(images.map(i => i.decode().then(() => true, () => false)));
            const rows = Object.fromEntries([...document.querySelectorAll("#metrics tr[data-metric]")]
                .map(r => [r.dataset.metric, [...r.querySelectorAll("td")].map(c => c.textContent)]));
            return {images: images.map((i, k) => [i.id, decoded[k], i.naturalWidth]), rows};
        })()""",
    )
    assert [image[0] for image in shown["images"]] == ["examples", "progression", "animation", "losses"]
    assert all(ok and width > 100 for _, ok, width in shown["images"]), shown["images"]
    # the model, then each baseline of metrics.json, then the seed paper's Table I rows
    columns = [(metrics, 5e-5), *((b, 5e-5) for b in metrics["baselines"].values())]
    columns += [(published, 5e-4) for published in TABLE_I.values()]
    for key in METRIC_NAMES:
        assert len(shown["rows"][key]) == len(columns)
        for cell, (values, precision) in zip(shown["rows"][key], columns, strict=True):
            expected = values.get(key)
            assert cell == "-" if expected is None else float(cell) == pytest.approx(expected, abs=precision)
