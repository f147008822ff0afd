"""Density models (model.output: density): the log-density, the nll term, LL and IG as pysaliency defines
them, the metric-specific maps of Kuemmerer et al. 2018 and the submission validator, on small arrays."""

import io
import math
import zipfile

import numpy as np
import pytest
import torch
from scipy.special import logsumexp

from salgan.density import maps
from salgan.density.metrics import information_gain, log_likelihood, split_scores
from salgan.density.submission import SubmissionError, validate_archive
from salgan.losses import ContentLoss
from salgan.metrics import METRIC_NAMES, sim
from salgan.models import build_generator, generator_from_state_dict, load_generator
from salgan.models.architecture import architecture_of
from salgan.models.density import DensityGenerator, normalise, resize_log_density
from salgan.settings import params_from_dict

ODD_SIZES = [(1, 1), (5, 3), (47, 63), (49, 65), (481, 641), (333, 517)]


def _density_model(blur: bool = True) -> DensityGenerator:
    """A width-1/16 density model on 64x48 with a fitted-looking prior and weights moved off their zero start."""
    torch.manual_seed(0)
    rows, cols = torch.meshgrid(torch.arange(48.0), torch.arange(64.0), indexing="ij")
    prior = normalise((-((rows - 24) ** 2 + (cols - 32) ** 2) / 200.0)[None, None])[0, 0]
    params = params_from_dict(
        {
            "model": {"output": "density", "width": 0.0625, "density_blur": blur},
            "train": {"content_loss": {"nll": 1.0}},
        }
    )
    model = build_generator(params.model, prior)
    with torch.no_grad():
        torch.nn.init.normal_(model.output.weight, std=0.3)
    return model.eval()


def test_the_density_sums_to_one_at_the_training_size_and_after_resizing_to_odd_sizes():
    model = _density_model()
    images = torch.rand(2, 3, 48, 64)
    with torch.no_grad():
        log_density = model(images, return_logits=True)
        peak_normalised = model(images)
    assert log_density.shape == (2, 1, 48, 64) and log_density.dtype == torch.float32
    assert torch.logsumexp(log_density.double().flatten(1), dim=1).abs().max() < 1e-5
    assert log_density[0].std() > 0.05  # not the prior alone: the image moves it
    # what the discriminator and the PNG maps see: the density over its maximum
    assert torch.allclose(peak_normalised, torch.exp(log_density - log_density.amax(dim=(2, 3), keepdim=True)))
    for size in ODD_SIZES:
        resized = resize_log_density(log_density, size)
        assert resized.shape == (2, 1, *size)
        assert np.abs(logsumexp(resized.double().flatten(1).numpy(), axis=1)).max() <= 0.01, size
        assert np.abs(logsumexp(resized.flatten(1).numpy(), axis=1)).max() < 1e-4, size  # float32 rounding only


def test_an_untrained_density_model_is_its_prior_and_the_prior_travels_with_the_weights(tmp_path):
    """The last convolution starts small (std 0.01, DeepGaze's start from the centre bias), so an untrained
    model's log-density is its prior to within a hundredth of a nat; the prior is a buffer of
    the weights file, whose architecture entry records the output kind, so a loaded model carries both."""
    trained = _density_model(blur=True)
    untrained = build_generator(
        params_from_dict(
            {"model": {"output": "density", "width": 0.0625}, "train": {"content_loss": {"nll": 1.0}}}
        ).model,
        trained.log_prior[0, 0].clone(),
    ).eval()
    with torch.no_grad():
        start = untrained(torch.rand(1, 3, 48, 64), return_logits=True)
    assert torch.allclose(start[0, 0], normalise(trained.log_prior)[0, 0], atol=1e-2)

    torch.save(trained.state_dict(), tmp_path / "generator.pt")
    loaded = load_generator(tmp_path / "generator.pt").generator
    assert type(loaded) is DensityGenerator and loaded.blur and loaded.prior_shape == [48, 64]
    assert torch.equal(loaded.log_prior, trained.log_prior)
    images = torch.rand(1, 3, 48, 64)
    with torch.no_grad():
        assert torch.equal(loaded(images, return_logits=True), trained(images, return_logits=True))
    assert architecture_of(trained.state_dict()) == {
        "encoder": "vgg16", "width": 0.0625, "output": "density", "prior": [48, 64], "blur": True,
    }  # fmt: skip
    # a map model's weights are as before: nothing recorded beyond encoder and width
    map_model = build_generator(params_from_dict({"model": {"width": 0.0625}}).model)
    assert architecture_of(map_model.state_dict()) == {"encoder": "vgg16", "width": 0.0625}
    assert type(generator_from_state_dict(map_model.state_dict())).__name__ == "Generator"


def _with_architecture(state: dict, architecture: dict) -> dict:
    import json

    encoded = torch.tensor(list(json.dumps(architecture).encode()), dtype=torch.uint8)
    return state | {"architecture": encoded}


@pytest.mark.parametrize(
    "fields,reason",
    [
        ({"output": "gan"}, "architecture output 'gan' is not one of map, density"),
        ({"output": "density", "prior": [10**6, 10**6]}, "is not [H, W] of sides 1 to 8192"),
        ({"output": "density", "prior": "big"}, "is not [H, W]"),
        ({"output": "density", "prior": [48.0, 64.0]}, "is not [H, W]"),
        ({"output": "density", "prior": [48, 64], "blur": "yes"}, "architecture blur 'yes' is not true or false"),
        ({"output": "density", "prior": [48, 64], "code": "import os"}, "unknown field 'code'"),
        ({"output": "map", "prior": [48, 64]}, "a map model's architecture records no prior or blur"),
        ({"output": "density", "prior": [96, 128], "blur": True}, "log_prior has shape (1, 1, 48, 64)"),
        ({"output": "density", "prior": [48, 64], "blur": False}, "has an unexpected entry 'blur_log_sigma'"),
    ],
)
def test_a_crafted_output_kind_in_the_architecture_entry_is_refused_before_anything_is_built(fields, reason):
    state = _density_model(blur=True).state_dict()
    crafted = _with_architecture(state, {"encoder": "vgg16", "width": 0.0625} | fields)
    with pytest.raises(ValueError, match="not a SalGAN generator state_dict") as error:
        generator_from_state_dict(crafted)
    assert reason in str(error.value)


# --- the nll content-loss term ----------------------------------------------------------------------------


def test_the_nll_term_is_the_fixations_negative_log_likelihood_in_nats_per_fixation():
    counts = torch.tensor([[0.0, 2.0], [1.0, 0.0]]).view(1, 1, 2, 2)
    # a density model's output is its log-density: p = [1/6, 1/2; 1/6, 1/6]
    log_density = torch.log(torch.tensor([[1 / 6, 1 / 2], [1 / 6, 1 / 6]])).view(1, 1, 2, 2)
    nll = ContentLoss({"nll": 1.0}, output="density")(log_density, torch.zeros_like(counts), counts)
    assert nll.item() == pytest.approx((2 * math.log(2) + math.log(6)) / 3, rel=1e-6)
    # a map model's map read as a density: sigmoid(z) = [0.2, 0.8; 0.5, 0.5] -> [0.1, 0.4; 0.25, 0.25]
    probs = torch.tensor([[0.2, 0.8], [0.5, 0.5]])
    logits = torch.log(probs / (1 - probs)).view(1, 1, 2, 2)
    map_counts = torch.tensor([[1.0, 2.0], [0.0, 1.0]]).view(1, 1, 2, 2)
    nll = ContentLoss({"nll": 1.0})(logits, torch.zeros_like(counts), map_counts)
    assert nll.item() == pytest.approx(-(math.log(0.1) + 2 * math.log(0.4) + math.log(0.25)) / 4, rel=1e-5)
    # per fixation over the batch: an image with 3 fixations weighs three times one with 1
    batch = torch.log(torch.tensor([[0.5, 0.5, 0.0 + 1e-30, 0.0 + 1e-30], [0.25, 0.25, 0.25, 0.25]])).view(2, 1, 2, 2)
    batch_counts = torch.tensor([[1.0, 0, 0, 0], [3.0, 0, 0, 0]]).view(2, 1, 2, 2)
    nll = ContentLoss({"nll": 1.0}, output="density")(batch, torch.zeros_like(batch), batch_counts)
    assert nll.item() == pytest.approx((math.log(2) + 3 * math.log(4)) / 4, rel=1e-6)
    # beside other terms: the weighted sum
    both = ContentLoss({"nll": 1.0, "nss": -0.5}, output="density")(log_density, torch.zeros_like(counts), counts)
    from salgan.losses import nss_term

    nss = nss_term(torch.exp(log_density - log_density.max()), counts).mean()
    assert both.item() == pytest.approx((2 * math.log(2) + math.log(6)) / 3 - 0.5 * nss.item(), rel=1e-6)
    with pytest.raises(ValueError, match="no bce"):
        ContentLoss({"nll": 1.0, "bce": 1.0}, output="density")
    with pytest.raises(ValueError, match="the nll content-loss term needs the batch's fixation counts"):
        ContentLoss({"nll": 1.0})(logits, counts)


# --- LL and IG ----------------------------------------------------------------------------------------------


def _pysaliency_ll_and_ig(log_densities, coords, offsets, log_baseline):
    """pysaliency's definitions written out (matthias-k/pysaliency models.py: log_likelihoods reads
    log_density[y_int, x_int]; information_gains divides the difference by np.log(2); average='fixation' is
    np.mean over all fixations; saliency-benchmarking's LL is IG over the UniformModel, -log(H) - log(W))."""
    own, base, uniform = [], [], []
    for n, log_density in enumerate(log_densities):
        ys, xs = coords[offsets[n] : offsets[n + 1]].T
        own += list(log_density[ys, xs])
        base += list(log_baseline[ys, xs])
        uniform += [-np.log(log_density.shape[0]) - np.log(log_density.shape[1])] * len(ys)
    own, base, uniform = map(np.array, (own, base, uniform))
    return np.mean((own - uniform) / np.log(2)), np.mean((own - base) / np.log(2))


def _random_log_density(rng, shape):
    scores = rng.normal(size=shape) * 2
    return scores - logsumexp(scores)


def test_ll_and_ig_are_pysaliencys_in_bits_per_fixation():
    rng = np.random.default_rng(3)
    shape = (7, 9)
    densities = [_random_log_density(rng, shape) for _ in range(3)]
    baseline = _random_log_density(rng, shape)
    counts = [1, 4, 2]
    offsets = np.concatenate([[0], np.cumsum(counts)])
    coords = np.stack([rng.integers(0, 7, offsets[-1]), rng.integers(0, 9, offsets[-1])], axis=1)
    rows, means = split_scores(densities, coords, offsets, baseline)
    ll, ig = _pysaliency_ll_and_ig(densities, coords, offsets, baseline)
    assert means["log_likelihood"] == pytest.approx(ll, abs=1e-12)
    assert means["density_information_gain"] == pytest.approx(ig, abs=1e-12)
    for n, row in enumerate(rows):  # per image, the same definitions on that image's fixations alone
        one = _pysaliency_ll_and_ig([densities[n]], coords[offsets[n] : offsets[n + 1]], [0, counts[n]], baseline)
        assert (row["log_likelihood"], row["density_information_gain"]) == pytest.approx(one, abs=1e-12)
        assert log_likelihood(densities[n], coords[offsets[n] : offsets[n + 1]]) == pytest.approx(one[0], abs=1e-12)
    # means over fixations, not images: they differ here
    assert means["log_likelihood"] != pytest.approx(np.mean([row["log_likelihood"] for row in rows]))

    uniform = np.full(shape, -np.log(63.0))
    assert log_likelihood(uniform, coords) == pytest.approx(0.0, abs=1e-12)
    assert information_gain(baseline, coords, baseline) == 0.0
    _, same = split_scores([baseline] * 3, coords, offsets, baseline)
    assert same["density_information_gain"] == 0.0


def test_a_log_density_that_is_not_one_is_refused_naming_the_image():
    rng = np.random.default_rng(0)
    good = _random_log_density(rng, (4, 4))
    coords, offsets = np.array([[0, 0], [1, 1]]), np.array([0, 1, 2])
    with pytest.raises(ValueError, match=r"image 1 \(b\): log-density: is not normalised: logsumexp 0.693"):
        split_scores([good, good + np.log(2)], coords, offsets, good, names=["a", "b"])
    with pytest.raises(ValueError, match="NaN"):
        log_likelihood(np.where(good > -10, good, np.nan) * np.nan, coords)
    with pytest.raises(ValueError, match="outside the 4x4"):
        log_likelihood(good, np.array([[4, 0]]))


# --- metric-specific maps -------------------------------------------------------------------------------


def _reflect_blur(image: np.ndarray, sigma: float) -> np.ndarray:
    """A Gaussian blur written out: weights exp(-k^2 / 2 sigma^2) for |k| <= int(4 sigma + 0.5), normalised,
    and samples past an edge mirrored (d c b a | a b c d | d c b a), row by row then column by column."""
    radius = int(4 * sigma + 0.5)
    weights = np.exp(-0.5 * (np.arange(-radius, radius + 1) / sigma) ** 2)
    weights /= weights.sum()

    def mirror(i: int, n: int) -> int:
        period = 2 * n
        i %= period
        return i if i < n else period - 1 - i

    def along(a: np.ndarray) -> np.ndarray:
        out = np.zeros_like(a)
        n = a.shape[0]
        for i in range(n):
            for k, w in zip(range(-radius, radius + 1), weights, strict=True):
                out[i] += w * a[mirror(i + k, n)]
        return out

    return along(along(image).T).T


def test_each_metric_map_is_its_closed_form_on_a_small_density():
    rng = np.random.default_rng(5)
    log_density = _random_log_density(rng, (6, 8))
    log_centre = _random_log_density(rng, (6, 8))
    p, c = np.exp(log_density), np.exp(log_centre)
    assert set(maps.MAP_OF) == set(METRIC_NAMES)
    closed = {
        "density": p,  # AUC (Judd, Borji), NSS, IG
        "shuffled": (p / c) / (p / c).sum(),  # sAUC: the density over the centre-bias density
        "blurred": _reflect_blur(p, 1.5) / _reflect_blur(p, 1.5).sum(),  # CC, KLD: the expected ground truth
    }
    for metric, kind in maps.MAP_OF.items():
        if kind == "sim":
            continue
        made = maps.metric_map(log_density, metric, log_centre, sigma=1.5)
        np.testing.assert_allclose(made, closed[kind], rtol=1e-10, atol=1e-15, err_msg=metric)


def test_the_sim_map_beats_the_blurred_density_on_fresh_simulated_ground_truth():
    """SIM has no closed form: the map found numerically must score a higher mean SIM (salgan.metrics.sim)
    against simulated ground-truth maps it never saw than the blurred density it started from."""
    rows, cols = np.mgrid[0:24, 0:32]
    p = np.exp(-((rows - 12) ** 2 + (cols - 16) ** 2) / 80.0) + 6 * np.exp(-((rows - 6) ** 2 + (cols - 24) ** 2) / 3.0)
    log_density = np.log(p / p.sum())
    made = maps.metric_map(log_density, "sim", sigma=1.5, n_fixations=12, seed=1)
    assert made.min() > 0 and made.sum() == pytest.approx(1.0)
    blurred = maps.blurred_map(log_density, 1.5)
    fresh = maps.empirical_maps(maps.density_map(log_density), 1.5, 12, 40, np.random.default_rng(123))
    mean_sim = [np.mean([sim(m, reference.reshape(24, 32)) for reference in fresh]) for m in (made, blurred)]
    assert maps.expected_sim(made, fresh) == pytest.approx(mean_sim[0], rel=1e-5)
    assert mean_sim[0] > mean_sim[1] + 0.002, mean_sim  # 0.531 against 0.526
    np.testing.assert_array_equal(made, maps.metric_map(log_density, "sim", sigma=1.5, n_fixations=12, seed=1))
    with pytest.raises(ValueError, match="the SIM map of a 1x4097 image"):  # bounded memory, whatever the input
        maps.sim_map(np.full((1, 4097), -np.log(4097)), 1.5, 12)


# --- the submission's validator ---------------------------------------------------------------------------


def _npy(array) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=True)
    return buffer.getvalue()


def _archive(path, members: dict) -> None:
    with zipfile.ZipFile(path, "w") as archive:
        for name, data in members.items():
            archive.writestr(name, data)


def test_the_submission_validator_refuses_a_map_that_is_not_normalised_or_has_the_wrong_shape_or_name(tmp_path):
    rng = np.random.default_rng(1)
    names, sizes = ["COCO_test2014_000000000001", "COCO_test2014_000000000002"], {}
    sizes = {names[0]: (9, 7), names[1]: (5, 3)}  # (W, H)
    good = {f"{n}.npy": _npy(_random_log_density(rng, (h, w)).astype(np.float32)) for n, (w, h) in sizes.items()}
    _archive(tmp_path / "ok.zip", good)
    assert validate_archive(tmp_path / "ok.zip", names, sizes) == [f"{n}.npy" for n in names]

    cases = {
        "not normalised": {f"{names[0]}.npy": _npy(np.zeros((7, 9), np.float32))},
        "has shape 9x7, the image is 7x9": {f"{names[0]}.npy": _npy(_random_log_density(rng, (9, 7)))},
        "1 of 2 log-densities missing": {f"{names[0][:-1]}9.npy": good[f"{names[0]}.npy"]},
        "not a numpy .npy array": {f"{names[0]}.npy": _npy(np.array([{"a": 1}], dtype=object))},
        "holds -inf": {f"{names[0]}.npy": _npy(np.where(np.eye(7, 9) > 0, np.log(1 / 7), -np.inf).astype(np.float32))},
        "more than a 7x9 array holds": {f"{names[0]}.npy": _npy(np.zeros((700, 900), np.float32))},
        "expected a float array": {f"{names[0]}.npy": _npy(np.zeros((7, 9), np.int32))},
    }
    for reason, replaced in cases.items():
        members = {k: v for k, v in good.items() if k != f"{names[0]}.npy"} | replaced
        _archive(tmp_path / "bad.zip", members)
        with pytest.raises(SubmissionError, match="not a MIT/Tuebingen density submission") as error:
            validate_archive(tmp_path / "bad.zip", names, sizes)
        assert reason in str(error.value), (reason, str(error.value))
    _archive(tmp_path / "extra.zip", good | {"notes.txt": b"hi"})
    with pytest.raises(SubmissionError, match="1 unexpected member"):
        validate_archive(tmp_path / "extra.zip", names, sizes)
    (tmp_path / "broken.zip").write_bytes(b"PK not really")
    with pytest.raises(SubmissionError, match="not a readable zip archive"):
        validate_archive(tmp_path / "broken.zip", names, sizes)
