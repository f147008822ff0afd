"""Batch prediction over S3 (moto's server, a real HTTP endpoint): `salgan predict` from and to S3 prefixes,
one batch in memory at a time, a manifest, reruns that skip what the same model wrote; and the Prefect
flow `salgan-batch-predict` that runs it with the registry's champion."""

import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from salgan import batch, predict_tool
from salgan.models import Generator
from salgan.settings import PredictParams
from tests.conftest import register_weights
from tests.test_predict import make_images
from tests.test_s3 import BUCKET, s3  # noqa: F401 -- the fixture: moto's server and the AWS settings


def upload(client, folder: Path, prefix: str) -> None:
    for path in sorted(folder.rglob("*")):
        if path.is_file():
            client.put_object(
                Bucket=BUCKET, Key=f"{prefix}/{path.relative_to(folder).as_posix()}", Body=path.read_bytes()
            )


def weights_file(folder: Path, seed: int) -> Path:
    torch.manual_seed(seed)
    path = folder / f"generator{seed}.pt"
    torch.save(Generator(width=0.0625).state_dict(), path)
    return path


def read_object(client, key: str) -> bytes:
    return client.get_object(Bucket=BUCKET, Key=key)["Body"].read()


def test_maps_from_an_s3_prefix_to_an_s3_prefix_with_a_manifest_and_reruns_that_skip(s3, tmp_path, capsys):  # noqa: F811
    client = s3["client"]
    sizes = make_images(tmp_path / "images")
    upload(client, tmp_path / "images", "batch/images")
    model = weights_file(tmp_path, 0)
    argv = ["--model", str(model), "--size", "64x48", "--output", f"s3://{BUCKET}/batch/maps", "--overlay"]
    argv += [f"s3://{BUCKET}/batch/images"]
    assert predict_tool.main(argv) == 1  # one input is broken: named, the others written
    assert "batch/images/broken.jpg" in capsys.readouterr().err
    local = tmp_path / "local"
    predict_tool.main(
        ["--model", str(model), "--size", "64x48", "--output", str(local), "--overlay", str(tmp_path / "images")]
    )
    for stem, size in sizes.items():
        data = read_object(client, f"batch/maps/{stem}.png")
        assert data == (local / f"{stem}.png").read_bytes(), stem  # the same maps as from local files
        assert Image.open(client.get_object(Bucket=BUCKET, Key=f"batch/maps/{stem}_overlay.jpg")["Body"]).size == size
    manifest = json.loads(read_object(client, "batch/maps/manifest.json"))
    assert sorted(manifest["written"]) == sorted(f"s3://{BUCKET}/batch/maps/{stem}.png" for stem in sizes)
    assert [f["input"] for f in manifest["failed"]] == [f"s3://{BUCKET}/batch/images/broken.jpg"]
    assert manifest["skipped"] == [] and manifest["model"] == str(model)
    identity = manifest["model_sha256"]
    head = client.head_object(Bucket=BUCKET, Key="batch/maps/photo.png")
    assert head["Metadata"][batch.MODEL_METADATA] == identity

    # The same model again: nothing is predicted or written again; a missing map is written alone.
    client.delete_object(Bucket=BUCKET, Key="batch/maps/tiny.png")
    predict_tool.main(argv)
    again = json.loads(read_object(client, "batch/maps/manifest.json"))
    assert again["written"] == [f"s3://{BUCKET}/batch/maps/tiny.png"] and len(again["skipped"]) == len(sizes) - 1
    assert client.head_object(Bucket=BUCKET, Key="batch/maps/photo.png")["ETag"] == head["ETag"]
    # Another model: every map is written again, tagged with it.
    argv[1] = str(weights_file(tmp_path, 1))
    predict_tool.main(argv)
    other = json.loads(read_object(client, "batch/maps/manifest.json"))
    assert len(other["written"]) == len(sizes) and other["skipped"] == [] and other["model_sha256"] != identity
    assert (
        client.head_object(Bucket=BUCKET, Key="batch/maps/photo.png")["Metadata"][batch.MODEL_METADATA]
        == (other["model_sha256"])
    )


def test_one_batch_at_a_time_from_a_paged_listing(s3, tmp_path):  # noqa: F811
    """Listing pages of 2 keys, batches of 3: every image is predicted once, never more than a batch at a
    time, and the images are read as the batches need them (the listing is not gathered first)."""
    client = s3["client"]
    rng = np.random.default_rng(0)
    for i in range(7):
        image = Image.fromarray(rng.integers(0, 255, (30 + i, 40, 3), dtype=np.uint8))
        path = tmp_path / f"{i}.png"
        image.save(path)
        client.put_object(Bucket=BUCKET, Key=f"paged/in/sub/{i}.png", Body=path.read_bytes())
    generator = Generator(width=0.0625)
    seen, reads = [], []
    generator.register_forward_hook(lambda module, inputs, output: seen.append(len(inputs[0])))
    pages = []
    real_paginator = client.get_paginator

    class PagesOfTwo:  # S3 lists up to 1,000 keys a page; 2 make the paging visible with 7 images
        def __init__(self, name):
            self.paginator = real_paginator(name)

        def paginate(self, **kwargs):
            for page in self.paginator.paginate(**kwargs, PaginationConfig={"PageSize": 2}):
                if kwargs["Prefix"].startswith("paged/in"):  # the input's listing, not the output's
                    pages.append(len(seen))
                yield page

    client.get_paginator = PagesOfTwo
    items = batch.s3_items(client, f"s3://{BUCKET}/paged/in")

    def traced():
        for item in items:
            reads.append(len(seen))  # how many batches had run when this image was read
            yield item

    output = batch.open_output(f"s3://{BUCKET}/paged/out", client)
    manifest = batch.run(generator, (64, 48), traced(), output, PredictParams(batch_size=3), device=torch.device("cpu"))
    assert seen == [3, 3, 1] and len(manifest["written"]) == 7
    assert reads == [0, 0, 0, 1, 1, 1, 2]  # the 4th image is read after the first batch ran
    assert pages == [0, 0, 1, 2]  # and each page is listed then too: the listing is never gathered first
    assert Image.open(client.get_object(Bucket=BUCKET, Key="paged/out/sub/6.png")["Body"]).size == (40, 36)


def test_keys_that_would_escape_a_local_output_are_refused_each_and_a_tiny_image_gets_its_map(s3, tmp_path, capsys):  # noqa: F811
    """S3 keys are names, not paths: ``..``, ``.`` or empty components would put a map outside (or elsewhere
    in) the local output. Each is refused alone and named in the manifest; the other images, a 1x1 PNG
    among them, get their maps; nothing is written outside the output."""
    client = s3["client"]
    rng = np.random.default_rng(0)
    good, tiny = io.BytesIO(), io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (30, 40, 3), dtype=np.uint8)).save(good, "PNG")
    Image.fromarray(np.full((1, 1, 3), 200, dtype=np.uint8)).save(tiny, "PNG")
    escaping = ["esc/in/../../../escaped.png", "esc/in/sub/../../../escaped2.png", "esc/in//rooted.png"]
    escaping += ["esc/in/./dot.png"]
    for key in escaping + ["esc/in/a/good.png", "esc/in/b.png"]:
        client.put_object(Bucket=BUCKET, Key=key, Body=good.getvalue())
    client.put_object(Bucket=BUCKET, Key="esc/in/tiny.png", Body=tiny.getvalue())
    listed = [e["Key"] for e in client.list_objects_v2(Bucket=BUCKET, Prefix="esc/in/")["Contents"]]
    assert set(escaping) <= set(listed)  # the store keeps them as written
    root = tmp_path / "deep" / "er"
    output = root / "maps"
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    argv = ["--model", str(weights_file(tmp_path, 0)), "--size", "64x48", "--output", str(output)]
    assert predict_tool.main([*argv, f"s3://{BUCKET}/esc/in"]) == 1
    err = capsys.readouterr().err
    manifest = json.loads((output / "manifest.json").read_text())
    failed = {f["input"]: f["reason"] for f in manifest["failed"]}
    assert set(failed) == {f"s3://{BUCKET}/{key}" for key in escaping}
    assert failed[f"s3://{BUCKET}/esc/in/../../../escaped.png"] == (
        "the key's name '../../../escaped' has a '..', '.' or empty path component; refused"
    )
    assert failed[f"s3://{BUCKET}/esc/in//rooted.png"] == "the key's name '/rooted' is empty or absolute; refused"
    assert "'./dot' has a '..', '.' or empty path component" in failed[f"s3://{BUCKET}/esc/in/./dot.png"]
    assert all(f"s3://{BUCKET}/{key}" in err for key in escaping)
    assert sorted(p.relative_to(output).as_posix() for p in output.rglob("*") if p.is_file()) == [
        "a/good.png", "b.png", "manifest.json", "tiny.png",
    ]  # fmt: skip
    assert Image.open(output / "tiny.png").size == (1, 1)
    after = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*") if not p.is_relative_to(output))
    assert [p for p in after if p not in before] == [Path("deep"), Path("deep/er"), Path("generator0.pt")]


def test_every_local_write_stays_inside_the_output(tmp_path):
    output = batch.LocalOutput(tmp_path / "maps")
    (tmp_path / "maps").mkdir()
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "maps" / "linked").symlink_to(tmp_path / "elsewhere")
    for name, reason in (("../x.png", "path component"), ("/etc/x.png", "absolute"), ("a//b.png", "empty path")):
        with pytest.raises(ValueError, match=reason):
            output.write(name, b"map", "image/png", "id")
    with pytest.raises(ValueError, match="outside the output"):
        output.write("linked/x.png", b"map", "image/png", "id")
    (tmp_path / "maps" / "planted.png").symlink_to(tmp_path / "elsewhere" / "victim.png")
    with pytest.raises(ValueError, match="a link planted there is not followed"):
        output.write("planted.png", b"map", "image/png", "id")
    assert list((tmp_path / "elsewhere").iterdir()) == []
    assert output.write("sub/ok.png", b"map", "image/png", "id") == str(tmp_path / "maps" / "sub" / "ok.png")


def test_one_item_whose_prediction_fails_fails_alone_and_the_manifest_is_written(tmp_path):
    """A batch whose prediction raises is predicted again item by item: only the item that fails alone
    is named; the others get their maps, and the manifest is written."""
    generator = Generator(width=0.0625)
    poison = 7  # the image whose prediction fails: a model that refuses one input's values

    def refuse(module, inputs):
        if (inputs[0] * 255).round().eq(poison).all(dim=(1, 2, 3)).any():
            raise RuntimeError("this input breaks the model")

    generator.encoder.register_forward_pre_hook(refuse)
    generator.mean.zero_()
    generator.std.fill_(1.0)
    items = []
    for name, value in (("a", 100), ("bad", poison), ("c", 50)):
        buffer = io.BytesIO()
        Image.fromarray(np.full((48, 64, 3), value, dtype=np.uint8)).save(buffer, "PNG")
        items.append(batch.Item(name, name, lambda data=buffer.getvalue(): data))
    output = batch.open_output(str(tmp_path / "maps"), None)
    manifest = batch.run(
        generator, (64, 48), iter(items), output, PredictParams(batch_size=3), device=torch.device("cpu")
    )
    assert [f["input"] for f in manifest["failed"]] == ["bad"] and "this input breaks" in manifest["failed"][0][
        "reason"
    ]
    assert sorted(Path(p).name for p in manifest["written"]) == ["a.png", "c.png"]
    assert json.loads((tmp_path / "maps" / "manifest.json").read_text())["failed"] == manifest["failed"]


@pytest.mark.parametrize(
    "parameters,reason",
    [
        ({"images": "s3://b/in; rm -rf ~", "output": "s3://b/out"}, "images"),
        ({"images": "s3://bucket/in", "output": "/etc"}, "output"),
        ({"images": "s3://bucket/in", "output": "s3://bucket/../x"}, "output"),
        ({"images": "s3://bucket/in", "output": "s3://bucket/out", "model": "--help"}, "model"),
        ({"images": "s3://bucket/in", "output": "s3://bucket/out", "model": "runs:/x/model"}, "model"),
    ],
)
def test_the_flows_parameters_are_checked_before_anything_runs(parameters, reason):
    from flows.batch_predict import batch_predict_command

    with pytest.raises(ValueError, match=f"^{reason} "):
        batch_predict_command(**parameters)


@pytest.mark.slow
def test_the_batch_predict_flow_maps_a_prefix_with_the_champion(s3, harness, tmp_path, monkeypatch):  # noqa: F811
    from flows.batch_predict import salgan_batch_predict

    client = s3["client"]
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("SALGAN_WORKDIRS", str(tmp_path))
    weights = weights_file(tmp_path, 2)
    register_weights(uri, weights, alias="champion")
    images = tmp_path / "images"
    images.mkdir()
    for name, size in (("a.jpg", (120, 90)), ("b.png", (50, 70))):
        Image.fromarray(np.random.default_rng(3).integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)).save(
            images / name
        )
    upload(client, images, "flow/images")
    manifest_url = salgan_batch_predict(f"s3://{BUCKET}/flow/images", f"s3://{BUCKET}/flow/maps", workdir=str(tmp_path))
    assert manifest_url == f"s3://{BUCKET}/flow/maps/manifest.json"
    manifest = json.loads(read_object(client, "flow/maps/manifest.json"))
    assert manifest["model"] == "models:/salgan@champion" and len(manifest["written"]) == 2
    assert Image.open(client.get_object(Bucket=BUCKET, Key="flow/maps/a.png")["Body"]).size == (120, 90)
