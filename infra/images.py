import io
import warnings
from dataclasses import dataclass

from PIL import Image, ImageCms, ImageOps, UnidentifiedImageError
from pillow_heif import register_heif_opener

from domain.photos import Rejection, Size, check_decoded, output_sizes

# Teaches Pillow HEIC (libheif). It applies the container's rotation itself and resets the EXIF
# orientation, so exif_transpose below does not turn such a photo twice.
register_heif_opener()

JPEG_QUALITY = 85
# The colour space an embedded profile must describe to stay valid for the pixels we write.
_SPACE_OF_MODE = {"RGB": "RGB", "L": "GRAY", "CMYK": "CMYK"}
# Phones write their JPEGs as MPO (a JPEG with more pictures appended); the first one is the photo.
_FORMATS = {"MPO": "JPEG"}


@dataclass(frozen=True)
class Rendition:
    target: int  # the width it is served as (see output_sizes)
    size: Size
    jpeg: bytes


def _icc_space(icc: bytes) -> str | None:
    try:
        return str(ImageCms.ImageCmsProfile(io.BytesIO(icc)).profile.xcolor_space).strip()
    except (OSError, ImageCms.PyCMSError, ValueError):
        return None


def _flatten(image: Image.Image) -> Image.Image:
    if image.mode in _SPACE_OF_MODE:
        return image
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        return image.point(lambda v: v / 256).convert("L")  # 16-bit grey
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in image.info:
        rgba = image.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return image.convert("RGB")


def process(data: bytes) -> list[Rendition] | Rejection:
    """Decodes an untrusted upload for real and writes it again: oriented, sized, and stripped of
    every piece of metadata but its colour profile (no EXIF, GPS, XMP or comments survive)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            opened = Image.open(io.BytesIO(data))  # reads the header only
            format_ = _FORMATS.get(opened.format or "", opened.format)
            verdict = check_decoded(format_, *opened.size)
            if verdict is not None:
                return verdict
            opened.load()
    except (UnidentifiedImageError, SyntaxError):
        return Rejection.NOT_AN_IMAGE
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        return Rejection.TOO_MANY_PIXELS
    except (OSError, ValueError, EOFError):
        return Rejection.DAMAGED
    icc = opened.info.get("icc_profile")
    # Orientation first: the sizes and the shape checks are of the picture as it is seen.
    upright = _flatten(ImageOps.exif_transpose(opened))
    verdict = check_decoded(format_, *upright.size)
    if verdict is not None:
        return verdict
    keep_icc = icc if icc and _icc_space(icc) == _SPACE_OF_MODE[upright.mode] else None
    renditions = []
    for target, size in output_sizes(*upright.size):
        scaled = upright if size == Size(*upright.size) else upright.resize((size.width, size.height),
                                                                            Image.Resampling.LANCZOS)
        # A fresh image carries no info from the source, so nothing is written but what we pass.
        clean = Image.new(scaled.mode, scaled.size)
        clean.paste(scaled)
        out = io.BytesIO()
        options = {"icc_profile": keep_icc} if keep_icc else {}
        clean.save(out, "JPEG", quality=JPEG_QUALITY, optimize=True, progressive=True, **options)
        renditions.append(Rendition(target, size, out.getvalue()))
    return renditions
