"""Decoding one DICOM frame to RGB uint8, for every transfer syntax the node accepts.

Compressed syntaxes go through imagecodecs (libjpeg-turbo, OpenJPEG,
CharLS), which release the GIL so frames decode in parallel threads. Colour
conversion follows PS3.3 C.7.6.3.1.2 (YBR_FULL) where the codec does not
undo it itself.
"""

from __future__ import annotations

import numpy as np
from pydicom import uid

from appliance.errors import JobFailed

__all__ = ["SUPPORTED_TRANSFER_SYNTAXES", "decode_frame", "NATIVE"]

IMPLICIT_LE = uid.ImplicitVRLittleEndian
EXPLICIT_LE = uid.ExplicitVRLittleEndian
NATIVE = frozenset({IMPLICIT_LE, EXPLICIT_LE})
_JPEG = frozenset({uid.JPEGBaseline8Bit, uid.JPEGExtended12Bit, uid.JPEGLossless, uid.JPEGLosslessSV1})
_JPEG_LS = frozenset({uid.JPEGLSLossless, uid.JPEGLSNearLossless})
_J2K = frozenset({uid.JPEG2000Lossless, uid.JPEG2000, uid.HTJ2KLossless, uid.HTJ2KLosslessRPCL, uid.HTJ2K})
_RLE = uid.RLELossless
SUPPORTED_TRANSFER_SYNTAXES = NATIVE | _JPEG | _JPEG_LS | _J2K | {_RLE}


def ybr_full_to_rgb(ybr: np.ndarray) -> np.ndarray:
    """YBR_FULL (PS3.3 C.7.6.3.1.2) to RGB, uint8."""
    y, cb, cr = (ybr[..., i].astype(np.float32) for i in range(3))
    r = y + 1.402 * (cr - 128)
    g = y - 0.344136 * (cb - 128) - 0.714136 * (cr - 128)
    b = y + 1.772 * (cb - 128)
    out: np.ndarray = np.clip(np.rint(np.stack([r, g, b], -1)), 0, 255).astype(np.uint8)
    return out


def _to_rgb8(pixels: np.ndarray, photometric: str, already_rgb: bool) -> np.ndarray:
    if pixels.dtype != np.uint8:
        pixels = (pixels >> max(0, int(pixels.max()).bit_length() - 8)).astype(np.uint8)
    if pixels.ndim == 2:
        if photometric == "MONOCHROME1":
            pixels = 255 - pixels
        return np.repeat(pixels[..., None], 3, axis=2)
    if pixels.shape[2] != 3:
        raise JobFailed(f"frames must have 1 or 3 samples per pixel, got {pixels.shape[2]}")
    if photometric.startswith("YBR_FULL") and not already_rgb:
        return ybr_full_to_rgb(pixels)
    return pixels


def decode_frame(data: bytes, transfer_syntax: str, photometric: str, rows: int, columns: int,
                 samples: int = 3, bits_allocated: int = 8, planar: int = 0) -> np.ndarray:
    """One frame's bytes to RGB uint8 (rows, columns, 3); JobFailed when it cannot be decoded."""
    import imagecodecs

    try:
        if transfer_syntax in NATIVE:
            dtype = np.uint8 if bits_allocated == 8 else np.dtype("<u2")
            need = rows * columns * samples * (bits_allocated // 8)
            if len(data) < need:
                raise JobFailed(f"frame holds {len(data)} bytes, {need} expected: truncated")
            a = np.frombuffer(data, dtype, rows * columns * samples)
            px: np.ndarray
            if samples == 1:
                px = a.reshape(rows, columns)
            elif planar:
                px = a.reshape(samples, rows, columns).transpose(1, 2, 0)
            else:
                px = a.reshape(rows, columns, samples)
            return _to_rgb8(px, photometric, False)
        if transfer_syntax in _JPEG:
            if photometric == "RGB":  # no colour transform in the codestream
                px = imagecodecs.jpeg8_decode(data, colorspace="RGB", outcolorspace="RGB")
            else:
                px = imagecodecs.jpeg8_decode(data)
            return _to_rgb8(px, photometric, True)
        if transfer_syntax in _J2K:
            px = imagecodecs.jpeg2k_decode(data)
            return _to_rgb8(px, photometric, photometric != "YBR_FULL")
        if transfer_syntax in _JPEG_LS:
            return _to_rgb8(imagecodecs.jpegls_decode(data), photometric, False)
        if transfer_syntax == _RLE:
            # Byte segments, one colour plane after another (PS3.5 G.2).
            dtype = np.uint8 if bits_allocated == 8 else np.dtype(">u2")
            out = imagecodecs.dicomrle_decode(data, dtype)
            flat = np.frombuffer(out, dtype) if isinstance(out, (bytes, bytearray)) else np.asarray(out)
            flat = flat[: samples * rows * columns]
            if samples > 1:
                px = flat.reshape(samples, rows, columns).transpose(1, 2, 0)
            else:
                px = flat.reshape(rows, columns)
            return _to_rgb8(px.astype(np.uint16) if bits_allocated > 8 else px, photometric, False)
    except JobFailed:
        raise
    except Exception as exc:  # codec errors: corrupt or truncated codestream
        raise JobFailed(f"cannot decode a frame in transfer syntax {transfer_syntax}: {exc}") from exc
    raise JobFailed(
        f"transfer syntax {transfer_syntax} is not supported for slides; "
        f"supported: {', '.join(sorted(SUPPORTED_TRANSFER_SYNTAXES))}"
    )
