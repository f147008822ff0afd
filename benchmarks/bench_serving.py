"""Benchmark: the registered model served over HTTP (`mlflow models serve`) against the same model called
in process (`mlflow.pyfunc.load_model(...).predict`), for one 640x480 JPEG per request and for batches of 8.

A generator (random weights: the cost does not depend on their values) is logged as salgan's pyfunc model
in a temporary sqlite store and made champion; `mlflow models serve -m models:/salgan@champion
--env-manager local` starts on 127.0.0.1 with one worker. Requests are sent one after another (the
latency a client sees; throughput = requests / wall time); the in-process calls run the same DataFrames.
The overhead ratio is the served p50 over the in-process p50 (JSON, base64 and HTTP on top of the model).

    python benchmarks/bench_serving.py --quick      # CPU: width 0.125 at 128x96, 10 requests per case
    python benchmarks/bench_serving.py              # width 1.0 at 256x192, 30 requests per case

Needs MLflow besides torch (the package's own environment). Prints a table and, last, one JSON line.
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import numpy as np
import torch
from common import load_average, result_line, usable_cpus
from PIL import Image


def jpeg(seed: int) -> bytes:
    """A 640x480 JPEG of smooth shapes (compresses like a photo, unlike noise)."""
    rng = np.random.default_rng(seed)
    rows, cols = np.mgrid[0:480, 0:640]
    image = np.zeros((480, 640, 3))
    for _ in range(6):
        centre, radius, colour = rng.uniform((0, 0), (480, 640)), rng.uniform(30, 150), rng.uniform(0, 255, 3)
        weight = np.exp(-((rows - centre[0]) ** 2 + (cols - centre[1]) ** 2) / (2 * radius**2))[..., None]
        image = image * (1 - weight) + colour * weight
    buffer = io.BytesIO()
    Image.fromarray(image.astype(np.uint8)).save(buffer, "JPEG", quality=90)
    return buffer.getvalue()


def timings(call, repeats: int) -> list[float]:
    call()  # warm-up: the first call pays for lazy imports and allocations
    out = []
    for _ in range(repeats):
        start = time.perf_counter()
        call()
        out.append(time.perf_counter() - start)
    return out


def summary(seconds: list[float], images: int) -> dict:
    ordered = sorted(seconds)
    return {
        "p50_ms": round(statistics.median(ordered) * 1e3, 2),
        "p95_ms": round(ordered[min(len(ordered) - 1, int(0.95 * len(ordered)))] * 1e3, 2),
        "requests_per_s": round(len(seconds) / sum(seconds), 2),
        "images_per_s": round(len(seconds) * images / sum(seconds), 2),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="width 0.125 at 128x96, 10 requests per case")
    parser.add_argument("--requests", type=int, help="timed requests per case (10 quick, 30 full)")
    args = parser.parse_args(argv)
    width, size = (0.125, (128, 96)) if args.quick else (1.0, (256, 192))
    repeats = args.requests or (10 if args.quick else 30)

    import mlflow
    import pandas as pd
    from mlflow import MlflowClient

    from salgan.layout import sha256_file
    from salgan.models import Generator
    from salgan.settings import PredictParams
    from salgan.tracking.models import log_generator
    from salgan.tracking.registry import register
    from salgan.tracking.store import experiment_id

    with tempfile.TemporaryDirectory(prefix="bench-serving-") as tmp:
        root = Path(tmp)
        uri = f"sqlite:///{root / 'mlflow.db'}"
        os.environ["MLFLOW_TRACKING_URI"] = uri  # the served model and mlflow.pyfunc find the registry here
        torch.manual_seed(0)
        weights = root / "generator.pt"
        torch.save(Generator(width).state_dict(), weights)
        os.chdir(root)
        client = MlflowClient(uri)
        run_id = client.create_run(experiment_id(client, "bench-serving")).info.run_id
        model_id = log_generator(client, run_id, weights, size, PredictParams())
        version = register(client, "salgan", model_id, run_id, sha256_file(weights), {})
        client.set_registered_model_alias("salgan", "champion", version)

        images = [jpeg(seed) for seed in range(8)]
        frames = {1: pd.DataFrame({"image": images[:1]}), 8: pd.DataFrame({"image": images})}
        encoded = [[base64.b64encode(image).decode()] for image in images]
        bodies = {n: json.dumps({"dataframe_split": {"columns": ["image"], "data": encoded[:n]}}) for n in frames}
        model = mlflow.pyfunc.load_model("models:/salgan@champion")
        results = {}
        for n, frame in frames.items():
            results[f"in_process_{n}"] = summary(timings(lambda frame=frame: model.predict(frame), repeats), n)

        port = _free_port()
        command = [sys.executable, "-m", "mlflow", "models", "serve", "-m", "models:/salgan@champion"]
        command += ["--env-manager", "local", "-h", "127.0.0.1", "-p", str(port), "-w", "1"]
        # MLflow starts its scoring server as `uvicorn` from PATH: this interpreter's, even without an active venv
        env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
        server = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
        try:
            _wait(f"http://127.0.0.1:{port}/ping", server)
            for n, body in bodies.items():
                post = _poster(f"http://127.0.0.1:{port}/invocations", body, n)
                results[f"served_{n}"] = summary(timings(post, repeats), n)
        finally:
            server.terminate()
            server.wait(timeout=30)
    for n in frames:
        results[f"served_{n}"]["overhead_vs_in_process"] = round(
            results[f"served_{n}"]["p50_ms"] / results[f"in_process_{n}"]["p50_ms"], 2
        )
    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else f"CPU ({usable_cpus()} cores)"
    print(f"{device}, torch {torch.__version__}: width {width}, model input {size[0]}x{size[1]}, 640x480 JPEGs")
    print(f"{'case':<16}{'p50 ms':>10}{'p95 ms':>10}{'req/s':>9}{'img/s':>9}{'overhead':>10}")
    for name, row in results.items():
        overhead = f"{row['overhead_vs_in_process']:.2f}x" if "overhead_vs_in_process" in row else "-"
        print(
            f"{name:<16}{row['p50_ms']:>10.1f}{row['p95_ms']:>10.1f}{row['requests_per_s']:>9.2f}"
            f"{row['images_per_s']:>9.2f}{overhead:>10}"
        )
    config = {"width": width, "size": list(size), "requests": repeats, "image": [640, 480]}
    print(result_line("serving", device, config=config, load_average=load_average(), results=results))
    return 0


def _poster(url: str, body: str, n: int):
    def post() -> None:
        request = urllib.request.Request(url, data=body.encode(), headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=300) as response:
            predictions = json.loads(response.read())["predictions"]
        assert len(predictions) == n and not any(p["error"] for p in predictions), predictions[0]["error"]

    return post


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _wait(url: str, server: subprocess.Popen) -> None:
    deadline = time.monotonic() + 180
    while True:
        if server.poll() is not None or time.monotonic() > deadline:
            raise SystemExit("mlflow models serve did not start")
        try:
            urllib.request.urlopen(url, timeout=2).close()
            return
        except OSError:
            time.sleep(0.5)


if __name__ == "__main__":
    raise SystemExit(main())
