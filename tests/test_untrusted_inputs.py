"""Untrusted inputs, round two (issue 25): each class of the probe as a crafted input of its class, refused
with the input and the reason, nothing outside the workspace changed, no secret written anywhere.

The flows' own runs with crafted overrides are in tests/test_flows.py, archives in tests/test_download.py,
S3 keys in tests/test_batch_predict.py, served requests in tests/test_serving.py, signed sources in the
MLflow store in tests/test_tracking.py; here are the checks themselves and the file formats."""

from __future__ import annotations

import json
import os
import stat
import struct
import subprocess
import sys
import tracemalloc
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from salgan import fetch, predict_tool
from salgan.errors import ConfigError
from salgan.fixations import FixationFileError, load_fixations_mat
from salgan.models import Generator
from salgan.settings import PrepareParams, load_params, validate_overrides
from salgan.trust import ALLOWED_KEYS_ENV, check_untrusted
from salgan.urls import forget_secrets, redact_text, remember_secrets
from tests.conftest import write_params_file

REPO = Path(__file__).resolve().parents[1]
MAX_FIXATIONS = PrepareParams().max_fixations


# --- settings that name places, hosts and limits ----------------------------------------------------------


@pytest.fixture
def workspace(tmp_path, monkeypatch):
    """A git checkout with a complete params.yaml and one tracked source file; a victim folder beside it."""
    root = tmp_path / "checkout"
    root.mkdir()
    write_params_file(root / "params.yaml", {})
    (root / "code").mkdir()
    (root / "code" / "stage.py").write_text("print('stage')\n")
    env = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t",
           "GIT_COMMITTER_EMAIL": "t@t"}  # fmt: skip
    for args in (["init", "-q"], ["add", "-A"], ["commit", "-q", "-m", "checkout"]):
        subprocess.run(["git", *args], cwd=root, env=env, check=True, capture_output=True)
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "precious.txt").write_text("keep me")
    (root / "linked").symlink_to(victim)  # a link inside the workspace that points out of it
    monkeypatch.delenv(ALLOWED_KEYS_ENV, raising=False)
    return root


def _check(overrides: dict, root: Path) -> None:
    base = load_params(root / "params.yaml", require_all=False)
    check_untrusted(validate_overrides(overrides, base), base, root)


@pytest.mark.parametrize(
    "overrides,reason",
    [
        (
            {"predict.output": "VICTIM"},
            r"override predict.output: '.*victim' resolves to .*victim, outside the workspace",
        ),
        ({"predict.output": "../victim"}, "override predict.output: '../victim' resolves to .* outside the workspace"),
        (
            {"prepare.output": "linked/maps"},
            "override prepare.output: 'linked/maps' resolves to .*victim/maps, outside",
        ),
        ({"train.output": "."}, r"override train.output: '\.' is the workspace itself"),
        (
            {"package.output": ".git/hooks"},
            r"override package.output: '.git/hooks' lies in the workspace's .git folder",
        ),
        ({"evaluate.output": "code"}, r"override evaluate.output: 'code' holds files of the checkout itself \(tracked"),
        (
            {"mlflow.tracking_uri": "http://collector.example:5000"},
            r"override mlflow.tracking_uri: .* \(trust class host",
        ),
        ({"mlflow.model_name": "another-teams-model"}, "override mlflow.model_name: 'another-teams-model' names a"),
        ({"mlflow.enabled": False}, "override mlflow.enabled: 'False' names a server"),
        ({"download.source": "http://169.254.169.254/latest/meta-data"}, "override download.source: 'http://169"),
        ({"download.cache_dir": "/tmp/shared-cache"}, "override download.cache_dir: .* \\(trust class host\\)"),
        ({"model.encoder_weights": "/etc/passwd"}, "override model.encoder_weights: '/etc/passwd' names a"),
        ({"prepare.max_pixels": 50_000_000 * 10**6}, "override prepare.max_pixels: .* raises the workspace's limit"),
        ({"download.max_entry_bytes": (256 << 20) * 10**6}, "override download.max_entry_bytes: .* raises the"),
        ({"download.max_compression_ratio": 2e8}, "override download.max_compression_ratio: 200000000.0 raises"),
        ({"download.max_archive_entries": 10**9}, "override download.max_archive_entries: .* raises the"),
        ({"prepare.workers": 10**6}, "override prepare.workers: input should be less than or equal to 256"),
        ({"download.sample_train": 10**9}, "override download.sample_train: input should be less than or equal to"),
    ],
)
def test_a_flow_override_outside_its_trust_class_is_refused_with_the_key_and_reason(workspace, overrides, reason):
    overrides = {k: str(workspace.parent / "victim") if v == "VICTIM" else v for k, v in overrides.items()}
    before = (workspace / "params.yaml").read_text()
    with pytest.raises(ConfigError, match=reason):
        _check(overrides, workspace)
    assert (workspace / "params.yaml").read_text() == before
    assert [p.name for p in (workspace.parent / "victim").iterdir()] == ["precious.txt"]


def test_knobs_safe_values_places_inside_lowered_limits_and_unchanged_hosts_pass(workspace):
    _check(
        {
            "train.epochs": 12,
            "train.content_loss": {"kld": 1.0, "cc": -0.2},
            "model.encoder_weights": "imagenet",  # a host's safe value names no host
            "model.width": 1.0,
            "download.source": "salicon",
            "predict.output": "outputs/other_maps",  # a place inside the workspace
            "prepare.output": str(workspace / "data" / "prepared2"),  # absolute, inside
            "prepare.max_pixels": 1_000_000,  # a limit lowered
            "download.max_compression_ratio": 50.0,
            "mlflow.tracking_uri": "sqlite:///mlflow.db",  # the value the workspace already has
        },
        workspace,
    )


def test_the_workers_operator_may_allow_a_host_key_or_a_section(workspace, monkeypatch):
    signed = "https://mirror.example/salicon?X-Amz-Signature=0123456789abcdef"
    with pytest.raises(ConfigError, match=f"{ALLOWED_KEYS_ENV}=download.source"):
        _check({"download.source": signed}, workspace)
    monkeypatch.setenv(ALLOWED_KEYS_ENV, "download.source, mlflow.*")
    _check(
        {"download.source": signed, "mlflow.tracking_uri": "http://mlflow:5000", "mlflow.model_name": "m"}, workspace
    )
    with pytest.raises(ConfigError, match="override model.encoder_weights"):
        _check({"model.encoder_weights": "/etc/passwd"}, workspace)
    monkeypatch.delenv(ALLOWED_KEYS_ENV)
    with pytest.raises(ConfigError, match="override download.source: 'https://mirror.example/salicon' names") as no:
        _check({"download.source": signed}, workspace)
    assert "0123456789abcdef" not in str(no.value)  # the refusal quotes no secret


def test_an_ablation_profile_from_outside_the_checkout_is_held_to_the_trust_classes(workspace, monkeypatch, capsys):
    from salgan import ablation

    monkeypatch.chdir(workspace)
    outside = workspace.parent / "profile.yaml"
    outside.write_text(yaml.safe_dump({"predict": {"output": str(workspace.parent / "victim")}}))
    assert ablation.main(["run", "--profile", str(outside), "--arms", "random-bce", "--dry-run"]) == 2
    out, err = capsys.readouterr()
    assert "predict.output" in err and "outside the workspace" in err and "dvc exp run" not in out
    outside.write_text(yaml.safe_dump({"mlflow": {"tracking_uri": "http://collector.example"}}))
    assert ablation.main(["run", "--profile", str(outside), "--arms", "random-bce", "--dry-run"]) == 2
    assert "trust class host" in capsys.readouterr().err
    inside = workspace / "profiles.yaml"  # the checkout's own profile is the user's: trusted
    inside.write_text(yaml.safe_dump({"mlflow": {"tracking_uri": "http://mlflow.internal"}}))
    assert ablation.main(["run", "--profile", str(inside), "--arms", "random-bce", "--dry-run"]) == 0
    assert "mlflow.tracking_uri='http://mlflow.internal'" in capsys.readouterr().out


# --- a .mat file that inflates past the limit --------------------------------------------------------------


def _element(kind: int, payload: bytes) -> bytes:
    return struct.pack("<II", kind, len(payload)) + payload + bytes(-len(payload) % 8)


def _double_header(name: str, rows: int, cols: int) -> bytes:
    """A MAT v5 double matrix's array flags, dimensions and name sub-elements."""
    flags = _element(6, struct.pack("<II", 6, 0))  # miUINT32: mxDOUBLE_CLASS
    return flags + _element(5, struct.pack("<ii", rows, cols)) + _element(1, name.encode())


def crafted_mat(path: Path, inflated_bytes: int) -> Path:
    """The issue's file: a variable whose declared size is not a multiple of 8, then a compressed array of
    ``inflated_bytes`` of doubles. A reader that pads every size to 8 lands 4 bytes into the next tag, reads
    the zlib header and a stored block's first bytes as a size (0x9C78), and lands inside that stored block
    on a fake tag that sends it past the end of the file; scipy reads on into the compressed array."""
    header = b"MATLAB 5.0 MAT-file".ljust(116, b" ") + bytes(8) + struct.pack("<H", 0x0100) + b"IM"
    resolution = _double_header("resolution", 1, 2) + _element(9, struct.pack("<dd", 480, 640))
    first = struct.pack("<II", 14, len(resolution) + 4) + resolution + b"JUNK"
    rows = inflated_bytes // 16
    head = _double_header("gaze", rows, 2) + struct.pack("<II", 9, rows * 16)
    inner = struct.pack("<II", 14, len(head) + rows * 16) + head
    stored = 0x9D00  # a stored block's length, low byte 0: the padding reader's size is then 0x9C78
    fake_at = 0x9C78 - 3  # it reads at tag + 4 + 8 + 0x9C78; the block's bytes start at tag + 8 + 2 + 5
    plain = bytearray(inner + bytes(stored - len(inner)))
    plain[fake_at : fake_at + 8] = struct.pack("<II", 1, 4 << 20)  # "4 MB of int8", past the end of the file
    adler, deflate = zlib.adler32(plain), zlib.compressobj(9, zlib.DEFLATED, -15)
    chunks = [b"\x78\x9c", b"\x00" + struct.pack("<HH", stored, stored ^ 0xFFFF), bytes(plain)]
    left, zeros = len(inner) + rows * 16 - stored, bytes(1 << 20)
    while left > 0:
        chunks.append(deflate.compress(zeros[: min(left, len(zeros))]))
        adler = zlib.adler32(zeros[: min(left, len(zeros))], adler)
        left -= len(zeros)
    compressed = b"".join([*chunks, deflate.flush(), struct.pack(">I", adler)])
    path.write_bytes(header + first + struct.pack("<II", 15, len(compressed)) + compressed)
    return path


def test_a_mat_file_inflating_past_the_limit_is_refused_without_inflating_it(tmp_path):
    import scipy.io

    path = crafted_mat(tmp_path / "COCO_val2014_000000000001.mat", 64 << 20)
    assert path.stat().st_size < 200_000
    assert scipy.io.loadmat(str(path))["gaze"].shape == (4 << 20, 2)  # what scipy alone inflates: 64 MB
    tracemalloc.start()
    try:
        with pytest.raises(FixationFileError, match=f"{path}: decompresses to more than 16777216 bytes"):
            load_fixations_mat(path, max_fixations=1000)  # the bound: 16 MB
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 24 << 20, f"{peak / 2**20:.0f} MiB held to refuse it"  # the limit, never the 64 MB


def test_a_mat_file_declaring_a_huge_cell_array_is_refused_before_scipy_allocates_it(tmp_path):
    """A cell array's elements are allocated from its declared dimensions before any is read."""
    header = b"MATLAB 5.0 MAT-file".ljust(116, b" ") + bytes(8) + struct.pack("<H", 0x0100) + b"IM"
    flags = _element(6, struct.pack("<II", 1, 0))  # mxCELL_CLASS
    cells = flags + _element(5, struct.pack("<ii", 1 << 30, 1)) + _element(1, b"gaze")
    path = tmp_path / "cells.mat"
    path.write_bytes(header + struct.pack("<II", 14, len(cells)) + cells)
    with pytest.raises(FixationFileError, match="declares 1073741824 elements, more than the 0 bytes left hold"):
        load_fixations_mat(path, MAX_FIXATIONS)


def test_real_fixation_files_still_read_as_before(tmp_path):
    from salgan.sample import generate_sample

    generate_sample(tmp_path / "raw", 2, 1, 1, 0)
    for path in sorted((tmp_path / "raw" / "fixations").rglob("*.mat")):
        parsed = load_fixations_mat(path, MAX_FIXATIONS)
        assert parsed.resolution == (480, 640) and len(parsed.coords) > 0


# --- generators built from shapes -------------------------------------------------------------------------


def _peak_rss_of_predict(model: Path, photo: Path, out: Path) -> tuple[int, str, int]:
    """(exit status, stderr, peak RSS in MiB) of ``salgan predict`` on ``model`` in a process of its own."""
    code = (
        "import resource, sys\nfrom salgan import predict_tool\n"
        f"status = predict_tool.main(['--model', {str(model)!r}, '--output', {str(out)!r}, {str(photo)!r}])\n"
        "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024, file=sys.stderr)\nsys.exit(status)\n"
    )
    run = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(REPO)}
    )
    return run.returncode, run.stderr, int(run.stderr.strip().splitlines()[-1])


def test_an_old_format_file_whose_shape_sets_the_width_is_refused_before_anything_is_allocated(tmp_path):
    """The issue's 1.6 KB file: no architecture entry, conv1_1 expanded (stride 0) to 64 x 3 filters, so a
    width read from its shape would be 3 and building that VGG16 would take about 1 GB. A file without its
    architecture entry is refused outright."""
    photo = tmp_path / "photo.png"
    Image.fromarray(np.full((48, 64, 3), 100, dtype=np.uint8)).save(photo)
    crafted = tmp_path / "crafted.pt"
    torch.save({"encoder.0.weight": torch.zeros(1, 1, 1, 1).expand(64 * 3, 3, 3, 3)}, crafted)
    assert crafted.stat().st_size < 2000
    honest = tmp_path / "honest.pt"
    torch.save(Generator(width=0.0625).state_dict(), honest)
    baseline_status, _, baseline_rss = _peak_rss_of_predict(honest, photo, tmp_path / "maps")
    status, err, rss = _peak_rss_of_predict(crafted, photo, tmp_path / "crafted_maps")
    assert baseline_status == 0 and status == 1
    assert f"--model {crafted}: not a SalGAN generator state_dict" in err
    assert "no 'architecture' entry" in err
    assert rss < baseline_rss + 200, (rss, baseline_rss)  # nothing of the 1 GB network was allocated
    assert not (tmp_path / "crafted_maps").exists() or not any((tmp_path / "crafted_maps").iterdir())


def test_every_tensor_shape_is_checked_against_the_architecture_before_building(tmp_path):
    from salgan.models import generator_from_state_dict

    state = Generator(width=0.0625).state_dict()
    state["decoder.0.weight"] = torch.zeros(1).expand(10**6, 10**3, 3, 3)  # 36 TB if it were real
    with pytest.raises(
        ValueError, match=r"decoder.0.weight has shape \(1000000, 1000, 3, 3\), .* needs \(32, 32, 3, 3\)"
    ):
        generator_from_state_dict(state)
    del state["decoder.0.weight"]
    with pytest.raises(ValueError, match="lacks decoder.0.weight"):
        generator_from_state_dict(state)
    old = {k: v for k, v in Generator(width=0.0625).state_dict().items() if k != "architecture"}
    with pytest.raises(ValueError, match="no 'architecture' entry"):  # the network a file holds is recorded
        generator_from_state_dict(old)


# --- MLflow model folders -----------------------------------------------------------------------------------


def _salgan_model(folder: Path, mlmodel: str) -> Path:
    (folder / "extra_files").mkdir(parents=True)
    torch.save(Generator(width=0.0625).state_dict(), folder / "extra_files" / "generator.pt")
    (folder / "MLmodel").write_text(mlmodel)
    return folder


OURS = "metadata:\n  kind: salgan-generator\n  input_size: [64, 48]\n"


@pytest.mark.parametrize(
    "mlmodel,reason",
    [
        (OURS + "flavors: [python_function, pytorch]\n", "MLmodel's flavors is not a mapping of flavor settings"),
        (OURS + "flavors: {python_function: 7}\n", "MLmodel's flavors is not a mapping of flavor settings"),
        (
            "a: &a [x, x, x, x, x, x, x, x, x]\nb: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a]\n"
            "c: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b]\nd: &d [*c, *c, *c, *c, *c, *c, *c, *c, *c]\n"
            + OURS
            + "flavors: {x: {code: *d}}\n",
            "MLmodel uses YAML anchors or aliases",
        ),
        ("- just\n- a list\n", "MLmodel is not a mapping"),
        ("x" * (2 << 20), "larger than 1048576 bytes"),
    ],
    ids=["flavors a list", "a flavor not a mapping", "an alias bomb", "not a mapping", "huge"],
)
def test_a_crafted_mlmodel_is_refused_with_a_named_reason(tmp_path, mlmodel, reason, capsys):
    model = _salgan_model(tmp_path / "model", mlmodel)
    photo = tmp_path / "photo.png"
    Image.fromarray(np.full((48, 64, 3), 100, dtype=np.uint8)).save(photo)
    assert predict_tool.main(["--model", str(model), "--output", str(tmp_path / "maps"), str(photo)]) == 1
    err = capsys.readouterr().err
    assert reason in err and str(model) in err and "Traceback" not in err


def test_an_extra_files_folder_that_is_a_link_is_refused(tmp_path, capsys):
    elsewhere = _salgan_model(tmp_path / "elsewhere", OURS + "flavors: {}\n")
    model = tmp_path / "model"
    model.mkdir()
    (model / "MLmodel").write_text(OURS + "flavors: {}\n")
    (model / "extra_files").symlink_to(elsewhere / "extra_files")
    photo = tmp_path / "photo.png"
    Image.fromarray(np.full((48, 64, 3), 100, dtype=np.uint8)).save(photo)
    assert predict_tool.main(["--model", str(model), "--output", str(tmp_path / "maps"), str(photo)]) == 1
    assert "extra_files is a link; salgan reads only the model's own files" in capsys.readouterr().err
    assert predict_tool.main(["--model", str(elsewhere), "--output", str(tmp_path / "maps"), str(photo)]) == 0


# --- one tiny image ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("size", [(1, 1), (2, 1), (1, 3), (2, 2)])
def test_any_image_of_at_least_one_pixel_gets_a_map_beside_the_others(tmp_path, size):
    torch.manual_seed(0)
    weights = tmp_path / "generator.pt"
    torch.save(Generator(width=0.0625).state_dict(), weights)
    images = tmp_path / "images"
    images.mkdir()
    Image.fromarray(np.full((48, 64, 3), 120, dtype=np.uint8)).save(images / "good.png")
    Image.fromarray(np.full((size[1], size[0], 3), 200, dtype=np.uint8)).save(images / "tiny.png")
    args = ["--model", str(weights), "--size", "64x48", "--batch-size", "2", "--output", str(tmp_path / "maps")]
    assert predict_tool.main([*args, str(images)]) == 0
    assert Image.open(tmp_path / "maps" / "tiny.png").size == size
    assert Image.open(tmp_path / "maps" / "good.png").size == (64, 48)


def test_the_blur_shrinks_to_the_largest_kernel_that_fits_the_map():
    from salgan.inference import fitting_blur, gaussian_blur, postprocess

    assert [fitting_blur(5, s) for s in [(1, 1), (2, 9), (3, 3), (480, 640)]] == [1, 3, 5, 5]
    maps = torch.rand(1, 1, 6, 6)
    sigma3 = 0.3 * ((3 - 1) * 0.5 - 1) + 0.8
    expected = gaussian_blur(torch.nn.functional.interpolate(maps, size=(2, 2), mode="bicubic"), 3, sigma3)
    assert torch.allclose(postprocess(maps, (2, 2), 5), expected.clamp(0, 1)[:, 0])
    one = postprocess(maps, (1, 1), 5)  # no blur at all: the resized value itself
    assert torch.allclose(one, torch.nn.functional.interpolate(maps, size=(1, 1), mode="bicubic").clamp(0, 1)[:, 0])


# --- redaction ------------------------------------------------------------------------------------------------


@pytest.fixture
def known_secret():
    forget_secrets()
    remember_secrets(
        "https://mirror.example/sal(icon)?X-Amz-Credential=AKID%2FEXAMPLE7&X-Amz-Signature=5ecret5ignature"
    )
    yield "5ecret5ignature"
    forget_secrets()


@pytest.mark.parametrize(
    "text,expected",
    [
        ("GET https://h/a(1)/b?X-Amz-Signature=5ecret5ignature failed", "GET https://h/a(1)/b failed"),
        ("(see https://h/p?sig=5ecret5ignature)", "(see https://h/p)"),
        (
            "Max retries exceeded with url: /salicon/images.zip?X-Amz-Signature=5ecret5ignature (Caused by X)",
            "Max retries exceeded with url: /salicon/images.zip (Caused by X)",
        ),
        ("token 5ecret5ignature in json", "token (redacted) in json"),
        ("credential AKID/EXAMPLE7 and AKID%2FEXAMPLE7", "credential (redacted) and (redacted)"),
        ("https://user:pw@host/x", "https://host/x"),
        ("is it? yes: 3 = 3", "is it? yes: 3 = 3"),
    ],
)
def test_one_redaction_for_urls_bare_queries_and_the_secrets_the_process_knows(known_secret, text, expected):
    assert redact_text(text) == expected


def test_an_interrupted_downloads_sidecar_holds_no_query_and_only_its_owner_reads_it(tmp_path, known_secret):
    part = fetch._Partial(tmp_path / "images.zip", "https://mirror.example/images.zip?X-Amz-Signature=5ecret5ignature")
    part.start('"etag-1"')
    note = tmp_path / "images.zip.part.json"
    assert json.loads(note.read_text()) == {"origin": "https://mirror.example/images.zip", "validator": '"etag-1"'}
    assert stat.S_IMODE(note.stat().st_mode) == 0o600
    again = fetch._Partial(tmp_path / "images.zip", "https://mirror.example/images.zip?X-Amz-Signature=resigned")
    assert again.validator() == '"etag-1"'  # the same object signed anew still resumes
