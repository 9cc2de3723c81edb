"""`read_rgb`: the size an image declares is capped before decoding; a JPEG cut short is refused."""

from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFile

from pipeline.data.images import MAX_IMAGE_PIXELS, BadImageError, read_rgb
from pipeline.data.validate import probe_image


def noise_jpeg(path: Path, size: int = 256, **options) -> Path:
    pixels = np.random.default_rng(0).integers(0, 256, (size, size, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path, "JPEG", quality=90, **options)
    return path


def declaring(path: Path, width: int, height: int) -> Path:
    """A 16x16 JPEG whose frame header claims `width` x `height` (a few hundred bytes on disk)."""
    data = bytearray(noise_jpeg(path, size=16).read_bytes())
    frame = data.index(b"\xff\xc0")  # baseline start-of-frame: length, precision, height, width
    data[frame + 5 : frame + 7] = height.to_bytes(2, "big")
    data[frame + 7 : frame + 9] = width.to_bytes(2, "big")
    path.write_bytes(bytes(data))
    return path


def cut_with_end_marker(source: Path, target: Path, keep: float) -> Path:
    data = source.read_bytes()
    target.write_bytes(data[: int(len(data) * keep)] + b"\xff\xd9")
    return target


def test_a_tiny_file_declaring_12000_by_12000_px_is_refused_before_decoding(tmp_path, monkeypatch):
    bomb = declaring(tmp_path / "bomb.jpg", 12000, 12000)
    assert bomb.stat().st_size < 2000 and MAX_IMAGE_PIXELS < 12000 * 12000

    def no_decoding(self):
        raise AssertionError("the pixels were decoded")

    monkeypatch.setattr(ImageFile.ImageFile, "load", no_decoding)
    with pytest.warns(Image.DecompressionBombWarning), pytest.raises(BadImageError, match="12000x12000 px"):
        read_rgb(bomb)
    with pytest.warns(Image.DecompressionBombWarning):  # PIL's own warning, from the header alone
        assert "12000x12000" in probe_image(bomb)


@pytest.mark.parametrize("keep", [0.5, 0.97])
def test_a_jpeg_cut_short_but_ending_in_its_marker_is_refused(tmp_path, keep):
    """Baseline JPEGs (what cameras and COCO use). A progressive one cut after its first scans decodes
    blurred, not grey, and is not caught (README)."""
    whole = noise_jpeg(tmp_path / "whole.jpg")
    cut = cut_with_end_marker(whole, tmp_path / "cut.jpg", keep)
    with Image.open(cut) as image:
        image.load()  # what PIL alone does: no error, the missing blocks grey
    assert read_rgb(whole).size == (256, 256)
    with pytest.raises(BadImageError, match="cut.jpg: a truncated JPEG"):
        read_rgb(cut)


def test_the_teachers_reduced_scale_decoding_still_sees_the_cut(tmp_path):
    whole = noise_jpeg(tmp_path / "whole.jpg")
    cut = cut_with_end_marker(whole, tmp_path / "cut.jpg", 0.97)
    assert read_rgb(whole, draft_size=(32, 32)).size == (32, 32)  # decoded at 1/8 scale
    with pytest.raises(BadImageError, match="truncated"):
        read_rgb(cut, draft_size=(32, 32))


def test_plain_grey_pngs_are_not_taken_for_cut_jpegs(tmp_path):
    grey = tmp_path / "grey.png"
    Image.new("RGB", (32, 32), (128, 128, 128)).save(grey)
    assert read_rgb(grey).size == (32, 32)
