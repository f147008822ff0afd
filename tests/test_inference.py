"""salgan/inference.py: the one batch loop (decode, batch, predict, isolate failures) under every prediction."""

import numpy as np
import pytest
import torch

from salgan.imaging import Decoded
from salgan.inference import BatchedPredictions, failure_reason, postprocess, predict_images
from salgan.models import Generator


@pytest.fixture
def generator():
    torch.manual_seed(0)
    return Generator(width=0.0625).eval()


def rows(count: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(count, 32, 48, 3), dtype=np.uint8)


def test_each_item_gets_the_generators_map_post_processed_batch_by_batch(generator):
    images = rows(5)
    batches = []
    generator.register_forward_hook(lambda module, inputs, output: batches.append(len(inputs[0])))
    decode = lambda i: Decoded(images[i], (64, 96))  # noqa: E731
    outcomes = list(predict_images(generator, range(5), decode, 2, 5, torch.device("cpu")))
    assert batches == [2, 2, 1] and [o.item for o in outcomes] == [0, 1, 2, 3, 4]
    with torch.no_grad():  # the same maps, computed here without the loop
        maps = generator(torch.as_tensor(images).permute(0, 3, 1, 2).float() / 255.0)
    expected = postprocess(maps, (64, 96), 5).numpy()
    for outcome, want in zip(outcomes, expected, strict=True):
        assert outcome.error is None and outcome.saliency.shape == (64, 96)
        np.testing.assert_allclose(outcome.saliency, want, atol=1e-6)


def test_an_undecodable_item_fails_at_once_and_alone(generator):
    images = rows(3)

    def decode(i):
        if i == 1:
            raise ValueError("declares 9x9 pixels, more than predict.max_pixels 4")
        return Decoded(images[i], (32, 48))

    outcomes = list(predict_images(generator, range(3), decode, 8, 0, torch.device("cpu")))
    assert [(o.item, o.error is None) for o in outcomes] == [(1, False), (0, True), (2, True)]
    assert failure_reason(outcomes[0].error) == "declares 9x9 pixels, more than predict.max_pixels 4"
    assert failure_reason(RuntimeError("out of memory")) == "RuntimeError: out of memory"


def test_batched_predictions_raise_a_failure_instead_of_hiding_it(generator):
    images, sizes = rows(4), np.full((4, 2), [32, 48])
    predictions = BatchedPredictions(generator, images, sizes, 3, 0, torch.device("cpu"))
    first = predictions[0]
    np.testing.assert_allclose(predictions[3], BatchedPredictions(generator, images[3:], sizes[3:], 3, 0)[0], atol=1e-6)
    np.testing.assert_array_equal(predictions[0], first)
    generator.register_forward_pre_hook(lambda module, inputs: (_ for _ in ()).throw(RuntimeError("broken")))
    with pytest.raises(RuntimeError, match="broken"):
        BatchedPredictions(generator, images, sizes, 3, 0, torch.device("cpu"))[0]
