"""photo_metadata.py on real files built here with Pillow: orientation, ICC profiles, EXIF/XMP, refusals."""

import dataclasses
import io
import struct
import warnings

import cv2
import numpy as np
import pytest
from helpers import DATE, exif_bytes, p3_like_profile
from PIL import ExifTags, Image, ImageCms, ImageOps, PngImagePlugin

from srdensenet import image_files, photo_metadata
from srdensenet.checkpoint import save_checkpoint
from srdensenet.cli import upscale as upscale_cli
from srdensenet.image_files import ImageReadError, ImageWriteError, read_image_with_alpha, write_image
from srdensenet.photo_metadata import PhotoMetadata, encode_photo, output_metadata, read_photo, write_photo

XMP = (b'<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">'
       b'<rdf:Description xmlns:tiff="http://ns.adobe.com/tiff/1.0/" tiff:Orientation="6"/></rdf:RDF></x:xmpmeta>')


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
    if ext == ".png":  # lossless: the pixels exactly
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


# ---- metadata never costs the image; pixels as OpenCV writes them -------------------------------------------------


def gray_profile() -> bytes:
    icc = bytearray(p3_like_profile())
    icc[16:20] = b"GRAY"  # only its colour space is read here
    return bytes(icc)


def big_exif() -> bytes:
    """About 70 KB of EXIF (a long maker note, as some cameras write): more than one JPEG marker holds."""
    exif = Image.Exif()
    exif[ExifTags.Base.Make] = "Camera"
    exif.get_ifd(ExifTags.IFD.Exif)[ExifTags.Base.MakerNote] = bytes(range(256)) * 280
    return exif.tobytes()


def messages(write) -> list[str]:
    """The warnings that ``write()`` gives, each once."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        write()
    return [str(w.message) for w in caught]


def decoded(path) -> np.ndarray:
    """The reference decode: OpenCV's, as stored (BGR order, gray stays one channel, 16-bit stays 16-bit)."""
    return cv2.imdecode(np.fromfile(path, np.uint8), cv2.IMREAD_UNCHANGED)


def chunk_kinds(path) -> list[bytes]:
    return [kind for kind, _, _ in photo_metadata.png_chunks(path.read_bytes())]


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
@pytest.mark.parametrize("channels", [1, 3, 4])
def test_png_pixels_with_metadata_are_exactly_those_written_without(tmp_path, dtype, channels):
    shape = (37, 29) if channels == 1 else (37, 29, channels)
    pixels = np.random.default_rng(channels).integers(0, np.iinfo(dtype).max + 1, shape, dtype=dtype)
    icc = gray_profile() if channels == 1 else p3_like_profile()
    assert not messages(lambda: write_photo(tmp_path / "tagged.png", pixels,
                                            PhotoMetadata(6, icc, exif_bytes(6), XMP)))
    write_image(tmp_path / "plain.png", pixels)  # OpenCV, no metadata: as before
    np.testing.assert_array_equal(decoded(tmp_path / "tagged.png"), decoded(tmp_path / "plain.png"))
    assert decoded(tmp_path / "tagged.png").dtype == dtype
    with Image.open(tmp_path / "tagged.png") as out:
        assert out.info["icc_profile"] == icc and b'tiff:Orientation="1"' in out.info["xmp"]
        assert out.getexif()[ExifTags.Base.Orientation] == 1
    assert chunk_kinds(tmp_path / "tagged.png")[:4] == [b"IHDR", b"iCCP", b"iTXt", b"eXIf"]


@pytest.mark.parametrize("quality", [None, 50])
@pytest.mark.parametrize("gray", [False, True])
def test_jpeg_with_metadata_has_opencvs_pixels(tmp_path, photo, quality, gray):
    # Pillow and OpenCV both bundle libjpeg-turbo, whose default (ISLOW) encoder is bit-exact across its SIMD paths.
    pixels = photo[:, :, 1].copy() if gray else photo
    metadata = PhotoMetadata(icc_profile=gray_profile() if gray else p3_like_profile(), exif=exif_bytes(), xmp=XMP)
    tagged = encode_photo(pixels, ".jpg", metadata, quality)
    params = [] if quality is None else [cv2.IMWRITE_JPEG_QUALITY, quality]
    plain = image_files.encode_image(pixels, ".jpg", params)
    np.testing.assert_array_equal(cv2.imdecode(np.frombuffer(tagged, np.uint8), cv2.IMREAD_UNCHANGED),
                                  cv2.imdecode(np.frombuffer(plain, np.uint8), cv2.IMREAD_UNCHANGED))
    assert Image.open(io.BytesIO(tagged)).info["icc_profile"] == metadata.icc_profile


def test_exif_too_big_for_a_jpeg_is_left_out_with_one_warning(tmp_path, stored):
    Image.fromarray(stored).save(tmp_path / "in.png", exif=big_exif(), icc_profile=p3_like_profile())
    rgb, _, metadata = read_photo(tmp_path / "in.png")
    assert len(metadata.exif) > 70_000
    metadata = dataclasses.replace(metadata, xmp=XMP)
    caught = messages(lambda: write_photo(tmp_path / "out.jpg", rgb, metadata))
    assert len(caught) == 1 and "out.jpg is written without its EXIF (71,786 bytes, over the 65,533" in caught[0]
    with Image.open(tmp_path / "out.jpg") as out:
        assert "exif" not in out.info and out.info["icc_profile"] == p3_like_profile() and out.info["xmp"]
    write_image(tmp_path / "plain.jpg", rgb)
    np.testing.assert_array_equal(decoded(tmp_path / "out.jpg"), decoded(tmp_path / "plain.jpg"))
    assert not messages(lambda: write_photo(tmp_path / "out.png", rgb, metadata))  # a PNG holds it
    assert Image.open(tmp_path / "out.png").getexif().get_ifd(ExifTags.IFD.Exif)[ExifTags.Base.MakerNote]


def test_cli_upscale_with_exif_too_big_for_jpeg_writes_the_image_and_one_warning(tmp_path, tiny, stored, capsys):
    save_checkpoint(tmp_path / "w.pth", tiny)
    Image.fromarray(stored).save(tmp_path / "in.png", exif=big_exif())
    assert upscale_cli.main(["--weights", str(tmp_path / "w.pth"), "--precision", "fp32", "--backend", "torch",
                             "-i", str(tmp_path / "in.png"), "-o", str(tmp_path / "out.jpg")]) == 0
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("warning")]
    assert len(lines) == 1 and lines[0].startswith(f"warning: {tmp_path / 'in.png'}: ") and "EXIF" in lines[0]
    assert Image.open(tmp_path / "out.jpg").size == (32, 48) and not Image.open(tmp_path / "out.jpg").getexif()


def valid_png() -> bytes:
    return image_files.encode_image(np.zeros((4, 5, 3), np.uint16), ".png")


def corrupted(how: str) -> bytes:
    data = valid_png()
    idat = data.index(b"IDAT")
    if how == "signature":
        return b"GIF89a" + data[6:]
    if how == "cut short":
        return data[:-6]
    if how == "CRC":
        return data[:idat + 4] + bytes([data[idat + 4] ^ 1]) + data[idat + 5:]
    if how == "IHDR":
        text = photo_metadata.png_chunk(b"tEXt", b"k\0v")
        return data[:8] + text + data[8:]
    if how == "length":
        return data[:idat - 4] + struct.pack(">I", 2**31 - 1) + data[idat:]
    return data + b"junk"  # after IEND


@pytest.mark.parametrize(("how", "message"), [("signature", "no PNG signature"), ("cut short", "cut short"),
                                              ("CRC", "IDAT.* wrong CRC"), ("IHDR", "not a 13-byte IHDR"),
                                              ("length", "runs past the end"), ("after", "4 bytes after IEND")])
def test_splice_checks_the_png_it_is_given(how, message):
    with pytest.raises(photo_metadata.SpliceError, match=message):
        photo_metadata.spliced_png(corrupted(how), PhotoMetadata(icc_profile=p3_like_profile()))


def test_splice_replaces_what_the_profile_overrides():
    info = PngImagePlugin.PngInfo()
    info.add(b"sRGB", b"\0")
    buffer = io.BytesIO()
    Image.new("RGB", (3, 2)).save(buffer, "PNG", pnginfo=info)
    assert b"sRGB" in buffer.getvalue()
    spliced = photo_metadata.spliced_png(buffer.getvalue(), PhotoMetadata(icc_profile=p3_like_profile()))
    assert [kind for kind, _, _ in photo_metadata.png_chunks(spliced)] == [b"IHDR", b"iCCP", b"IDAT", b"IEND"]
    assert Image.open(io.BytesIO(spliced)).info["icc_profile"] == p3_like_profile()


def test_splice_that_fails_leaves_the_16_bit_image_without_metadata(tmp_path, stored, monkeypatch):
    encode = image_files.encode_image
    monkeypatch.setattr(image_files, "encode_image", lambda *args, **kw: encode(*args, **kw) + b"junk")
    pixels = stored.astype(np.uint16) * 257
    caught = messages(lambda: write_photo(tmp_path / "deep.png", pixels, PhotoMetadata(6, p3_like_profile(),
                                                                                      exif_bytes(6), XMP)))
    assert len(caught) == 1 and "deep.png is written without its colour profile, EXIF, XMP" in caught[0]
    assert "4 bytes after IEND" in caught[0]
    np.testing.assert_array_equal(read_image_with_alpha(tmp_path / "deep.png")[0], pixels)
    assert "icc_profile" not in Image.open(tmp_path / "deep.png").info


def test_any_failure_to_embed_costs_the_metadata_not_the_image(tmp_path, stored, monkeypatch):
    caught = messages(lambda: image_files.write_image_bytes(tmp_path / "t.tif", encode_photo(
        stored, ".tif", PhotoMetadata(icc_profile=p3_like_profile(), exif=b"not EXIF"), name="t.tif")))
    assert len(caught) == 1 and caught[0].startswith("t.tif is written without its colour profile, EXIF (embedding")
    np.testing.assert_array_equal(read_image_with_alpha(tmp_path / "t.tif")[0], stored)

    def broken(*args, **kwargs):
        raise OSError("broke\nhere")  # and on two lines: the warning is one

    monkeypatch.setattr(photo_metadata, "_pillow_save", broken)
    caught = messages(lambda: write_photo(tmp_path / "x.jpg", stored, PhotoMetadata(exif=exif_bytes())))
    assert caught == [f"{tmp_path / 'x.jpg'} is written without its EXIF (embedding failed: OSError: broke here)"]
    write_image(tmp_path / "plain.jpg", stored)
    assert (tmp_path / "x.jpg").read_bytes() == (tmp_path / "plain.jpg").read_bytes()


# ---- XMP -----------------------------------------------------------------------------------------------------------

PACKET = """<?xpacket begin="\ufeff" id="W5M0MpCehiHzreSzNTczkc9d"?>
<x:xmpmeta xmlns:x="adobe:ns:meta/" x:xmptk="XMP Core 6.0.0">
 <!-- kept -->
 <rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">
  <rdf:Description rdf:about="" xmlns:tiff="http://ns.adobe.com/tiff/1.0/" xmlns:exif="http://ns.adobe.com/exif/1.0/"
    xmlns:dc="http://purl.org/dc/elements/1.1/" xmlns:look="http://example.com/tiff:Orientation/"
    tiff:Orientation="8" exif:PixelXDimension="29" look:Orientation="8">
   <exif:PixelYDimension>37</exif:PixelYDimension>
   <tiff:ImageWidth>29</tiff:ImageWidth>
   <dc:title><rdf:Alt><rdf:li xml:lang="x-default">Orientation &amp; size</rdf:li></rdf:Alt></dc:title>
  </rdf:Description>
 </rdf:RDF>
</x:xmpmeta>
""" + " " * 200 + """
<?xpacket end="w"?>"""


def test_xmp_orientation_and_size_are_updated_by_namespace_the_rest_kept():
    xmp = photo_metadata.updated_xmp(PACKET.encode(), 58, 74).decode()
    head, tail = PACKET.split("<x:xmpmeta")[0], PACKET.split("</x:xmpmeta>")[1]
    assert xmp.startswith(head) and xmp.endswith(tail)  # the xpacket wrapper and its padding, as they were
    assert 'tiff:Orientation="1"' in xmp and 'exif:PixelXDimension="58"' in xmp
    assert "<exif:PixelYDimension>74</exif:PixelYDimension>" in xmp and "<tiff:ImageWidth>58</" in xmp
    assert 'look:Orientation="8"' in xmp  # another namespace's Orientation is not the photo's
    assert '<rdf:li xml:lang="x-default">Orientation &amp; size</rdf:li>' in xmp and "<!-- kept -->" in xmp
    assert "ns0:" not in xmp and 'xmlns:dc="http://purl.org/dc/elements/1.1/"' in xmp
    again = photo_metadata.updated_xmp(xmp.encode(), 58, 74)
    assert again == xmp.encode()  # nothing to change: byte for byte


@pytest.mark.parametrize("xmp", [b"<x:xmpmeta><rdf:RDF>", b"<a><b></a>", b"\xff\xfe<a/>", b"no XML at all",
                                 b'<!DOCTYPE a [<!ENTITY e "x">]><a>&e;</a>'])
@pytest.mark.parametrize("ext", [".png", ".jpg"])
def test_malformed_xmp_is_left_out_with_one_warning(tmp_path, stored, xmp, ext):
    caught = messages(lambda: write_photo(tmp_path / f"out{ext}", stored, PhotoMetadata(6, exif=exif_bytes(6),
                                                                                      xmp=xmp)))
    assert len(caught) == 1 and caught[0].startswith("XMP not carried: it cannot be read")
    with Image.open(tmp_path / f"out{ext}") as out:
        assert "xmp" not in out.info and out.getexif()[ExifTags.Base.Orientation] == 1


def test_unreadable_exif_is_left_out_with_one_warning(tmp_path, stored):
    caught = messages(lambda: write_photo(tmp_path / "out.jpg", stored, PhotoMetadata(exif=b"Exif\0\0garbage",
                                                                                     xmp=XMP)))
    assert len(caught) == 1 and caught[0].startswith("EXIF not carried: it cannot be read")
    with Image.open(tmp_path / "out.jpg") as out:
        assert "exif" not in out.info and b'tiff:Orientation="1"' in out.info["xmp"]
