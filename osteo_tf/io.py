"""Read radiographs from disk as ``float32`` ``(H, W)`` arrays in ``[0, 1]``.

One entry point, :func:`load_xray`, for every format a study meets:

* PNG, JPEG, TIFF and BMP, 8 and 16 bit at full depth. Pillow is used for everything it
  decodes exactly; 16-bit colour PNG goes through OpenCV (``IMREAD_UNCHANGED``) and 16-bit
  colour or 64-bit float TIFF through ``tifffile``, because Pillow reduces those to 8 bit or
  cannot open them. EXIF orientation is applied.
* DICOM, detected by content (``DICM`` at byte 128, or a file pydicom parses and that holds
  pixel data), never by extension: modality LUT, then VOI LUT or window (min-max of the
  rescaled data when there is none), then MONOCHROME1 inversion.

Grey conversion is explicit: RGB becomes ITU-R BT.601 luminance ``0.299 R + 0.587 G + 0.114 B``
(exactly one channel when all three are equal); palette images are expanded through their
palette first; the alpha channel of LA / RGBA / PA images is DROPPED, not composited.
Scaling: 8-bit / 255, 16-bit / 65535, n-bit TIFF / (2**n - 1); 32-bit integer images are
min-max scaled; float images are kept when already in ``[0, 1]``, else min-max scaled; NaN or
infinite values are an error. A constant image becomes zeros where min-max scaling applies.

Every failure (missing, empty, truncated, non-image, oversized, unsupported DICOM) raises
:class:`ImageLoadError` naming the file and the reason. Source files are only ever read.
Patient-identifying DICOM tags are never copied into a return value, a message or a log.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError

__all__ = [
    "IMAGE_EXTENSIONS",
    "ImageInfo",
    "ImageLoadError",
    "is_image_candidate",
    "load_xray",
    "load_xray_with_info",
    "pixel_sha256",
    "save_png",
]

#: File extensions treated as images (lower case, with the dot). Files without an extension are
#: probed for DICOM content as well.
IMAGE_EXTENSIONS: frozenset[str] = frozenset(
    {".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".dcm", ".dicom"}
)

DEFAULT_MAX_PIXELS = 100_000_000
_LUMA_601 = np.array([0.299, 0.587, 0.114], dtype=np.float64)
_PIL_FORMATS = {"PNG": "png", "JPEG": "jpeg", "MPO": "jpeg", "TIFF": "tiff", "BMP": "bmp"}
_EXIF_ORIENTATION = 0x0112
_DICOM_DEFER = "1 MB"  # large elements (pixel data) are read only when needed


class ImageLoadError(Exception):
    """A file could not be read as a radiograph.

    Attributes:
        path: the file, as given.
        reason: what went wrong, one line, without patient data.
    """

    def __init__(self, path: str | os.PathLike, reason: str) -> None:
        self.path = str(path)
        self.reason = str(reason)
        super().__init__(f"{self.path}: {self.reason}")

    def __str__(self) -> str:
        return f"{self.path}: {self.reason}"


@dataclass(frozen=True)
class ImageInfo:
    """What was read, before conversion (never any patient data).

    Attributes:
        format: ``"png"``, ``"jpeg"``, ``"tiff"``, ``"bmp"`` or ``"dicom"``.
        bit_depth: bits per sample of the stored data (8, 16, 32; DICOM BitsStored, e.g. 12).
        height: rows of the returned image (after EXIF orientation).
        width: columns of the returned image.
        mode: the Pillow mode of the file (e.g. ``"I;16"``, ``"RGBA"``), the DICOM
            PhotometricInterpretation, or ``"<reader>:<dtype>x<channels>"`` for the
            OpenCV / tifffile paths.
    """

    format: str
    bit_depth: int
    height: int
    width: int
    mode: str


def is_image_candidate(path: str | os.PathLike) -> bool:
    """Whether a file name looks like an image: a known extension, or no extension at all."""
    suffix = Path(path).suffix.lower()
    return suffix in IMAGE_EXTENSIONS or suffix == ""


def load_xray(path: str | os.PathLike, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Read one radiograph as a grey image.

    Args:
        path: a PNG, JPEG, TIFF, BMP or DICOM file (DICOM is found by content).
        max_pixels: refuse images with more than this many pixels (checked before decoding).

    Returns:
        (H, W) float32 in [0, 1].

    Raises:
        ImageLoadError: the file is missing, empty, truncated, not an image, too large, or an
            unsupported DICOM (colour, multi-frame, compressed without a decoder).
        TypeError, ValueError: invalid arguments.
    """
    return load_xray_with_info(path, max_pixels=max_pixels)[0]


def load_xray_with_info(
    path: str | os.PathLike, *, max_pixels: int = DEFAULT_MAX_PIXELS
) -> tuple[np.ndarray, ImageInfo]:
    """Like :func:`load_xray`, also returning an :class:`ImageInfo` describing the file."""
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"`path` must be a str or os.PathLike. Received: path={path!r}")
    if isinstance(max_pixels, bool) or not isinstance(max_pixels, int) or max_pixels < 1:
        raise ValueError(f"`max_pixels` must be a positive int. Received: max_pixels={max_pixels!r}")
    p = Path(path)
    try:
        if not p.exists():
            raise ImageLoadError(path, "file not found")
        if not p.is_file():
            raise ImageLoadError(path, "not a regular file")
        size = p.stat().st_size
        if size == 0:
            raise ImageLoadError(path, "empty file (0 bytes)")
        with open(p, "rb") as fh:
            head = fh.read(132)
    except OSError as exc:
        raise ImageLoadError(path, f"cannot read file ({exc.strerror or exc})") from None

    if len(head) == 132 and head[128:132] == b"DICM":
        image, info = _load_dicom(p, path, max_pixels, force=False)
    else:
        try:
            image, info = _load_pil(p, path, head, max_pixels)
        except _NotPillowImage:
            image, info = _load_dicom(p, path, max_pixels, force=True)
    return image, info


def pixel_sha256(image: np.ndarray) -> str:
    """SHA-256 (hex) of a decoded image: its shape, then its float32 bytes.

    Args:
        image: any array, usually (H, W) float32 in [0, 1] from :func:`load_xray`.

    Returns:
        64 hex characters; equal for pixel-identical images whatever their file format.
    """
    if not isinstance(image, np.ndarray):
        raise TypeError(f"`image` must be a numpy array. Received: image={type(image).__name__}")
    arr = np.ascontiguousarray(image, dtype=np.float32)
    digest = hashlib.sha256(repr(tuple(arr.shape)).encode("ascii"))
    digest.update(arr.tobytes())
    return digest.hexdigest()


def save_png(image: np.ndarray, path: str | os.PathLike, *, bit_depth: int = 8) -> Path:
    """Write a grey image as an 8- or 16-bit PNG (parent folders created, atomic replace).

    Args:
        image: (H, W) float in [0, 1]; values are rounded to the nearest level.
        path: destination file.
        bit_depth: 8 or 16.

    Returns:
        The written path.
    """
    if bit_depth not in (8, 16):
        raise ValueError(f"`bit_depth` must be 8 or 16. Received: bit_depth={bit_depth!r}")
    if not isinstance(image, np.ndarray) or image.ndim != 2 or image.size == 0:
        shape = getattr(image, "shape", type(image).__name__)
        raise ValueError(f"`image` must be a non-empty (H, W) array. Received: image.shape={shape}")
    arr = np.asarray(image, dtype=np.float64)
    if not np.all(np.isfinite(arr)):
        raise ValueError("`image` must be finite. Received: image with NaN or infinite values")
    lo, hi = float(arr.min()), float(arr.max())
    if lo < -1e-6 or hi > 1 + 1e-6:
        raise ValueError(f"`image` must be in [0, 1]. Received: image in [{lo:.6g}, {hi:.6g}]")
    levels = 255 if bit_depth == 8 else 65535
    data = np.round(np.clip(arr, 0.0, 1.0) * levels).astype(np.uint8 if bit_depth == 8 else np.uint16)
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            Image.fromarray(data).save(fh, format="PNG")
        os.replace(tmp, out)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return out


# ----------------------------------------------------------------------------- helpers


class _NotPillowImage(Exception):
    """Pillow does not recognise the file; the caller tries DICOM next."""


def _check_size(path: Any, height: int, width: int, max_pixels: int) -> None:
    if height < 1 or width < 1:
        raise ImageLoadError(path, f"image has no pixels ({height}x{width})")
    if height * width > max_pixels:
        raise ImageLoadError(
            path, f"image too large: {height}x{width} = {height * width} pixels > max_pixels={max_pixels}"
        )


def _minmax(arr: np.ndarray) -> np.ndarray:
    arr = arr.astype(np.float64, copy=False)
    lo, hi = float(arr.min()), float(arr.max())
    if hi <= lo:
        return np.zeros(arr.shape, dtype=np.float32)
    return ((arr - lo) / (hi - lo)).astype(np.float32)


def _to_grey(arr: np.ndarray) -> np.ndarray:
    """(H, W, C) colour in any scale -> (H, W): drop alpha, BT.601 luminance of RGB."""
    if arr.ndim == 2:
        return arr
    channels = arr.shape[2]
    if channels in (1, 2):  # grey, grey + alpha
        return arr[..., 0]
    rgb = arr[..., :3]
    if np.array_equal(rgb[..., 0], rgb[..., 1]) and np.array_equal(rgb[..., 0], rgb[..., 2]):
        return rgb[..., 0]
    return rgb.astype(np.float64) @ _LUMA_601


def _scale_float(path: Any, arr: np.ndarray) -> np.ndarray:
    if not np.all(np.isfinite(arr)):
        raise ImageLoadError(path, "float image contains NaN or infinite values")
    if arr.min() >= 0.0 and arr.max() <= 1.0:
        return arr.astype(np.float32)
    return _minmax(arr)


def _scale_int(arr: np.ndarray, bits: int) -> np.ndarray:
    """Unsigned integers of ``bits`` bits -> [0, 1]; 32-bit or signed data is min-max scaled."""
    if bits <= 16 and arr.min() >= 0 and arr.max() <= 2**bits - 1:
        return (arr.astype(np.float64) / (2**bits - 1)).astype(np.float32)
    return _minmax(arr)


def _orient(arr: np.ndarray, orientation: int) -> np.ndarray:
    """Apply an EXIF orientation (same mapping as ``PIL.ImageOps.exif_transpose``)."""
    ops = {
        2: lambda a: a[:, ::-1],
        3: lambda a: a[::-1, ::-1],
        4: lambda a: a[::-1, :],
        5: lambda a: a.T,
        6: lambda a: np.rot90(a, -1),
        7: lambda a: a[::-1, ::-1].T,
        8: lambda a: np.rot90(a, 1),
    }
    op = ops.get(orientation)
    return np.ascontiguousarray(op(arr)) if op else arr


def _load_pil(p: Path, path: Any, head: bytes, max_pixels: int) -> tuple[np.ndarray, ImageInfo]:
    try:
        im = Image.open(p)
    except UnidentifiedImageError:
        raise _NotPillowImage from None
    except Image.DecompressionBombError as exc:
        raise ImageLoadError(path, f"image too large (Pillow decompression-bomb guard: {exc})") from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise ImageLoadError(path, f"cannot open image ({exc})") from None
    with im:
        fmt = _PIL_FORMATS.get(im.format or "")
        if fmt is None:
            raise ImageLoadError(path, f"unsupported image format {im.format} (use PNG, JPEG, TIFF, BMP or DICOM)")
        width, height = im.size
        _check_size(path, height, width, max_pixels)
        n_frames = getattr(im, "n_frames", 1)
        if n_frames > 1 and fmt != "jpeg":  # MPO JPEGs: the first picture is the primary image
            raise ImageLoadError(path, f"multi-page {fmt.upper()} ({n_frames} frames) not supported; save one frame")
        try:
            orientation = int(im.getexif().get(_EXIF_ORIENTATION, 1) or 1)
        except Exception:  # a broken EXIF block must not make the image unreadable
            orientation = 1
        mode = im.mode
        if fmt == "png" and len(head) >= 26 and head[24] == 16 and head[25] in (4, 2, 6):
            arr, bits, mode = _decode_cv2_png16(p, path)
        elif fmt == "tiff" and _tiff_needs_tifffile(im):
            arr, bits, mode = _decode_tifffile(p, path, max_pixels)
        else:
            arr, bits = _decode_pil(im, path, fmt)
    arr = _orient(arr, orientation)
    arr = np.ascontiguousarray(arr, dtype=np.float32)
    return arr, ImageInfo(format=fmt, bit_depth=bits, height=arr.shape[0], width=arr.shape[1], mode=mode)


def _decode_pil(im: Image.Image, path: Any, fmt: str) -> tuple[np.ndarray, int]:
    try:
        im.load()
        mode = im.mode
        if mode == "1":
            return np.asarray(im, dtype=np.float32), 1
        if mode == "L":
            return np.asarray(im, dtype=np.float32) / 255.0, 8
        if mode.startswith("I;16"):
            return _scale_int(np.asarray(im), 16), 16
        if mode == "I":
            bits = 16 if fmt == "png" else _tiff_bits(im)
            return _scale_int(np.asarray(im), bits), bits
        if mode == "F":
            return _scale_float(path, np.asarray(im)), 32
        if mode == "LA":
            return np.asarray(im)[..., 0].astype(np.float32) / 255.0, 8
        if mode in ("P", "PA"):
            im = im.convert("RGBA")  # expand the palette; alpha dropped by _to_grey
        elif mode not in ("RGB", "RGBA", "RGBX", "RGBa"):
            try:
                im = im.convert("RGB")  # CMYK, YCbCr, LAB, HSV
            except ValueError:
                raise ImageLoadError(path, f"unsupported pixel mode {mode!r}") from None
        return (_to_grey(np.asarray(im)) / 255.0).astype(np.float32), 8
    except ImageLoadError:
        raise
    except Image.DecompressionBombError as exc:
        raise ImageLoadError(path, f"image too large (Pillow decompression-bomb guard: {exc})") from None
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise ImageLoadError(path, f"truncated or corrupt {fmt.upper()} file ({exc})") from None


def _tiff_bits(im: Image.Image) -> int:
    bps = getattr(im, "tag_v2", {}).get(258, (32,))
    bps = bps if isinstance(bps, tuple) else (bps,)
    return int(max(bps)) if bps else 32


def _tiff_needs_tifffile(im: Image.Image) -> bool:
    bps = getattr(im, "tag_v2", {}).get(258, (8,))
    bps = bps if isinstance(bps, tuple) else (bps,)
    return len(bps) > 1 and max(bps) > 8  # Pillow reduces 16-bit colour TIFF to 8 bit


def _decode_tifffile(p: Path, path: Any, max_pixels: int) -> tuple[np.ndarray, int, str]:
    import tifffile

    try:
        with tifffile.TiffFile(p) as tif:
            page = tif.pages[0]
            shape, dtype = page.shape, page.dtype
            planar = len(shape) == 3 and shape[0] in (3, 4) and shape[-1] not in (3, 4)
            height, width = (shape[1], shape[2]) if planar else (shape[0], shape[1] if len(shape) > 1 else 1)
            _check_size(path, int(height), int(width), max_pixels)
            arr = page.asarray()
    except ImageLoadError:
        raise
    except Exception as exc:
        raise ImageLoadError(path, f"truncated or corrupt TIFF file ({exc})") from None
    bits = int(np.dtype(dtype).itemsize * 8)
    if arr.ndim == 3 and arr.shape[0] in (3, 4) and arr.shape[-1] not in (3, 4):
        arr = np.moveaxis(arr, 0, -1)  # planar configuration
    grey = _to_grey(arr)
    scaled = _scale_float(path, grey) if arr.dtype.kind == "f" else _scale_int(grey, bits)
    channels = arr.shape[2] if arr.ndim == 3 else 1
    return scaled, bits, f"tifffile:{np.dtype(dtype).name}x{channels}"


def _decode_cv2_png16(p: Path, path: Any) -> tuple[np.ndarray, int, str]:
    import cv2

    buf = np.fromfile(p, dtype=np.uint8)
    arr = cv2.imdecode(buf, cv2.IMREAD_UNCHANGED)
    if arr is None:
        raise ImageLoadError(path, "truncated or corrupt 16-bit PNG file")
    channels = arr.shape[2] if arr.ndim == 3 else 1
    if channels >= 3:
        arr = arr[..., [2, 1, 0] + list(range(3, channels))]  # BGR(A) -> RGB(A)
    return _scale_int(_to_grey(arr), 16), 16, f"opencv:{arr.dtype.name}x{channels}"


# ----------------------------------------------------------------------------- DICOM


def _load_dicom(p: Path, path: Any, max_pixels: int, *, force: bool) -> tuple[np.ndarray, ImageInfo]:
    import pydicom
    from pydicom.errors import InvalidDicomError

    not_image = "not a recognised image (PNG, JPEG, TIFF, BMP or DICOM)"
    try:
        ds = pydicom.dcmread(p, force=force, defer_size=_DICOM_DEFER)
    except (InvalidDicomError, EOFError) as exc:
        raise ImageLoadError(path, not_image if force else f"corrupt DICOM file ({exc})") from None
    except Exception as exc:  # pydicom raises many types on garbage input
        raise ImageLoadError(path, not_image if force else f"corrupt DICOM file ({type(exc).__name__})") from None
    pixel_tags = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")
    has_pixels = any(tag in ds for tag in pixel_tags)
    if force and not (has_pixels and "Rows" in ds and "Columns" in ds):
        raise ImageLoadError(path, not_image)
    if not has_pixels:
        raise ImageLoadError(path, "DICOM file has no pixel data (not an image object)")
    if "Rows" not in ds or "Columns" not in ds:
        raise ImageLoadError(path, "DICOM pixel data without Rows/Columns")
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).strip().upper()
    samples = int(ds.get("SamplesPerPixel", 1) or 1)
    if samples > 1 or photometric not in ("MONOCHROME1", "MONOCHROME2"):
        raise ImageLoadError(
            path,
            f"colour DICOM not supported (SamplesPerPixel={samples}, PhotometricInterpretation={photometric}); "
            "export a greyscale image",
        )
    frames = _int_or(ds.get("NumberOfFrames", 1), 1)
    if frames > 1:
        raise ImageLoadError(path, f"multi-frame DICOM not supported ({frames} frames); export a single frame")
    rows, cols = int(ds.get("Rows", 0) or 0), int(ds.get("Columns", 0) or 0)
    _check_size(path, rows, cols, max_pixels)
    bits = int(ds.get("BitsStored", ds.get("BitsAllocated", 16)) or 16)
    try:
        raw = ds.pixel_array
    except Exception as exc:
        syntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
        name = f"{syntax.name} ({syntax})" if syntax is not None else "unknown transfer syntax"
        msg = " ".join(str(exc).split())[:300]
        raise ImageLoadError(path, f"cannot decode DICOM pixel data, transfer syntax {name}: {msg}") from None
    if raw.ndim != 2:
        raise ImageLoadError(path, f"DICOM pixel data has shape {raw.shape}, expected one grey frame")
    try:
        image = _dicom_to_unit(raw, ds)
    except ValueError as exc:
        raise ImageLoadError(path, f"invalid DICOM LUT or window ({exc})") from None
    if photometric == "MONOCHROME1":
        image = (1.0 - image).astype(np.float32)
    info = ImageInfo(format="dicom", bit_depth=bits, height=rows, width=cols, mode=photometric)
    return image, info


def _int_or(value: Any, default: int) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        return default


def _dicom_to_unit(raw: np.ndarray, ds: Any) -> np.ndarray:
    """Modality LUT, then VOI LUT / window scaled by its output range, else min-max."""
    from pydicom.pixels import apply_modality_lut, apply_voi_lut

    rescaled = np.asarray(apply_modality_lut(raw, ds), dtype=np.float64)
    if "VOILUTSequence" in ds and len(ds.VOILUTSequence) > 0:
        lut = np.asarray(ds.VOILUTSequence[0].LUTData, dtype=np.float64).ravel()
        out = np.asarray(apply_voi_lut(rescaled, ds, index=0, prefer_lut=True), dtype=np.float64)
        lo, hi = float(lut.min()), float(lut.max())
    elif "WindowCenter" in ds and "WindowWidth" in ds:
        out = np.asarray(apply_voi_lut(rescaled, ds, index=0, prefer_lut=False), dtype=np.float64)
        lo, hi = _window_output_range(ds)
    else:
        return _minmax(rescaled)
    if hi <= lo:
        return _minmax(out)
    return np.clip((out - lo) / (hi - lo), 0.0, 1.0).astype(np.float32)


def _window_output_range(ds: Any) -> tuple[float, float]:
    """Output range of pydicom's ``apply_windowing`` (same rules, PS3.3 C.11.2)."""
    bits = int(ds.BitsStored)
    if ds.get("ModalityLUTSequence"):
        lo, hi = 0.0, float(2 ** int(ds.ModalityLUTSequence[0].LUTDescriptor[2]) - 1)
    elif int(ds.get("PixelRepresentation", 0)) == 0:
        lo, hi = 0.0, float(2**bits - 1)
    else:
        lo, hi = float(-(2 ** (bits - 1))), float(2 ** (bits - 1) - 1)
    slope, intercept = ds.get("RescaleSlope"), ds.get("RescaleIntercept")
    if slope is not None and intercept is not None:
        lo, hi = lo * float(slope) + float(intercept), hi * float(slope) + float(intercept)
    return min(lo, hi), max(lo, hi)
