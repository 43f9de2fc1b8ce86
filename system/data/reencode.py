"""Image re-encoding for dataset builders: any PIL-readable image -> an RGB JPEG no larger than a maximum side.

Pure function of the input bytes and the options (no timestamps, no EXIF carried over), so a rebuild with the
same Pillow gives the same bytes.
"""

from __future__ import annotations

import io

from PIL import Image, ImageOps


class ImageSkip(Exception):
    """An image that cannot go into a dataset; `reason` is the counter key (e.g. `corrupt_image`)."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


def target_size(width: int, height: int, max_side: int) -> tuple[int, int]:
    """(w, h) scaled so the longer side is at most `max_side`, aspect kept; never upscaled; 0 = keep the size."""
    longest = max(width, height)
    if max_side <= 0 or longest <= max_side:
        return width, height
    scale = max_side / longest
    return max(1, round(width * scale)), max(1, round(height * scale))


def reencode_jpeg(data: bytes, max_side: int, quality: int = 90) -> tuple[bytes, int, int]:
    """(jpeg bytes, width, height) of `data` re-encoded; raises ImageSkip for empty or unreadable data."""
    if not data:
        raise ImageSkip("empty_file", "0 bytes")
    try:
        with Image.open(io.BytesIO(data)) as im:
            rotated = _rotated(im)
            w, h = im.size[::-1] if rotated else im.size  # as displayed
            size = target_size(w, h, max_side)
            if im.format == "JPEG" and size != (w, h):
                # DCT-domain downscale while decoding (to no less than the target): much faster for big photos.
                im.draft("RGB", size[::-1] if rotated else size)
            im = ImageOps.exif_transpose(im)  # bake the camera orientation in: EXIF is not carried over
            im = _to_rgb(im)
            if im.size != size:
                im = im.resize(size, Image.Resampling.BICUBIC, reducing_gap=3.0)
            out = io.BytesIO()
            im.save(out, format="JPEG", quality=quality)
    except Image.DecompressionBombError as err:
        raise ImageSkip("image_too_large", str(err)) from None
    except Image.UnidentifiedImageError:
        raise ImageSkip("corrupt_image", "not an image format PIL can read") from None
    except Exception as err:  # noqa: BLE001 - PIL raises many types for corrupt data; all mean "skip this image"
        raise ImageSkip("corrupt_image", f"{type(err).__name__}: {err}") from None
    return out.getvalue(), size[0], size[1]


def _rotated(im: Image.Image) -> bool:
    # EXIF orientations 5-8 swap width and height.
    try:
        return im.getexif().get(0x0112, 1) in (5, 6, 7, 8)
    except Exception:  # noqa: BLE001 - a broken EXIF block is not a broken image
        return False


def _to_rgb(im: Image.Image) -> Image.Image:
    if im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info):
        # Transparent pixels become white, not whatever colour hides under alpha 0 (often black).
        rgba = im.convert("RGBA")
        base = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(base, rgba).convert("RGB")
    return im.convert("RGB")
