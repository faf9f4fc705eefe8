"""Tests of osteo_tf.io: every format, depth, colour mode and failure on tiny images."""

from __future__ import annotations

import shutil

import numpy as np
import pydicom
import pytest
import tifffile
from PIL import Image
from pydicom.data import get_testdata_file

from osteo_tf.io import (
    IMAGE_EXTENSIONS,
    ImageInfo,
    ImageLoadError,
    load_xray,
    load_xray_with_info,
    pixel_sha256,
    save_png,
)

RAMP8 = np.arange(12, dtype=np.uint8).reshape(3, 4) * 20  # 0..220
RAMP16 = np.array([[0, 1000, 30000], [40000, 50000, 65535]], dtype=np.uint16)


def _testdata(name: str) -> str:
    """A DICOM file pydicom ships in its wheel (no download)."""
    path = get_testdata_file(name, download=False)
    assert path is not None, f"{name} is not shipped with this pydicom"
    return path


# ----------------------------------------------------------------------------- raster formats


def test_png_8bit_round_trip(tmp_path):
    Image.fromarray(RAMP8).save(tmp_path / "a.png")
    img, info = load_xray_with_info(tmp_path / "a.png")
    assert img.dtype == np.float32 and img.shape == (3, 4)
    np.testing.assert_allclose(img, RAMP8 / 255.0, atol=1e-7)
    assert (info.format, info.bit_depth, info.mode) == ("png", 8, "L")


def test_png_16bit_keeps_full_depth(tmp_path):
    Image.fromarray(RAMP16).save(tmp_path / "a.png")
    img, info = load_xray_with_info(tmp_path / "a.png")
    assert info.bit_depth == 16
    assert img[0, 1] == pytest.approx(1000 / 65535, abs=1e-7)  # 8-bit clipping would give 3/255 or 1.0
    np.testing.assert_allclose(img, RAMP16 / 65535.0, atol=1e-7)


def test_tiff_16bit_keeps_full_depth(tmp_path):
    Image.fromarray(RAMP16).save(tmp_path / "a.tif")
    img, info = load_xray_with_info(tmp_path / "a.tif")
    assert (info.format, info.bit_depth) == ("tiff", 16)
    np.testing.assert_allclose(img, RAMP16 / 65535.0, atol=1e-7)


def test_tiff_16bit_rgb_is_not_reduced_to_8bit(tmp_path):
    rgb = np.stack([RAMP16] * 3, axis=-1)
    tifffile.imwrite(tmp_path / "a.tiff", rgb, photometric="rgb")
    img, info = load_xray_with_info(tmp_path / "a.tiff")
    assert info.bit_depth == 16
    assert img[0, 1] == pytest.approx(1000 / 65535, abs=1e-7)


def test_tiff_float_outside_unit_range_is_minmax_scaled(tmp_path):
    data = np.array([[-2.0, 0.0], [2.0, 6.0]], dtype=np.float32)
    tifffile.imwrite(tmp_path / "f.tif", data)
    img, info = load_xray_with_info(tmp_path / "f.tif")
    np.testing.assert_allclose(img, [[0.0, 0.25], [0.5, 1.0]], atol=1e-7)
    assert info.bit_depth == 32


def test_tiff_float_in_unit_range_is_kept(tmp_path):
    data = np.array([[0.1, 0.2], [0.3, 0.4]], dtype=np.float32)
    tifffile.imwrite(tmp_path / "f.tif", data)
    np.testing.assert_allclose(load_xray(tmp_path / "f.tif"), data, atol=1e-7)


def test_tiff_float_with_nan_is_rejected(tmp_path):
    tifffile.imwrite(tmp_path / "nan.tif", np.array([[0.1, np.nan]], dtype=np.float32))
    with pytest.raises(ImageLoadError, match="NaN"):
        load_xray(tmp_path / "nan.tif")


def test_palette_png_uses_palette_colours(tmp_path):
    im = Image.new("P", (2, 1))
    im.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)  # index 1 = pure red
    im.putdata([0, 1])
    im.save(tmp_path / "p.png")
    img = load_xray(tmp_path / "p.png")
    np.testing.assert_allclose(img, [[0.0, 0.299 * 255 / 255]], atol=1e-6)


def test_la_png_drops_alpha(tmp_path):
    la = np.stack([RAMP8, np.full_like(RAMP8, 7)], axis=-1)
    Image.fromarray(la, mode="LA").save(tmp_path / "la.png")
    np.testing.assert_allclose(load_xray(tmp_path / "la.png"), RAMP8 / 255.0, atol=1e-7)


def test_rgba_png_drops_alpha(tmp_path):
    rgba = np.stack([RAMP8, RAMP8, RAMP8, np.zeros_like(RAMP8)], axis=-1)
    Image.fromarray(rgba, mode="RGBA").save(tmp_path / "rgba.png")
    np.testing.assert_allclose(load_xray(tmp_path / "rgba.png"), RAMP8 / 255.0, atol=1e-7)


def test_rgb_becomes_bt601_luminance(tmp_path):
    rgb = np.array([[[255, 0, 0], [0, 255, 0], [0, 0, 255], [100, 50, 200]]], dtype=np.uint8)
    Image.fromarray(rgb, mode="RGB").save(tmp_path / "rgb.png")
    expected = [0.299, 0.587, 0.114, (0.299 * 100 + 0.587 * 50 + 0.114 * 200) / 255]
    np.testing.assert_allclose(load_xray(tmp_path / "rgb.png")[0], expected, atol=1e-6)


def test_png_16bit_rgb_keeps_full_depth(tmp_path):
    import cv2

    grey = np.stack([RAMP16] * 3, axis=-1)
    assert cv2.imwrite(str(tmp_path / "rgb16.png"), grey)
    img, info = load_xray_with_info(tmp_path / "rgb16.png")
    assert info.bit_depth == 16
    np.testing.assert_allclose(img, RAMP16 / 65535.0, atol=1e-7)


def test_jpeg_grey(tmp_path):
    flat = np.full((16, 16), 128, dtype=np.uint8)
    Image.fromarray(flat).save(tmp_path / "a.jpg", quality=95)
    img, info = load_xray_with_info(tmp_path / "a.jpg")
    assert (info.format, info.bit_depth, img.shape) == ("jpeg", 8, (16, 16))
    np.testing.assert_allclose(img, 128 / 255.0, atol=2 / 255)


def test_bmp(tmp_path):
    Image.fromarray(RAMP8).save(tmp_path / "a.bmp")
    img, info = load_xray_with_info(tmp_path / "a.bmp")
    assert info.format == "bmp"
    np.testing.assert_allclose(img, RAMP8 / 255.0, atol=1e-7)


def test_exif_orientation_6_is_applied_like_pillow(tmp_path):
    from PIL import ImageOps

    data = np.zeros((20, 40), dtype=np.uint8)
    data[:, :10] = 255  # bright left band: after a 90 degree turn it is a horizontal band
    im = Image.fromarray(data)
    exif = im.getexif()
    exif[0x0112] = 6
    im.save(tmp_path / "o.jpg", exif=exif, quality=100)
    img = load_xray(tmp_path / "o.jpg")
    assert img.shape == (40, 20)
    with Image.open(tmp_path / "o.jpg") as ref:
        expected = np.asarray(ImageOps.exif_transpose(ref).convert("L"), dtype=np.float32) / 255.0
    np.testing.assert_allclose(img, expected, atol=1e-7)


def test_constant_image_gives_zeros_after_minmax(tmp_path):
    tifffile.imwrite(tmp_path / "c.tif", np.full((3, 3), 7.5, dtype=np.float32))
    img = load_xray(tmp_path / "c.tif")
    assert np.all(np.isfinite(img)) and np.all(img == 0.0)


def test_source_file_is_never_modified(tmp_path):
    path = tmp_path / "a.png"
    Image.fromarray(RAMP16).save(path)
    before = (path.read_bytes(), path.stat().st_mtime_ns)
    load_xray(path)
    assert (path.read_bytes(), path.stat().st_mtime_ns) == before


# ----------------------------------------------------------------------------- failures


def test_truncated_png_raises_with_path_and_reason(tmp_path):
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64), dtype=np.uint8)).save(tmp_path / "t.png")
    data = (tmp_path / "t.png").read_bytes()
    (tmp_path / "t.png").write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageLoadError) as err:
        load_xray(tmp_path / "t.png")
    assert err.value.path == str(tmp_path / "t.png")
    assert "truncated" in err.value.reason
    assert str(err.value) == f"{tmp_path / 't.png'}: {err.value.reason}"


def test_empty_file_raises(tmp_path):
    (tmp_path / "e.png").write_bytes(b"")
    with pytest.raises(ImageLoadError, match="empty file"):
        load_xray(tmp_path / "e.png")


def test_text_file_with_png_extension_raises(tmp_path):
    (tmp_path / "notes.png").write_text("this is not an image\n" * 20)
    with pytest.raises(ImageLoadError, match="not a recognised image"):
        load_xray(tmp_path / "notes.png")


def test_oversized_image_is_refused_before_decoding(tmp_path):
    Image.fromarray(np.zeros((30, 40), dtype=np.uint8)).save(tmp_path / "big.png")
    with pytest.raises(ImageLoadError, match=r"too large: 30x40 = 1200 pixels > max_pixels=1000"):
        load_xray(tmp_path / "big.png", max_pixels=1000)


def test_missing_file_raises_image_load_error(tmp_path):
    with pytest.raises(ImageLoadError, match="file not found"):
        load_xray(tmp_path / "nope.png")


def test_invalid_max_pixels_names_the_argument(tmp_path):
    with pytest.raises(ValueError, match=r"max_pixels.*Received: max_pixels=0"):
        load_xray(tmp_path / "a.png", max_pixels=0)


# ----------------------------------------------------------------------------- DICOM


def test_dicom_ct_applies_rescale_then_minmax():
    path = _testdata("CT_small.dcm")
    ds = pydicom.dcmread(path)
    hu = ds.pixel_array * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    expected = (hu - hu.min()) / (hu.max() - hu.min())  # no window in this file
    img, info = load_xray_with_info(path)
    np.testing.assert_allclose(img, expected, atol=1e-6)
    assert (info.format, info.bit_depth, info.mode, info.height, info.width) == ("dicom", 16, "MONOCHROME2", 128, 128)


def test_dicom_mr_applies_window():
    path = _testdata("MR_small.dcm")
    ds = pydicom.dcmread(path)
    center, width = float(ds.WindowCenter), float(ds.WindowWidth)
    x = ds.pixel_array.astype(np.float64)
    expected = np.clip(((x - (center - 0.5)) / (width - 1) + 0.5), 0, 1)  # DICOM LINEAR window
    np.testing.assert_allclose(load_xray(path), expected, atol=1e-6)


def test_dicom_monochrome1_is_inverted(tmp_path):
    src = pydicom.dcmread(_testdata("CT_small.dcm"))
    src.PhotometricInterpretation = "MONOCHROME1"  # no MONOCHROME1 file is shipped offline
    src.save_as(tmp_path / "mono1.dcm")
    hu = src.pixel_array * float(src.RescaleSlope) + float(src.RescaleIntercept)
    expected = 1.0 - (hu - hu.min()) / (hu.max() - hu.min())
    img, info = load_xray_with_info(tmp_path / "mono1.dcm")
    assert info.mode == "MONOCHROME1"
    np.testing.assert_allclose(img, expected, atol=1e-6)
    assert img[0, 0] == pytest.approx(1.0 - load_xray(_testdata("CT_small.dcm"))[0, 0], abs=1e-6)


def test_dicom_colour_is_rejected():
    with pytest.raises(ImageLoadError, match=r"colour DICOM not supported \(SamplesPerPixel=3"):
        load_xray(_testdata("examples_rgb_color.dcm"))


def test_dicom_multiframe_is_rejected():
    with pytest.raises(ImageLoadError, match=r"multi-frame DICOM not supported \(15 frames\)"):
        load_xray(_testdata("rtdose.dcm"))


def test_dicom_without_decoder_plugin_names_transfer_syntax():
    with pytest.raises(ImageLoadError, match="JPEG-LS Lossless"):
        load_xray(_testdata("MR_small_jpeg_ls_lossless.dcm"))


def test_dicom_truncated_pixel_data_raises():
    with pytest.raises(ImageLoadError, match="cannot decode DICOM pixel data"):
        load_xray(_testdata("MR_truncated.dcm"))


@pytest.mark.parametrize("name", ["scan.png", "scan"])
def test_dicom_detected_by_content_not_extension(tmp_path, name):
    shutil.copy(_testdata("CT_small.dcm"), tmp_path / name)
    img, info = load_xray_with_info(tmp_path / name)
    assert info.format == "dicom"
    np.testing.assert_array_equal(img, load_xray(_testdata("CT_small.dcm")))


def test_dicom_patient_data_never_in_info_or_errors(tmp_path):
    ds = pydicom.dcmread(_testdata("CT_small.dcm"))
    name, pid = str(ds.PatientName), str(ds.PatientID)
    assert name and pid
    _, info = load_xray_with_info(_testdata("CT_small.dcm"))
    assert name not in repr(info) and pid not in repr(info)
    assert set(vars(info)) == {"format", "bit_depth", "height", "width", "mode"}
    with pytest.raises(ImageLoadError) as err:
        load_xray(_testdata("CT_small.dcm"), max_pixels=10)
    assert name not in str(err.value) and pid not in str(err.value)


# ----------------------------------------------------------------------------- helpers


def test_pixel_sha256_is_equal_for_pixel_identical_files_across_formats(tmp_path):
    Image.fromarray(RAMP8).save(tmp_path / "a.png")
    Image.fromarray(RAMP8).save(tmp_path / "a.bmp")
    assert pixel_sha256(load_xray(tmp_path / "a.png")) == pixel_sha256(load_xray(tmp_path / "a.bmp"))


def test_pixel_sha256_depends_on_shape():
    flat = np.zeros(6, dtype=np.float32)
    assert pixel_sha256(flat.reshape(2, 3)) != pixel_sha256(flat.reshape(3, 2))


@pytest.mark.parametrize("bit_depth", [8, 16])
def test_save_png_round_trip_and_creates_parents(tmp_path, bit_depth):
    image = np.linspace(0, 1, 12, dtype=np.float32).reshape(3, 4)
    out = save_png(image, tmp_path / "sub" / "dir" / "x.png", bit_depth=bit_depth)
    img, info = load_xray_with_info(out)
    assert info.bit_depth == bit_depth
    np.testing.assert_allclose(img, image, atol=0.5 / (2**bit_depth - 1) + 1e-7)
    assert sorted(p.name for p in out.parent.iterdir()) == ["x.png"]  # no temp file left


def test_save_png_rejects_out_of_range(tmp_path):
    with pytest.raises(ValueError, match=r"Received: image in \[0, 2\]"):
        save_png(np.array([[0.0, 2.0]]), tmp_path / "x.png")


def test_image_extensions_cover_the_contract():
    assert {".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".dcm", ".dicom"} == set(IMAGE_EXTENSIONS)


def test_image_info_is_frozen():
    info = ImageInfo(format="png", bit_depth=8, height=1, width=1, mode="L")
    with pytest.raises(AttributeError):
        info.height = 2  # type: ignore[misc]
