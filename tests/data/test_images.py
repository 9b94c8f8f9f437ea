"""Image sources (flat / ImageFolder, skipped files) and the 8-bit RGB loader for awkward formats."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from air_app.data.images import MAX_SIDE, ImageScan, load_rgb, scan_images
from air_app.errors import UserError


def _png(path: Path, color=(200, 10, 10), size=(8, 6)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, color).save(path)
    return path


def _jpg(path: Path, color=(10, 200, 10), size=(8, 6)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, color).save(path, format="JPEG")
    return path


# ------------------------------------------------------------------------------------------------------- scanning
def test_flat_folder_is_unlabeled(tmp_path):
    a = _png(tmp_path / "a.png")
    b = _jpg(tmp_path / "b.JPG")
    c = _png(tmp_path / "nested" / "c.png")  # recursive, but no labels: images live at the top level
    scan = scan_images(tmp_path)
    assert isinstance(scan, ImageScan)
    assert scan.root == tmp_path.resolve()
    assert scan.items == [(a.resolve(), None), (b.resolve(), None), (c.resolve(), None)]
    assert scan.labeled is False and scan.folder_labels == [] and scan.skipped == []


def test_image_folder_labels_from_first_level(tmp_path):
    cat1 = _png(tmp_path / "cat" / "1.png")
    cat2 = _jpg(tmp_path / "cat" / "deep" / "er" / "2.jpg")
    dog = _png(tmp_path / "dog" / "x.png")
    scan = scan_images(tmp_path)
    assert scan.labeled is True
    assert scan.folder_labels == ["cat", "dog"]
    assert sorted(scan.items) == sorted([(cat1.resolve(), "cat"), (cat2.resolve(), "cat"), (dog.resolve(), "dog")])


def test_hidden_files_and_folders_ignored(tmp_path):
    _png(tmp_path / "cat" / "1.png")
    _png(tmp_path / ".thumbs" / "t.png")
    (tmp_path / "cat" / ".DS_Store").write_bytes(b"\0\1\2")
    _png(tmp_path / "cat" / ".hidden.png")
    scan = scan_images(tmp_path)
    assert [(p.name, lab) for p, lab in scan.items] == [("1.png", "cat")]
    assert scan.skipped == [] and scan.folder_labels == ["cat"]


def test_bad_files_skipped_with_reasons(tmp_path):
    good = _png(tmp_path / "cat" / "ok.png")
    _jpg(tmp_path / "dog" / "ok.jpg")
    rnd = tmp_path / "cat" / "random.jpg"
    rnd.write_bytes(np.random.default_rng(0).integers(0, 256, 2048, dtype=np.uint8).tobytes())
    empty = tmp_path / "dog" / "empty.png"
    empty.write_bytes(b"")
    txt = tmp_path / "cat" / "notes.txt"
    txt.write_text("hello", encoding="utf-8")
    scan = scan_images(tmp_path)
    assert sorted(p.name for p, _ in scan.items) == ["ok.jpg", "ok.png"]
    assert (good.resolve(), "cat") in scan.items
    reasons = {p.name: r for p, r in scan.skipped}
    assert set(reasons) == {"random.jpg", "empty.png", "notes.txt"}
    assert reasons["random.jpg"].startswith("not a readable image")
    assert reasons["empty.png"].startswith("not a readable image")
    assert reasons["notes.txt"] == "not an image file"
    assert scan.labeled and scan.folder_labels == ["cat", "dog"]


def test_image_with_unusual_extension_still_counts(tmp_path):
    p = tmp_path / "photo.data"
    Image.new("RGB", (4, 4)).save(p, format="PNG")
    scan = scan_images(tmp_path)
    assert scan.items == [(p.resolve(), None)] and scan.skipped == []


def test_nothing_usable_is_an_error(tmp_path):
    (tmp_path / "a.jpg").write_bytes(b"garbage")
    (tmp_path / "b.txt").write_text("x", encoding="utf-8")
    with pytest.raises(UserError) as info:
        scan_images(tmp_path)
    msg = str(info.value)
    assert "no usable images" in msg and "2 files skipped" in msg
    assert "a.jpg" in msg and "b.txt: not an image file" in msg


def test_missing_folder(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        scan_images(tmp_path / "nope")


def test_file_instead_of_folder(tmp_path):
    f = _png(tmp_path / "one.png")
    with pytest.raises(UserError, match="is not a folder"):
        scan_images(f, what="test images")
    with pytest.raises(UserError, match="^test images path"):
        scan_images(f, what="test images")


def test_empty_folder(tmp_path):
    (tmp_path / "sub").mkdir()  # folders without files are still empty
    with pytest.raises(UserError, match="is empty"):
        scan_images(tmp_path)


# ------------------------------------------------------------------------------------------------------- loading
def _rgb(img: Image.Image) -> np.ndarray:
    assert img.mode == "RGB"
    return np.asarray(img)


def test_plain_rgb_and_gray(tmp_path):
    p = _png(tmp_path / "a.png", (1, 2, 3), (5, 4))
    img = load_rgb(p)
    assert img.size == (5, 4) and (_rgb(img) == [1, 2, 3]).all()
    g = tmp_path / "g.png"
    Image.new("L", (3, 3), 77).save(g)
    assert (_rgb(load_rgb(g)) == 77).all()
    b = tmp_path / "b.png"
    Image.new("1", (3, 3), 1).save(b)
    assert (_rgb(load_rgb(b)) == 255).all()


def test_cmyk_jpeg(tmp_path):
    p = tmp_path / "cmyk.jpg"
    Image.new("CMYK", (16, 16), (0, 0, 0, 0)).save(p, format="JPEG", quality=95)  # no ink: white
    with Image.open(p) as raw:
        assert raw.mode == "CMYK"
    arr = _rgb(load_rgb(p))
    assert arr.shape == (16, 16, 3) and arr.min() >= 250
    q = tmp_path / "cyan.jpg"
    Image.new("CMYK", (16, 16), (255, 0, 0, 0)).save(q, format="JPEG", quality=95)  # full cyan
    r, g, b = _rgb(load_rgb(q)).reshape(-1, 3).mean(0)
    assert r < 10 and g > 245 and b > 245


def test_rgba_composited_on_white(tmp_path):
    arr = np.zeros((2, 2, 4), dtype=np.uint8)
    arr[0, 0] = (10, 20, 30, 0)  # fully transparent -> white
    arr[0, 1] = (10, 20, 30, 255)  # opaque -> itself
    arr[1, 0] = (0, 0, 0, 128)  # half black on white -> mid grey
    arr[1, 1] = (200, 100, 50, 255)
    p = tmp_path / "rgba.png"
    Image.fromarray(arr, "RGBA").save(p)
    out = _rgb(load_rgb(p))
    assert tuple(out[0, 0]) == (255, 255, 255)
    assert tuple(out[0, 1]) == (10, 20, 30)
    assert tuple(out[1, 1]) == (200, 100, 50)
    assert all(abs(int(v) - 127) <= 1 for v in out[1, 0])


def test_la_composited_on_white(tmp_path):
    arr = np.array([[[0, 0], [40, 255]]], dtype=np.uint8)  # [1, 2, (L, A)]
    p = tmp_path / "la.png"
    Image.fromarray(arr, "LA").save(p)
    with Image.open(p) as raw:
        assert raw.mode == "LA"
    out = _rgb(load_rgb(p))
    assert tuple(out[0, 0]) == (255, 255, 255) and tuple(out[0, 1]) == (40, 40, 40)


def test_palette_with_transparency(tmp_path):
    img = Image.new("P", (2, 1))
    img.putpalette([0, 0, 0, 255, 0, 0] + [0] * (254 * 3))
    img.putpixel((0, 0), 0)  # black, but index 0 is transparent -> white
    img.putpixel((1, 0), 1)  # red
    p = tmp_path / "pal.png"
    img.save(p, transparency=0)
    with Image.open(p) as raw:
        assert raw.mode == "P" and "transparency" in raw.info
    out = _rgb(load_rgb(p))
    assert tuple(out[0, 0]) == (255, 255, 255) and tuple(out[0, 1]) == (255, 0, 0)


def test_palette_gif_without_transparency(tmp_path):
    img = Image.new("P", (2, 1))
    img.putpalette([0, 0, 255, 0, 255, 0] + [0] * (254 * 3))
    img.putpixel((1, 0), 1)
    p = tmp_path / "pal.gif"
    img.save(p)
    out = _rgb(load_rgb(p))
    assert tuple(out[0, 0]) == (0, 0, 255) and tuple(out[0, 1]) == (0, 255, 0)


def test_16bit_gray_scaled_to_8bit(tmp_path):
    a = np.array([[0, 1000, 2000], [3000, 4000, 4080]], dtype=np.uint16)  # a 12-bit sensor range
    p = tmp_path / "g16.png"
    Image.fromarray(a).save(p)
    with Image.open(p) as raw:
        assert raw.mode.startswith("I;16") or raw.mode == "I"
    out = _rgb(load_rgb(p))[..., 0].astype(int)
    assert out.min() == 0 and out.max() == 255  # the full range is used (not clipped at 255 to white)
    expected = np.rint(a / 4080 * 255).astype(int)
    assert np.abs(out - expected).max() <= 1
    assert out[0, 0] < out[0, 1] < out[0, 2] < out[1, 0] < out[1, 1] < out[1, 2]


def test_16bit_full_range(tmp_path):
    a = np.array([[0, 65535]], dtype=np.uint16)
    p = tmp_path / "g16.png"
    Image.fromarray(a).save(p)
    out = _rgb(load_rgb(p))
    assert tuple(out[0, 0]) == (0, 0, 0) and tuple(out[0, 1]) == (255, 255, 255)


@pytest.mark.parametrize("value, level", [(65535, 255), (0, 0), (32896, 128)])
def test_16bit_uniform_keeps_brightness(tmp_path, value, level):
    p = tmp_path / "u16.png"
    Image.fromarray(np.full((4, 4), value, dtype=np.uint16)).save(p)
    out = _rgb(load_rgb(p))
    assert (out == level).all()


def test_32bit_int_and_float(tmp_path):
    i32 = np.arange(12, dtype=np.int32).reshape(3, 4) * 100_000 - 300_000
    p = tmp_path / "i.tif"
    Image.fromarray(i32).save(p)
    with Image.open(p) as raw:
        assert raw.mode == "I"
    out = _rgb(load_rgb(p))[..., 0]
    assert out.dtype == np.uint8 and out.min() == 0 and out.max() == 255
    assert (np.diff(out.ravel().astype(int)) > 0).all()  # monotone

    f = np.linspace(-2.5, 7.5, 20, dtype=np.float32).reshape(4, 5)
    q = tmp_path / "f.tif"
    Image.fromarray(f).save(q)
    with Image.open(q) as raw:
        assert raw.mode == "F"
    out = _rgb(load_rgb(q))[..., 0].astype(int)
    assert out.min() == 0 and out.max() == 255
    assert np.abs(out - np.rint((f + 2.5) / 10 * 255)).max() <= 1


def test_float_with_nan_nodata(tmp_path):
    f = np.array([[np.nan, 0.0, 1.0], [0.5, np.inf, 1.0]], dtype=np.float32)
    q = tmp_path / "nan.tif"
    Image.fromarray(f).save(q)
    out = _rgb(load_rgb(q))[..., 0].astype(int)
    # scaled over the finite values; non-finite pixels take the lowest value
    assert out.tolist() == [[0, 0, 255], [128, 0, 255]]
    Image.fromarray(np.full((2, 2), np.nan, dtype=np.float32)).save(q)
    assert (_rgb(load_rgb(q)) == 0).all()


def test_float_uniform(tmp_path):
    q = tmp_path / "f.tif"
    Image.fromarray(np.full((2, 2), 100.0, dtype=np.float32)).save(q)
    assert (_rgb(load_rgb(q)) == 100).all()


@pytest.mark.parametrize("fmt, suffix", [("PNG", ".png"), ("JPEG", ".jpg")])
def test_huge_image_reduced(tmp_path, fmt, suffix):
    p = tmp_path / f"huge{suffix}"
    Image.new("RGB", (5000, 300), (30, 60, 90)).save(p, format=fmt)
    img = load_rgb(p)
    assert img.mode == "RGB"
    assert max(img.size) <= MAX_SIDE and img.size[0] == MAX_SIDE
    assert abs(img.size[1] - round(300 * MAX_SIDE / 5000)) <= 1  # aspect ratio kept
    assert np.abs(np.asarray(img).reshape(-1, 3).mean(0) - (30, 60, 90)).max() < 3


def test_huge_tall_16bit_image_reduced(tmp_path):
    a = np.tile(np.arange(4200, dtype=np.uint16)[:, None] * 15, (1, 20))  # 20 wide, 4200 tall
    p = tmp_path / "tall16.png"
    Image.fromarray(a).save(p)
    img = load_rgb(p)
    assert img.mode == "RGB" and max(img.size) <= MAX_SIDE and img.size[1] == MAX_SIDE


def test_exif_rotation_applied(tmp_path):
    arr = np.zeros((20, 40, 3), dtype=np.uint8)  # 40 wide, 20 tall; left half red, right half blue
    arr[:, :20] = (255, 0, 0)
    arr[:, 20:] = (0, 0, 255)
    img = Image.fromarray(arr)
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90° clockwise to display
    p = tmp_path / "rot.jpg"
    img.save(p, format="JPEG", exif=exif.tobytes(), quality=95)
    out = load_rgb(p)
    assert out.size == (20, 40)  # width and height swapped
    a = np.asarray(out).astype(int)
    # rotated clockwise: the left (red) half is now on top, the blue half at the bottom
    assert a[:15, :, 0].mean() > 200 and a[:15, :, 2].mean() < 50
    assert a[25:, :, 2].mean() > 200 and a[25:, :, 0].mean() < 50


def test_load_rgb_missing_file_raises(tmp_path):
    with pytest.raises(OSError):
        load_rgb(tmp_path / "none.png")


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="needs /proc")
@pytest.mark.parametrize("name", ["a.png", "a.jpg"])
def test_load_rgb_leaves_no_open_handles(tmp_path, name):
    p = tmp_path / name
    Image.new("RGB", (8, 8), (5, 5, 5)).save(p)
    load_rgb(p)
    before = len(os.listdir("/proc/self/fd"))
    for _ in range(5):
        load_rgb(p)
    assert len(os.listdir("/proc/self/fd")) == before
