"""photo_metadata.py on real files built here with Pillow: orientation, ICC profiles, EXIF/XMP, refusals."""

import io
import struct

import numpy as np
import pytest
from PIL import ExifTags, Image, ImageCms, ImageOps

from srdensenet import photo_metadata
from srdensenet.image_files import ImageReadError, ImageWriteError, read_image_with_alpha
from srdensenet.photo_metadata import PhotoMetadata, output_metadata, read_photo, write_photo

DATE = "2024:05:06 07:08:09"
XMP = (b'<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">'
       b'<rdf:Description xmlns:tiff="http://ns.adobe.com/tiff/1.0/" tiff:Orientation="6"/></rdf:RDF></x:xmpmeta>')


def p3_like_profile() -> bytes:
    """Pillow's sRGB profile with Display P3's primaries (D50-adapted): a wide-gamut RGB profile unlike sRGB's."""
    icc = bytearray(ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes())
    icc[84:100] = bytes(16)  # the profile ID (an MD5 of the rest) is optional: zero says "not computed"
    icc[24:36] = struct.pack(">6H", 2024, 1, 2, 3, 4, 5)  # a fixed creation time: the same bytes on every call
    primaries = {b"rXYZ": (0.5151, 0.2412, -0.0011), b"gXYZ": (0.2920, 0.6922, 0.0419),
                 b"bXYZ": (0.1571, 0.0666, 0.7841)}
    (count,) = struct.unpack(">I", icc[128:132])
    for i in range(count):
        tag, offset, _ = struct.unpack(">4sII", icc[132 + 12 * i:144 + 12 * i])
        if tag in primaries:
            icc[offset + 8:offset + 20] = struct.pack(">3i", *(round(v * 65536) for v in primaries[tag]))
    return bytes(icc)


def exif_bytes(orientation: int = 1) -> bytes:
    exif = Image.Exif()
    exif[ExifTags.Base.Orientation] = orientation
    exif[ExifTags.Base.Make] = "Camera"
    exif.get_ifd(ExifTags.IFD.Exif)[ExifTags.Base.DateTimeOriginal] = DATE
    exif.get_ifd(ExifTags.IFD.Exif)[ExifTags.Base.ExifImageWidth] = 64
    return exif.tobytes()


def with_thumbnail(exif: bytes) -> bytes:
    """``exif`` (as Pillow writes it: "Exif\\0\\0" and a TIFF header) with an IFD1 that points to a thumbnail."""
    tiff = bytearray(exif[6:])
    order = "<" if tiff[:2] == b"II" else ">"
    (ifd0,) = struct.unpack(order + "I", tiff[4:8])
    (count,) = struct.unpack(order + "H", tiff[ifd0:ifd0 + 2])
    next_at = ifd0 + 2 + 12 * count
    ifd1 = len(tiff)
    thumb = b"\xff\xd8\xff\xd9"
    tiff[next_at:next_at + 4] = struct.pack(order + "I", ifd1)
    tiff += struct.pack(order + "H", 2) + struct.pack(order + "HHII", 0x0201, 4, 1, ifd1 + 30) \
        + struct.pack(order + "HHII", 0x0202, 4, 1, len(thumb)) + struct.pack(order + "I", 0) + thumb
    return b"Exif\x00\x00" + bytes(tiff)


@pytest.fixture(scope="module")
def stored(photo):
    return np.ascontiguousarray(photo[:24, :16])  # 24x16: sideways turns change the shape


@pytest.mark.parametrize("orientation", range(1, 9))
def test_every_exif_orientation_is_applied_as_pillow_does(tmp_path, stored, orientation):
    path = tmp_path / "o.png"
    Image.fromarray(stored).save(path, exif=exif_bytes(orientation))
    rgb, alpha, metadata = read_photo(path)
    assert metadata.orientation == orientation and alpha is None
    np.testing.assert_array_equal(rgb, np.asarray(ImageOps.exif_transpose(Image.open(path))))
    assert rgb.shape[:2] == ((24, 16) if orientation < 5 else (16, 24))


@pytest.mark.parametrize("ext", [".png", ".jpg", ".webp", ".tif"])
def test_profile_exif_and_xmp_are_carried_and_updated(tmp_path, stored, ext):
    src = tmp_path / "in.jpg"
    icc = p3_like_profile()
    Image.fromarray(stored).save(src, icc_profile=icc, exif=with_thumbnail(exif_bytes(6)), xmp=XMP, quality=95)
    rgb, _, metadata = read_photo(src)
    assert metadata.icc_profile == icc and metadata.xmp == XMP
    big = np.repeat(np.repeat(rgb, 2, axis=0), 2, axis=1)  # 32x48, upright
    write_photo(tmp_path / f"out{ext}", big, metadata)
    out = Image.open(tmp_path / f"out{ext}")
    exif = out.getexif()
    assert out.size == (48, 32) and out.info["icc_profile"] == icc
    assert exif[ExifTags.Base.Orientation] == 1 and exif[ExifTags.Base.Make] == "Camera"
    assert exif.get_ifd(ExifTags.IFD.Exif)[ExifTags.Base.DateTimeOriginal] == DATE
    assert exif.get_ifd(ExifTags.IFD.Exif)[ExifTags.Base.ExifImageWidth] == 48
    assert not exif.get_ifd(ExifTags.IFD.IFD1)  # the stale thumbnail is gone
    if ext != ".tif":
        xmp = out.info.get("xmp") or out.info["XML:com.adobe.xmp"].encode()
        assert b'tiff:Orientation="1"' in xmp
    if ext == ".png":  # the pixels are OpenCV's, exactly
        np.testing.assert_array_equal(read_image_with_alpha(tmp_path / "out.png")[0], big)


def test_input_thumbnail_is_there_to_drop(tmp_path, stored):
    Image.fromarray(stored).save(tmp_path / "t.jpg", exif=with_thumbnail(exif_bytes()))
    assert Image.open(tmp_path / "t.jpg").getexif().get_ifd(ExifTags.IFD.IFD1)


def test_profiles_go_only_where_they_describe_the_pixels(stored):
    rgb_icc, lab_icc = p3_like_profile(), ImageCms.ImageCmsProfile(ImageCms.createProfile("LAB")).tobytes()
    assert output_metadata(PhotoMetadata(icc_profile=rgb_icc), stored).icc_profile == rgb_icc
    with pytest.warns(UserWarning, match="RGB colour profile not carried onto a grayscale"):
        assert output_metadata(PhotoMetadata(icc_profile=rgb_icc), stored[:, :, 0]).icc_profile is None
    with pytest.warns(UserWarning, match="Lab colour profile not carried onto a colour"):
        assert output_metadata(PhotoMetadata(icc_profile=lab_icc), stored).icc_profile is None


def test_cmyk_jpeg_profile_is_not_put_on_the_rgb_result(tmp_path, stored):
    cmyk_icc = bytearray(p3_like_profile())
    cmyk_icc[16:20] = b"CMYK"
    Image.fromarray(stored).convert("CMYK").save(tmp_path / "c.jpg", icc_profile=bytes(cmyk_icc))
    rgb, _, metadata = read_photo(tmp_path / "c.jpg")
    with pytest.warns(UserWarning, match="CMYK colour profile not carried"):
        write_photo(tmp_path / "c.png", rgb, metadata)
    assert "icc_profile" not in Image.open(tmp_path / "c.png").info


def test_untagged_image_is_written_as_before(tmp_path, stored):
    Image.fromarray(stored).save(tmp_path / "plain.png")
    rgb, _, metadata = read_photo(tmp_path / "plain.png")
    assert metadata == PhotoMetadata()
    write_photo(tmp_path / "a.png", rgb, metadata)
    from srdensenet.image_files import write_image

    write_image(tmp_path / "b.png", rgb)
    assert (tmp_path / "a.png").read_bytes() == (tmp_path / "b.png").read_bytes()


def test_multi_frame_files_are_refused_by_name(tmp_path, stored):
    frames = [Image.fromarray(stored), Image.fromarray(stored[::-1].copy())]
    for name in ("anim.gif", "anim.webp", "pages.tif"):
        frames[0].save(tmp_path / name, save_all=True, append_images=frames[1:])
        with pytest.raises(ImageReadError, match=rf"{name}: 2 frames"):
            read_photo(tmp_path / name)
    frames[0].save(tmp_path / "still.gif")
    assert read_photo(tmp_path / "still.gif")[0].shape == (24, 16, 3)


def test_heic_without_its_reader_names_the_package(tmp_path, monkeypatch):
    (tmp_path / "phone.heic").write_bytes(b"\x00\x00\x00\x18ftypheic")
    monkeypatch.setitem(__import__("sys").modules, "pillow_heif", None)  # as if it were not installed
    with pytest.raises(ImageReadError, match=r"phone.heic: reading HEIC needs the optional package pillow-heif"):
        read_photo(tmp_path / "phone.heic")


def test_avif_without_a_reader_names_what_to_install(tmp_path, monkeypatch):
    (tmp_path / "phone.avif").write_bytes(b"\x00\x00\x00\x18ftypavif")
    monkeypatch.setattr(photo_metadata.Image, "open", lambda path: (_ for _ in ()).throw(
        photo_metadata.UnidentifiedImageError(path)))  # as Pillow without AVIF support answers
    with pytest.raises(ImageReadError, match=r"phone.avif: reading AVIF needs Pillow built with AVIF"):
        read_photo(tmp_path / "phone.avif")


def test_formats_that_cannot_hold_the_pixels_are_refused(tmp_path, stored):
    with pytest.raises(ImageWriteError, match=r"x.jpg: 16-bit pixels cannot be written as .jpg"):
        write_photo(tmp_path / "x.jpg", stored.astype(np.uint16) * 257)
    with pytest.raises(ImageWriteError, match=r"x.jpg: has an alpha channel"):
        write_photo(tmp_path / "x.jpg", np.dstack([stored, stored[:, :, 0]]))
    assert not list(tmp_path.iterdir())


def test_quality_sets_the_jpeg_size(tmp_path, photo):
    write_photo(tmp_path / "low.jpg", photo, quality=20)
    write_photo(tmp_path / "high.jpg", photo, quality=98)
    assert (tmp_path / "low.jpg").stat().st_size < (tmp_path / "high.jpg").stat().st_size
    assert Image.open(io.BytesIO((tmp_path / "low.jpg").read_bytes())).format == "JPEG"
