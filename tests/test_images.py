"""Every kind of bad or unusual photo is either read correctly or refused naming the file."""

import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from edge_persrep.runtime import ImageError, list_images, load_image


@pytest.mark.parametrize("content,why", [
    (b"", "not a readable image"),
    (b"this is not a photo\n", "not a readable image"),
])
def test_unreadable_files(tmp_path, content, why):
    path = tmp_path / "photo.jpg"
    path.write_bytes(content)
    with pytest.raises(ImageError, match=f"{path}: {why}"):
        load_image(path)


def test_truncated_jpeg(tmp_path):
    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), np.uint8)).save(buffer, "JPEG")
    path = tmp_path / "cut.jpg"
    path.write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])
    with pytest.raises(ImageError, match="cut.jpg"):
        load_image(path)


def test_png_bomb_is_refused_before_decoding(tmp_path):
    # a valid PNG header declaring 100000 x 100000 pixels, with almost no data
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    png = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 100000, 100000, 8, 2, 0, 0, 0))
    png += chunk(b"IDAT", zlib.compress(b"\x00" * 100)) + chunk(b"IEND", b"")
    path = tmp_path / "bomb.png"
    path.write_bytes(png)
    with pytest.raises(ImageError, match="bomb.png.*downscale"):
        load_image(path)


@pytest.mark.parametrize("mode", ["RGBA", "L", "CMYK", "I;16", "P", "LA"])
def test_unusual_modes_become_rgb(tmp_path, mode):
    base = Image.fromarray(np.random.default_rng(0).integers(0, 255, (32, 48, 3), np.uint8))
    ramp = (np.arange(32 * 48).reshape(32, 48) * 40).astype(np.uint16)
    im = base.convert(mode) if mode != "I;16" else Image.fromarray(ramp)
    path = tmp_path / ("x.tif" if mode == "CMYK" else "x.png")
    if mode == "CMYK":
        path = tmp_path / "x.jpg"
    im.save(path)
    out = load_image(path)
    assert out.mode == "RGB" and out.size == (48, 32)
    if mode == "I;16":
        assert np.asarray(out).max() > 200  # 16-bit scaled, not clipped to white


def test_exif_rotation_is_honoured(tmp_path):
    im = Image.new("RGB", (60, 20), (255, 0, 0))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 CW on display
    path = tmp_path / "r.jpg"
    im.save(path, exif=exif.tobytes())
    assert load_image(path).size == (20, 60)


def test_tiny_image_refused(tmp_path):
    path = tmp_path / "dot.png"
    Image.new("RGB", (1, 1)).save(path)
    with pytest.raises(ImageError, match="1x1"):
        load_image(path)


def test_listing(tmp_path):
    with pytest.raises(ImageError, match="no images"):
        list_images([tmp_path])
    with pytest.raises(ImageError, match="no such file"):
        list_images([tmp_path / "missing.jpg"])
    (tmp_path / "b.png").write_bytes(b"x")
    (tmp_path / "a.JPG").write_bytes(b"x")
    (tmp_path / "notes.txt").write_text("x")
    assert [p.name for p in list_images([tmp_path])] == ["a.JPG", "b.png"]


def test_subfolders_are_read_and_skipped_media_are_named(tmp_path):
    from edge_persrep.runtime.images import SkippedFilesWarning

    for rel in ("top.jpg", "trip/day1/a.png", "trip/b.jpg", ".thumbnails/t.jpg", "trip/clip.mp4", "README.md"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(b"x")
    with pytest.warns(SkippedFilesWarning, match=r"3 photos; skipped 1 other files \(trip/clip.mp4\)"):
        found = list_images([tmp_path])
    assert [p.relative_to(tmp_path).as_posix() for p in found] == ["top.jpg", "trip/b.jpg", "trip/day1/a.png"]


def test_cli_says_what_it_skipped_in_one_line(bundle_copy, examples, tmp_path):
    import shutil

    from conftest import run_cli

    shutil.copytree(examples / "dog", tmp_path / "photos")
    (tmp_path / "photos" / "clip.mov").write_bytes(b"x")
    out = run_cli("enroll", bundle_copy, tmp_path / "photos", "--name", "dog", "--negatives", examples / "negatives")
    assert out.stdout.startswith("enrolled 'dog' from 3 photos")
    assert out.stderr.splitlines() == [f"edge-persrep: note: {tmp_path / 'photos'}: 3 photos; skipped 1 other "
                                       "files (clip.mov)"]


def test_heic_photos_are_read(tmp_path):
    pillow_heif = pytest.importorskip("pillow_heif")
    pillow_heif.register_heif_opener()
    Image.new("RGB", (64, 48), (200, 30, 30)).save(tmp_path / "phone.heic")
    image = load_image(tmp_path / "phone.heic")
    assert image.size == (64, 48) and np.abs(np.asarray(image, np.int32) - (200, 30, 30)).max() < 12
    assert [p.name for p in list_images([tmp_path])] == ["phone.heic"]
