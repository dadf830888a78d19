from pathlib import Path

import pytest
from PIL import Image

from helpers import write_image
from makevl.data.images import ImageError, load_image, open_image


@pytest.mark.parametrize("mode", ["L", "RGBA", "CMYK", "P", "LA", "I;16"])
def test_odd_modes_are_converted(tmp_path: Path, mode: str):
    path = tmp_path / "x.png" if mode != "CMYK" else tmp_path / "x.jpg"
    if mode == "I;16":
        Image.new("I;16", (8, 8), 30000).save(path)
    else:
        write_image(path, (250, 10, 10), mode=mode)
    img, original = open_image(str(path))
    assert img.mode == "RGB" and original == mode
    assert img.size in ((32, 32), (8, 8))


def test_transparent_png_is_composited_on_white(tmp_path: Path):
    path = tmp_path / "t.png"
    Image.new("RGBA", (4, 4), (0, 0, 0, 0)).save(path)
    assert load_image(str(path)).getpixel((0, 0)) == (255, 255, 255)


def test_bad_images_raise_with_reason(tmp_path: Path):
    empty = tmp_path / "empty.jpg"
    empty.write_bytes(b"")
    text = tmp_path / "text.jpg"
    text.write_text("this is not an image")
    good = write_image(tmp_path / "good.jpg", size=(64, 64))
    truncated = tmp_path / "trunc.jpg"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    cases = {
        str(tmp_path / "missing.jpg"): "missing file",
        str(empty): "empty file",
        str(text): "not a readable image",
        str(truncated): "truncated image",
        b"": "empty file",
        None: "no image",
    }
    for ref, reason in cases.items():
        with pytest.raises(ImageError) as info:
            load_image(ref)
        assert info.value.reason == reason, ref
        if isinstance(ref, str):
            assert ref in str(info.value)
