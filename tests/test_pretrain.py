"""pretrain.py: targets per third of the photo, and a weights file that train.py's VGG16 loads."""

import numpy as np

import pretrain
from features import build_vgg16


def test_targets_name_each_third_of_the_photo():
    scene = {"objects": [{"color": "red", "kind": "star", "position": "left"},
                         {"color": "blue", "kind": "star", "position": "right"}]}
    target, count = pretrain.scene_targets(scene)
    assert count == 1  # two objects: class 1
    assert {label for label, on in zip(pretrain.LABELS, target) if on} == {
        "left:red", "left:star", "right:blue", "right:star"}


def test_scenes_are_drawn_in_colour_and_deterministically():
    images, targets, counts = pretrain.make_scenes(24, 32, progress=False)
    assert images.shape == (24, 32, 32, 3) and images.dtype == np.uint8
    assert (images[..., 0] != images[..., 1]).any(axis=(1, 2)).all()  # never greyscale
    assert set(counts.tolist()) <= {0, 1, 2, 3} and (targets.sum(1) >= 2).all()  # a colour and a kind at least
    again, _, _ = pretrain.make_scenes(24, 32, progress=False)
    np.testing.assert_array_equal(images, again)


def test_a_short_run_writes_weights_that_the_feature_extractor_loads(tmp_path):
    out = tmp_path / "vgg.weights.h5"
    assert pretrain.main(["--num-images", "64", "--num-val", "32", "--image-size", "32", "--epochs", "1",
                          "--out", str(out)]) == 0
    trained, random = build_vgg16(str(out), 64), build_vgg16("none", 64)  # any image size: the base is convolutional
    moved = [np.abs(a - b).max() for a, b in zip(trained.get_weights(), random.get_weights())]
    assert len(moved) == 26 and max(moved) > 0  # every conv layer's kernel and bias, trained away from the seed


def test_folding_batch_norm_gives_plain_vgg16_computing_the_same_features():
    trained = pretrain.build_batch_norm_vgg16(32)
    rng = np.random.default_rng(0)
    for layer in trained.layers:  # statistics far from the identity, so that folding has work to do
        if "_bn" in layer.name:
            gamma, beta, mean, variance = layer.get_weights()
            layer.set_weights([rng.uniform(0.5, 2, gamma.shape), rng.normal(0, 0.5, beta.shape),
                               rng.normal(0, 1, mean.shape), rng.uniform(0.5, 3, variance.shape)])
    images = rng.normal(0, 50, (2, 32, 32, 3)).astype(np.float32)
    expected = np.asarray(trained(images, training=False))
    folded = np.asarray(pretrain.fold_batch_norm(trained, 32)(images))
    assert np.abs(expected).max() > 1 and np.abs(folded - expected).max() < 1e-4 * np.abs(expected).max()


def test_weights_are_stored_in_half_precision(tmp_path):
    import h5py

    out = tmp_path / "vgg.weights.h5"
    vgg = build_vgg16("none", 32)
    pretrain.save_half(vgg, out)
    with h5py.File(out) as file:
        dtypes = set()
        file.visititems(lambda name, item: dtypes.add(str(item.dtype)) if isinstance(item, h5py.Dataset) else None)
    assert dtypes == {"float16"}
    loaded = build_vgg16(str(out), 32)
    assert all(np.allclose(a, b, rtol=1e-3, atol=1e-4) for a, b in zip(loaded.get_weights(), vgg.get_weights()))
