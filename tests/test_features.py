import io

import numpy as np
import pytest
from PIL import Image

import features
from features import (
    FeatureCache,
    ImageError,
    decode_batches,
    extract_features,
    letterbox,
    load_image,
    load_images,
    preprocess,
)


def save(image, path, **options):
    image.save(path, **options)
    return path


def test_letterbox_keeps_aspect_and_centres(tmp_path):
    wide = Image.new("RGB", (300, 100), (255, 0, 0))
    boxed = np.asarray(letterbox(wide, 150))
    assert boxed.shape == (150, 150, 3)
    assert (boxed[75, 75] == [255, 0, 0]).all()
    assert (boxed[0, 75] == 0).all() and (boxed[149, 75] == 0).all()  # black bands above and below
    assert (boxed[50:100, :, 0] > 200).all()  # 300×100 becomes 150×50, in the middle rows
    assert (boxed[:50].max(), boxed[100:].max()) == (0, 0)


@pytest.mark.parametrize(
    "make",
    [
        lambda: Image.new("L", (40, 30), 128),
        lambda: Image.new("RGBA", (40, 30), (0, 0, 255, 128)),
        lambda: Image.new("RGB", (40, 30), "green").convert("P"),
        lambda: Image.new("CMYK", (40, 30), (0, 255, 255, 0)),
        lambda: Image.fromarray(np.arange(1200, dtype=np.uint16).reshape(30, 40) * 50),  # 16-bit grey
        lambda: Image.new("RGB", (1, 1), "white"),
        lambda: Image.new("RGB", (4000, 50), "white"),
    ],
    ids=["L", "RGBA", "P", "CMYK", "I;16", "1x1", "4000x50"],
)
def test_odd_images_load_as_letterboxed_rgb(tmp_path, make):
    image = make()
    path = save(image, tmp_path / ("x.tif" if image.mode in ("CMYK", "I;16") else "x.png"))
    array = load_image(path, 32)
    assert array.shape == (32, 32, 3) and array.dtype == np.uint8


def test_sixteen_bit_images_are_stretched_not_clipped(tmp_path):
    ramp = Image.fromarray((np.arange(64, dtype=np.uint16).reshape(1, 64).repeat(64, 0) * 1000))
    array = load_image(save(ramp, tmp_path / "ramp.png"), 64)
    assert array[:, 0].max() < 10 and array[:, -1].min() > 240


def test_transparent_pixels_show_white(tmp_path):
    array = load_image(save(Image.new("RGBA", (10, 10), (0, 0, 0, 0)), tmp_path / "clear.png"), 10)
    assert (array == 255).all()


def test_a_photo_at_several_sizes_is_each_size_read_alone(tmp_path):
    """A judge's letterbox of a photo (predict.py, the page) is the one its own cache would hold."""
    image = Image.new("RGB", (640, 480), "white")
    image.paste((255, 0, 0), (100, 100, 300, 200))
    path = save(image, tmp_path / "photo.jpg")
    alone = [load_image(path, 32), load_image(path, 150)]
    for source in (path, io.BytesIO(path.read_bytes())):  # an upload is read again from its start
        for got, expected in zip(load_images(source, [32, 150], "upload"), alone):
            np.testing.assert_array_equal(got, expected)
    bad = save(image, tmp_path / "bad.jpg")
    bad.write_bytes(b"not a jpeg")
    ((chunk, rows, images, errors, also),) = decode_batches([str(path), str(bad)], np.arange(2), 32, 8,
                                                            also_sizes=(150, 48))
    assert rows.tolist() == [0] and list(errors) == [1] and images.shape == (1, 32, 32, 3)
    assert [array.shape for array in also] == [(1, 150, 150, 3), (1, 48, 48, 3)]
    np.testing.assert_array_equal(also[0][0], alone[1])


def test_exif_orientation_is_applied(tmp_path):
    image = Image.new("RGB", (60, 20), "white")
    image.paste((255, 0, 0), (0, 0, 20, 20))  # red on the left
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90° clockwise to display"
    array = load_image(save(image, tmp_path / "rotated.jpg", exif=exif), 60)
    # Displayed upright, the photo is 20 wide and 60 tall, red at the top.
    assert array[5, 30, 0] > 200 and array[5, 30, 1] < 80
    assert array[30, 5].max() < 10  # letterbox band on the left


@pytest.mark.parametrize(
    "content, reason",
    [(b"", "empty file"), (b"hello, not an image", "not a readable image")],
)
def test_unreadable_files_raise_image_error(tmp_path, content, reason):
    path = tmp_path / "bad.jpg"
    path.write_bytes(content)
    with pytest.raises(ImageError, match=reason):
        load_image(path, 32)


def test_png_data_behind_a_jpg_name_loads(tmp_path):
    path = save(Image.new("RGB", (40, 30), (0, 200, 0)), tmp_path / "really_a_png.jpg", format="PNG")
    assert load_image(path, 32)[16, 16, 1] > 150


def png_header(width: int, height: int) -> bytes:
    """A PNG that claims ``width × height`` pixels: a few bytes that would decode to gigabytes."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)  # 8-bit RGB
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


def test_decompression_bomb_is_refused(tmp_path):
    path = tmp_path / "bomb.png"
    path.write_bytes(png_header(30_000, 30_000))  # 900 megapixels, over Pillow's limit
    assert path.stat().st_size < 200
    with pytest.raises(ImageError, match="too many pixels"):
        load_image(path, 32)


def test_truncated_jpeg_raises_image_error(tmp_path):
    path = save(Image.new("RGB", (200, 200), "blue"), tmp_path / "whole.jpg")
    path.write_bytes(path.read_bytes()[:300])
    with pytest.raises(ImageError):
        load_image(path, 32)


def test_missing_file_raises_image_error(tmp_path):
    with pytest.raises(ImageError, match="file not found"):
        load_image(tmp_path / "none.jpg", 32)


class FakeVGG:
    """Stands in for VGG16: a row's features are its image's mean colour, repeated."""

    def __init__(self, fail_after=None):
        self.calls, self.fail_after = 0, fail_after

    def predict_on_batch(self, batch):
        if self.fail_after is not None and self.calls >= self.fail_after:
            raise KeyboardInterrupt  # as if the user pressed Ctrl-C mid-extraction
        self.calls += 1
        return np.broadcast_to(batch.mean(axis=(1, 2))[:, None, None, :1], (len(batch), 1, 1, 512)).copy()


def make_photos(folder, count):
    folder.mkdir()
    return [save(Image.new("RGB", (40, 30), (index * 20, 0, 0)), folder / f"{index}.png") for index in range(count)]


def test_extraction_resumes_after_an_interruption(tmp_path):
    paths = make_photos(tmp_path / "photos", 10)
    cache = FeatureCache.open(tmp_path / "cache", paths, "none", 32)
    with pytest.raises(KeyboardInterrupt):
        extract_features(cache, FakeVGG(fail_after=2), 32, batch_size=3, progress=False)
    assert cache.complete.sum() == 6  # two whole batches, nothing half-written

    reopened = FeatureCache.open(tmp_path / "cache", paths, "none", 32)
    vgg = FakeVGG()
    assert extract_features(reopened, vgg, 32, batch_size=3, progress=False) == {}
    assert vgg.calls == 2  # only the 4 missing photos, in batches of 3
    fresh = FeatureCache.open(tmp_path / "fresh", paths, "none", 32)
    extract_features(fresh, FakeVGG(), 32, batch_size=3, progress=False)
    np.testing.assert_array_equal(reopened.features, fresh.features)


def test_unreadable_images_are_reported_and_left_incomplete(tmp_path):
    paths = make_photos(tmp_path / "photos", 3)
    paths[1].write_bytes(b"")
    cache = FeatureCache.open(tmp_path / "cache", paths, "none", 32)
    failures = extract_features(cache, FakeVGG(), 32, batch_size=2, progress=False)
    assert list(failures) == [str(paths[1].resolve())]
    assert cache.complete.tolist() == [True, False, True]


def test_cache_folder_depends_on_weights_and_size(tmp_path):
    paths = make_photos(tmp_path / "photos", 2)
    folders = {FeatureCache.open(tmp_path / "c", paths, "none", size).folder for size in (32, 64)}
    assert len(folders) == 2


def test_bfloat16_extraction_is_close_to_float32_and_cached_apart(tmp_path):
    paths = make_photos(tmp_path / "photos", 4)
    caches = {precision: FeatureCache.open(tmp_path / "c", paths, "none", 32, precision)
              for precision in ("float32", "bfloat16")}
    assert caches["float32"].folder != caches["bfloat16"].folder
    for precision, cache in caches.items():
        extract_features(cache, features.build_vgg16("none", 32, precision), 32, progress=False)
    exact = np.asarray(caches["float32"].features, dtype=np.float32)
    fast = np.asarray(caches["bfloat16"].features, dtype=np.float32)
    assert 0 < np.abs(fast - exact).mean() < 0.02 * np.abs(exact).mean()


def test_random_vgg16_is_the_same_every_time():
    first, second = features.build_vgg16("none", 32), features.build_vgg16("none", 32)
    for a, b in zip(first.get_weights(), second.get_weights()):
        np.testing.assert_array_equal(a, b)
    assert not first.trainable and first.output_shape == (None, 1, 1, 512)


def test_missing_imagenet_weights_say_how_to_get_them(monkeypatch):
    import keras.src.applications.vgg16 as vgg16_module

    def offline(*args, **kwargs):
        raise Exception("URL fetch failure: no network")

    monkeypatch.setattr(vgg16_module.file_utils, "get_file", offline)
    with pytest.raises(features.WeightsUnavailable, match="--vgg-weights none") as error:
        features.build_vgg16("imagenet", 32)
    assert features.VGG16_NOTOP_FILE in str(error.value)


def test_missing_weights_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="weights file not found"):
        features.build_vgg16(str(tmp_path / "vgg.h5"), 32)


def test_a_photo_rewritten_in_place_is_not_read_from_the_old_cache(tmp_path):
    """A dataset generated again at the same paths gets new features, not the old photos'."""
    import os

    paths = make_photos(tmp_path / "photos", 2)
    first = FeatureCache.open(tmp_path / "cache", paths, "none", 32)
    extract_features(first, FakeVGG(), 32, progress=False)
    Image.new("RGB", (40, 30), (0, 0, 250)).save(paths[0])
    os.utime(paths[0], ns=(1, 1))  # a new stamp even within the file system's time resolution
    second = FeatureCache.open(tmp_path / "cache", paths, "none", 32)
    assert second.folder != first.folder and not second.complete.any()
    assert FeatureCache.open(tmp_path / "cache", paths, "none", 32).folder == second.folder  # stable while unchanged


def test_conv5_is_the_grid_before_pool5_and_is_cached_apart(tmp_path):
    conv5, pool5 = features.build_vgg16("none", 64, layer="conv5"), features.build_vgg16("none", 64)
    assert conv5.output_shape[1:] == features.feature_shape(64, "conv5") == (4, 4, 512) and not conv5.trainable
    assert features.feature_shape(150, "conv5") == (9, 9, 512) and features.feature_shape(224, "conv5") == (14, 14, 512)
    images = preprocess(np.random.default_rng(0).integers(0, 256, (2, 64, 64, 3)).astype(np.uint8))
    grid = np.asarray(conv5(images))
    pooled = grid.reshape(2, 2, 2, 2, 2, 512).max(axis=(2, 4))  # VGG16's last 2×2 max pooling
    np.testing.assert_allclose(pooled, np.asarray(pool5(images)), rtol=1e-5, atol=1e-5)
    paths = make_photos(tmp_path / "photos", 2)
    pool5_cache = FeatureCache.open(tmp_path / "c", paths, "none", 64)
    conv5_cache = FeatureCache.open(tmp_path / "c", paths, "none", 64, layer="conv5")
    assert conv5_cache.folder != pool5_cache.folder and conv5_cache.features.shape == (2, 4, 4, 512)
    assert "conv5" in conv5_cache.folder.name and "pool5" not in pool5_cache.folder.name  # older caches keep their names
    with pytest.raises(ValueError, match="feature layer must be one of pool5, conv5"):
        features.build_vgg16("none", 64, layer="fc7")


@pytest.mark.parametrize("variant, change, shape", [
    ("mirrored", lambda pixels: pixels[:, ::-1], (30, 40, 3)),
    ("red-blue", lambda pixels: pixels[..., ::-1], (30, 40, 3)),
    ("red-green", lambda pixels: pixels[..., [1, 0, 2]], (30, 40, 3)),
    # a maximum does not commute with resampling: a photo of the letterbox's size is not resampled
    ("red-yellow", lambda pixels: np.stack([pixels[..., 0], pixels[..., :2].max(-1), pixels[..., 2]], -1), (32, 32, 3)),
])
def test_variant_features_are_those_of_the_changed_photo_and_cached_apart(tmp_path, variant, change, shape):
    """--flip and --recolour: the features of a photo mirrored or recoloured are those of that photo saved so."""
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, shape).astype(np.uint8)
    (tmp_path / "photos").mkdir()
    photo = save(Image.fromarray(pixels), tmp_path / "photos" / "photo.png")
    changed_photo = save(Image.fromarray(np.ascontiguousarray(change(pixels))), tmp_path / "photos" / "changed.png")
    vgg = features.build_vgg16("none", 32)
    changed = FeatureCache.open(tmp_path / "c", [photo], "none", 32, variant=variant)
    plain = FeatureCache.open(tmp_path / "c", [photo], "none", 32)
    assert changed.folder != plain.folder and f"-{variant}-" in changed.folder.name
    of_changed = FeatureCache.open(tmp_path / "c", [changed_photo], "none", 32)
    for cache, cache_variant in ((changed, variant), (plain, None), (of_changed, None)):
        extract_features(cache, vgg, 32, progress=False, variant=cache_variant)
    np.testing.assert_allclose(np.asarray(changed.features, np.float32), np.asarray(of_changed.features, np.float32),
                               rtol=1e-2, atol=1e-2)
    assert not np.allclose(np.asarray(changed.features, np.float32), np.asarray(plain.features, np.float32), atol=1e-2)


def test_an_unknown_variant_is_refused_before_any_cache_is_made(tmp_path):
    with pytest.raises(ValueError, match="Unknown photo variant 'sepia'"):
        features.cached_features([str(tmp_path / "photo.png")], "none", 32, tmp_path / "c", progress=False,
                                 variant="sepia")
    assert not (tmp_path / "c").exists()
