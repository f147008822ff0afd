"""``salgan predict``: from the registry on images of many modes, from a weights file, and as the stage."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from mlflow import MlflowClient
from PIL import Image

from salgan import predict, predict_tool
from salgan.imaging import jet
from salgan.models import Generator
from salgan.settings import Params, to_dict
from salgan.urls import REGISTRY_URI
from tests.conftest import register_weights, write_params_file, write_prepared


@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("weights") / "generator.pt"
    torch.save(Generator(width=0.0625).state_dict(), path)
    return path


@pytest.fixture(scope="module")
def champion_store(tmp_path_factory, weights):
    """A sqlite store whose model 'salgan' has version 1 as champion, trained at 64x48."""
    root = tmp_path_factory.mktemp("store")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(root)
        register_weights(uri, weights, alias="champion")
    return uri


def make_images(folder: Path) -> dict[str, tuple[int, int]]:
    """Images of many modes and formats; returns output stem -> (width, height). Plus one broken JPEG."""
    rng = np.random.default_rng(0)
    rgb = Image.fromarray(rng.integers(0, 255, (80, 100, 3), dtype=np.uint8))
    folder.mkdir(parents=True)
    (folder / "sub").mkdir()
    rgb.save(folder / "photo.jpg")
    rgb.resize((64, 50)).convert("L").save(folder / "sub" / "grey.png")
    rgba = rgb.resize((70, 60)).convert("RGBA")
    rgba.putalpha(128)
    rgba.save(folder / "sub" / "alpha.png")
    rgb.resize((90, 70)).convert("CMYK").save(folder / "cmyk.jpg")
    Image.fromarray((rng.random((40, 60)) * 65535).astype(np.uint16)).save(folder / "deep.png")
    rgb.resize((50, 50)).convert("P", palette=Image.Palette.ADAPTIVE).save(folder / "palette.png")
    rgb.resize((33, 21)).save(folder / "tiny.bmp")
    rgb.resize((48, 36)).save(folder / "web.webp")
    rgb.resize((40, 30)).save(folder / "scan.tiff")
    data = (folder / "photo.jpg").read_bytes()
    (folder / "broken.jpg").write_bytes(data[: len(data) // 2])  # truncated
    (folder / "notes.txt").write_text("not an image")  # not picked up from a directory
    return {
        "photo": (100, 80),
        "sub/grey": (64, 50),
        "sub/alpha": (70, 60),
        "cmyk": (90, 70),
        "deep": (60, 40),
        "palette": (50, 50),
        "tiny": (33, 21),
        "web": (48, 36),
        "scan": (40, 30),
    }


def test_predict_from_the_registry_champion(tmp_path, monkeypatch, capsys, champion_store):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", champion_store)
    monkeypatch.chdir(tmp_path)
    expected = make_images(tmp_path / "in")
    out = tmp_path / "out"
    argv = ["--model", "models:/salgan@champion", "--output", str(out), "--overlay", "--batch-size", "4", "in"]
    assert predict_tool.main(argv) == 1
    err = capsys.readouterr().err
    assert "broken.jpg" in err and err.count("skipped") == 1
    for stem, size in expected.items():
        with Image.open(out / f"{stem}.png") as saliency:
            assert (saliency.mode, saliency.size) == ("L", size), stem
        with Image.open(out / f"{stem}_overlay.jpg") as heat:
            assert (heat.mode, heat.size) == ("RGB", size), stem
    assert not (out / "broken.png").exists()
    written = sorted(p.relative_to(out).as_posix() for p in out.rglob("*.png"))
    assert written == sorted(f"{stem}.png" for stem in expected)


def test_model_input_size_comes_from_the_mlflow_metadata(champion_store, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", champion_store)
    generator, size = predict_tool.load_model("models:/salgan/1", Params(), None)
    assert size == (64, 48) and isinstance(generator, Generator)
    assert predict_tool.load_model("models:/salgan/1", Params(), (128, 96))[1] == (128, 96)


def test_weights_file_glob_and_pixel_limits(tmp_path, monkeypatch, capsys, weights):
    """predict.max_pixels (from params.yaml where there is one) refuses an input from its header; Pillow's
    own decompression-bomb error still refuses what is past its hard limit."""
    monkeypatch.chdir(tmp_path)
    write_params_file(tmp_path / "params.yaml", {"predict": {"max_pixels": 1500}})
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # Pillow refuses above 2000
    folder = tmp_path / "pics"
    folder.mkdir()
    for name, side in (("ok", 20), ("large", 40), ("refused", 50)):
        Image.new("RGB", (side, side), (200, 100, 50)).save(folder / f"{name}.png")
    argv = ["--model", str(weights), "--output", "out", "--size", "64x48", "--blur", "0", "pics/*.png"]
    assert predict_tool.main(argv) == 1
    err = capsys.readouterr().err
    assert "large.png: declares 40x40 pixels, more than predict.max_pixels 1500" in err
    assert "refused.png: DecompressionBombError" in err
    with Image.open(tmp_path / "out" / "ok.png") as saliency:
        assert saliency.size == (20, 20)


def test_missing_input_and_bad_model_are_reported(tmp_path, monkeypatch, capsys, weights):
    monkeypatch.chdir(tmp_path)
    assert predict_tool.main(["--model", str(tmp_path / "nope.pt"), "--output", "out", "x.jpg"]) == 1
    assert "nope.pt" in capsys.readouterr().err
    (tmp_path / "junk.pt").write_bytes(b"junk")
    assert predict_tool.main(["--model", "junk.pt", "--output", "out", "x.jpg"]) == 1
    assert "junk.pt: not a PyTorch weights file" in capsys.readouterr().err
    assert predict_tool.main(["--model", str(weights), "--output", "out", "missing.jpg"]) == 1
    assert "missing.jpg: no such file" in capsys.readouterr().err


def test_stage_mode_writes_one_map_per_test_image(tmp_path, monkeypatch, weights):
    monkeypatch.chdir(tmp_path)
    params = Params()
    params.train.data = str(write_prepared(tmp_path / "prepared"))
    params.train.output = str(tmp_path / "models")
    params.predict.output = str(tmp_path / "outputs" / "test_maps")
    params.mlflow.enabled = False
    Path(params.train.output).mkdir()
    (Path(params.train.output) / "generator.pt").write_bytes(weights.read_bytes())
    params_file = tmp_path / "params.yaml"
    params_file.write_text(yaml.safe_dump(to_dict(params)))
    assert predict.main(["--params", str(params_file)]) == 0
    names = json.loads((Path(params.train.data) / "test" / "names.json").read_text())
    written = sorted(p.name for p in Path(params.predict.output).iterdir())
    assert written == sorted(f"{n}.png" for n in names)
    for name in names:
        with Image.open(Path(params.predict.output) / f"{name}.png") as saliency:
            assert (saliency.mode, saliency.size) == ("L", (640, 480))
    left = sorted(p.name for p in (tmp_path / "outputs").iterdir())
    assert left == [".test_maps.lock", "test_maps"]  # no staging folder left; the lock file stays


def test_jet_runs_blue_to_red():
    colours = jet(np.array([0.0, 0.5, 1.0]))
    assert colours[0, 2] > 100 and colours[0, 0] == 0  # low: blue
    assert colours[1, 1] == 255  # middle: green-ish
    assert colours[2, 0] > 100 and colours[2, 2] == 0  # high: red


def test_a_second_prediction_from_the_champion_downloads_nothing_until_the_alias_moves(tmp_path, monkeypatch):
    """Registry lookups are cached by version: the alias is resolved each time (one metadata call), the
    weights are fetched once per version, and a cached copy whose weights no longer match is fetched again."""
    from salgan.tracking import models as tracked

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("SALGAN_CACHE_DIR", str(tmp_path / "cache"))
    client = MlflowClient(uri)
    versions = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        path = tmp_path / f"generator{seed}.pt"
        torch.save(Generator(width=0.0625).state_dict(), path)
        versions.append(register_weights(uri, path))
    client.set_registered_model_alias("salgan", "champion", versions[0])
    fetched = []
    download = tracked.download_model
    monkeypatch.setattr(tracked, "download_model", lambda *args: fetched.append(args[0]) or download(*args))
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 60, 3), dtype=np.uint8)).save("photo.png")

    def champion_map(out: str) -> np.ndarray:
        assert predict_tool.main(["--model", "models:/salgan@champion", "--output", out, "photo.png"]) == 0
        return np.asarray(Image.open(Path(out) / "photo.png"))

    first, again = champion_map("a"), champion_map("b")
    assert fetched == ["models:/salgan/1"] and np.array_equal(first, again)
    client.set_registered_model_alias("salgan", "champion", versions[1])  # the alias moves
    moved = champion_map("c")
    assert fetched == ["models:/salgan/1", "models:/salgan/2"] and not np.array_equal(moved, first)
    cached = next((tmp_path / "cache" / "models").glob("*/salgan/2/extra_files/generator.pt"))
    cached.write_bytes((tmp_path / "generator0.pt").read_bytes())  # a damaged or swapped cache entry
    assert np.array_equal(champion_map("d"), moved) and fetched[-1] == "models:/salgan/2" and len(fetched) == 3
    assert REGISTRY_URI.fullmatch("models:/../2") is None  # a name never steers a cache path


FETCHER = """
import json, os, sys, time
from pathlib import Path

from salgan.layout import LOGGED_WEIGHTS, sha256_file
from salgan.settings import Params
from salgan.tracking import models as tracked

me, other = sys.argv[1], sys.argv[2]
tracked.download_model("models:/salgan/1", Params(), Path(me + "-warm"))  # imports done before the race
downloads = []
download = tracked.download_model
tracked.download_model = lambda *args: downloads.append(args[0]) or download(*args)
Path(me + ".ready").touch()
deadline = time.time() + 300
while not Path(other + ".ready").exists() and time.time() < deadline:  # both ask at the same moment
    time.sleep(0.01)
with tracked.fetched_model("models:/salgan/1", Params()) as folder:
    weights = folder / LOGGED_WEIGHTS
    inode, digest = os.stat(weights).st_ino, sha256_file(weights)
    time.sleep(1.5)  # reading the model while the other process fetches
    kept = weights.is_file() and os.stat(weights).st_ino == inode and sha256_file(weights) == digest
print(json.dumps({"downloads": downloads, "kept": kept}))
"""


def test_two_processes_fetching_one_version_download_it_once_and_never_swap_it_under_each_other(tmp_path):
    """Two gates (or predictions) opening the same version at once share one cache folder: the second waits
    for the first fetch and reuses it, so neither has the folder it is reading removed or replaced."""
    import subprocess
    import sys

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    torch.save(Generator(width=0.0625).state_dict(), tmp_path / "generator.pt")
    register_weights(uri, tmp_path / "generator.pt")
    repo = Path(__file__).resolve().parents[1]
    env = {"PYTHONPATH": str(repo), "PATH": str(Path(sys.executable).parent), "HOME": str(tmp_path)}
    env |= {"MLFLOW_TRACKING_URI": uri, "SALGAN_CACHE_DIR": str(tmp_path / "cache")}
    processes = [
        subprocess.Popen(
            [sys.executable, "-c", FETCHER, me, other], cwd=tmp_path, env=env, stdout=subprocess.PIPE, text=True
        )
        for me, other in (("a", "b"), ("b", "a"))
    ]
    reports = [json.loads(process.communicate(timeout=600)[0].strip().splitlines()[-1]) for process in processes]
    assert [process.returncode for process in processes] == [0, 0]
    assert all(report["kept"] for report in reports), reports
    assert sorted(sum((report["downloads"] for report in reports), [])) == ["models:/salgan/1"], reports


@pytest.mark.parametrize("size", [3, 5, 9])
def test_the_blur_gives_torchvisions_values_without_importing_it(size):
    """salgan.inference writes torchvision's Gaussian blur out (the stages skip torchvision's 3 s start-up):
    same kernel, same padding, bit for bit; and the stages' modules import no torchvision."""
    import subprocess
    import sys

    from torchvision.transforms.functional import gaussian_blur as torchvision_blur

    from salgan.inference import gaussian_blur

    maps = torch.rand(3, 1, 48, 64, generator=torch.Generator().manual_seed(size))
    sigma = 0.3 * ((size - 1) * 0.5 - 1) + 0.8
    assert torch.equal(gaussian_blur(maps, size, sigma), torchvision_blur(maps, [size, size], [sigma, sigma]))
    if size == 5:
        modules = "salgan.train, salgan.evaluate, salgan.predict, salgan.package, salgan.models"
        code = f"import sys, {modules}; print('torchvision' in sys.modules)"
        assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).stdout.strip() == "False"


def test_a_size_the_models_encoder_cannot_take_is_a_usage_error(tmp_path, monkeypatch, capsys):
    """--size accepts multiples of the smallest stride (16); a ResNet's 32 is checked once the model says
    which encoder it has (they used to drift: any multiple of 16 passed, and the ResNet then refused it)."""
    monkeypatch.chdir(tmp_path)
    weights = tmp_path / "resnet.pt"
    torch.save(Generator(width=1.0, encoder="resnet18").state_dict(), weights)
    Image.fromarray(np.zeros((40, 60, 3), dtype=np.uint8)).save("photo.png")
    argv = ["--model", str(weights), "--output", "maps", "photo.png"]
    assert predict_tool.main([*argv, "--size", "48x64"]) == 2
    assert "--size 48x64: resnet18 needs sides that are multiples of 32, got [48, 64]" in capsys.readouterr().err
    assert predict_tool.main([*argv, "--size", "64x32"]) == 0
    assert Image.open(tmp_path / "maps" / "photo.png").size == (60, 40)


def test_the_store_params_yaml_names_is_used_with_no_mlflow_variable_set(tmp_path, monkeypatch, weights):
    """Registering and fetching go to mlflow.tracking_uri with MLFLOW_TRACKING_URI unset: nothing reaches
    MLflow's own default store (sqlite:///mlflow.db in the current folder), since salgan sets no
    process-wide MLflow state and resolves models:/ URIs through its own client."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("SALGAN_CACHE_DIR", str(tmp_path / "cache"))
    (tmp_path / "store").mkdir()
    uri = f"sqlite:///{tmp_path / 'store' / 'registry.db'}"
    version = register_weights(uri, weights, alias="champion")
    params = write_params_file(tmp_path / "params.yaml", {"mlflow": {"tracking_uri": uri}})
    Image.fromarray(np.random.default_rng(1).integers(0, 255, (40, 60, 3), dtype=np.uint8)).save("photo.png")
    for model in ("models:/salgan@champion", f"models:/salgan/{version}"):
        argv = ["--params", str(params), "--model", model, "--output", "registry", "--size", "64x48", "photo.png"]
        assert predict_tool.main(argv) == 0
    argv = ["--params", str(params), "--model", str(weights), "--output", "file", "--size", "64x48", "photo.png"]
    assert predict_tool.main(argv) == 0
    assert np.array_equal(np.asarray(Image.open("registry/photo.png")), np.asarray(Image.open("file/photo.png")))
    assert not (tmp_path / "mlflow.db").exists()  # MLflow's default store was never opened
