import functools
import io
import struct
import zlib

from PIL import ExifTags, Image, ImageCms

import infra.images  # noqa: F401  # registers HEIC with Pillow

RED, BLUE = (220, 20, 20), (20, 20, 220)
GPS: dict[int, object] = {ExifTags.GPS.GPSLatitudeRef: "N", ExifTags.GPS.GPSLatitude: (48.0, 51.0, 29.0),
       ExifTags.GPS.GPSLongitudeRef: "E", ExifTags.GPS.GPSLongitude: (2.0, 21.0, 3.0)}


@functools.cache  # a new profile carries the moment it was made
def srgb_icc() -> bytes:
    return bytes(ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes())


def halves(width: int = 800, height: int = 600) -> Image.Image:
    """Red on the left, blue on the right: which side ends up where shows the orientation."""
    image = Image.new("RGB", (width, height), RED)
    image.paste(BLUE, (width // 2, 0, width, height))
    return image


def phone_jpeg(width: int = 1600, height: int = 1200) -> bytes:
    """A camera JPEG: sideways pixels with orientation 6 (turn 90 degrees clockwise), a GPS position,
    a maker, an XMP packet, a comment and an sRGB profile."""
    exif = Image.Exif()
    exif[ExifTags.Base.Orientation] = 6
    exif[ExifTags.Base.Make] = "PhoneMaker"
    exif.get_ifd(ExifTags.IFD.GPSInfo).update(GPS)
    out = io.BytesIO()
    halves(width, height).save(out, "JPEG", exif=exif.tobytes(), icc_profile=srgb_icc(), comment=b"taken at home",
                               xmp=b'<x:xmpmeta xmlns:x="adobe:ns:meta/">secret place</x:xmpmeta>')
    return out.getvalue()


def phone_heic(width: int = 1600, height: int = 1200) -> bytes:
    """The same as phone_jpeg, as an iPhone would take it (libheif keeps the turn in the container)."""
    exif = Image.Exif()
    exif[ExifTags.Base.Orientation] = 6
    exif[ExifTags.Base.Make] = "PhoneMaker"
    exif.get_ifd(ExifTags.IFD.GPSInfo).update(GPS)
    out = io.BytesIO()
    halves(width, height).save(out, "HEIF", exif=exif.tobytes(), icc_profile=srgb_icc(), quality=90)
    return out.getvalue()


def png(width: int, height: int, mode: str = "RGB") -> bytes:
    out = io.BytesIO()
    Image.new(mode, (width, height)).save(out, "PNG")
    return out.getvalue()


def png_claiming(width: int, height: int) -> bytes:
    """A valid 1-bit PNG of any size in a few hundred kB: the rows are zeros, which compress to nothing."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    row = b"\0" * (1 + (width + 7) // 8)
    squeeze = zlib.compressobj(9)
    body = b"".join(squeeze.compress(row) for _ in range(height)) + squeeze.flush()
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0))
            + chunk(b"IDAT", body) + chunk(b"IEND", b""))


def truncated_jpeg() -> bytes:
    whole = phone_jpeg()
    return whole[: len(whole) // 2]


TEXT_AS_JPEG = b"This is not a picture, whatever its name says.\n" * 20


def jpeg_segments(data: bytes) -> list[int]:
    """The markers of a JPEG's header segments, in order, up to the start of the scan: where EXIF
    (APP1), XMP (APP1), IPTC (APP13) and comments (COM) would sit, whatever a decoder makes of them."""
    assert data[:2] == b"\xff\xd8", "not a JPEG"
    found, at = [], 2
    while at < len(data):
        assert data[at] == 0xFF, f"no marker at {at}"
        marker = data[at + 1]
        found.append(marker)
        if marker == 0xDA:  # start of scan: entropy-coded data follows, no more metadata before it
            return found
        at += 2 + struct.unpack(">H", data[at + 2:at + 4])[0]
    raise AssertionError("no scan")


# What a stripped JPEG may carry before its pixels: JFIF (APP0), the ICC profile (APP2), Adobe's colour
# transform (APP14) and the coding tables. APP1 (EXIF, XMP), APP13 (IPTC) and COM (comments) may not.
ALLOWED_SEGMENTS = {0xE0, 0xE2, 0xEE, 0xDB, 0xC0, 0xC1, 0xC2, 0xC4, 0xDD, 0xDA}
# Words that phone_jpeg and phone_heic hide in their metadata.
SECRETS = (b"Exif\0\0", b"xmpmeta", b"PhoneMaker", b"taken at home", b"secret place")


def metadata_left(jpeg: bytes) -> set[str]:
    """What of a source's metadata a stored JPEG still carries: empty when it is stripped."""
    left = {f"segment {marker:#x}" for marker in jpeg_segments(jpeg) if marker not in ALLOWED_SEGMENTS}
    return left | {word.decode() for word in SECRETS if word in jpeg}
