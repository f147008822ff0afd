"""salgan/datasets/salicon.py describes SALICON's raw tree once: the sample writes it, download checks it,
prepare reads it."""

from salgan import download, prepare
from salgan.datasets.salicon import FILE_NAME, SaliconTree, image_name
from salgan.sample import generate_sample


def test_the_sample_download_and_prepare_agree_on_the_tree(tmp_path):
    names = generate_sample(tmp_path / "raw", 2, 1, 1, seed=3)
    tree = SaliconTree(tmp_path / "raw")
    assert tree.is_tree() and tree.present_splits() == ["train", "val", "test"]
    assert SaliconTree.kinds("test") == ("images",) and SaliconTree.kinds("val") == ("images", "maps", "fixations")
    name = names["val"][0]
    assert FILE_NAME.fullmatch(f"{name}.jpg").group(1) == "val"
    for kind in tree.kinds("val"):
        assert tree.file(kind, "val", name).is_file()
    assert not tree.folder("maps", "test").exists()
    assert download.check_layout(tree.root) == {
        "train": {"images": 2, "maps": 2, "fixations": 2},
        "val": {"images": 1, "maps": 1, "fixations": 1},
        "test": {"images": 1},
    }
    samples, missing = prepare.find_samples(tree.root, "val")
    assert missing == [] and [(s.image, s.map, s.fixations) for s in samples] == [
        (tree.file("images", "val", name), tree.file("maps", "val", name), tree.file("fixations", "val", name))
    ]
    assert image_name("test", 42) == "COCO_test2014_000000000042"
