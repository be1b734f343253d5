"""Which SOP classes and transfer syntaxes the storage SCP accepts (PS3.4 B.5, PS3.5 section 10)."""

from __future__ import annotations

from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    JPEGLosslessSV1,
    JPEGLossless,
    JPEGLSLossless,
    JPEGLSNearLossless,
    RLELossless,
)
#: Verification SOP Class (PS3.4 Annex A)
VERIFICATION = "1.2.840.10008.1.1"

#: Storage SOP classes (PS3.4 Table B.5-1): the two workloads, what routing ignores, and our results.
STORAGE_SOP_CLASSES: tuple[str, ...] = (
    "1.2.840.10008.5.1.4.1.1.77.1.6",  # VL Whole Slide Microscopy Image Storage
    "1.2.840.10008.5.1.4.1.1.4",  # MR Image Storage
    "1.2.840.10008.5.1.4.1.1.4.1",  # Enhanced MR Image Storage
    "1.2.840.10008.5.1.4.1.1.4.4",  # Legacy Converted Enhanced MR Image Storage
    "1.2.840.10008.5.1.4.1.1.2",  # CT Image Storage
    "1.2.840.10008.5.1.4.1.1.2.1",  # Enhanced CT Image Storage
    "1.2.840.10008.5.1.4.1.1.7",  # Secondary Capture Image Storage
    "1.2.840.10008.5.1.4.1.1.7.4",  # Multi-frame True Color Secondary Capture Image Storage
    "1.2.840.10008.5.1.4.1.1.88.11",  # Basic Text SR Storage
    "1.2.840.10008.5.1.4.1.1.88.22",  # Enhanced SR Storage
    "1.2.840.10008.5.1.4.1.1.88.33",  # Comprehensive SR Storage
    "1.2.840.10008.5.1.4.1.1.88.34",  # Comprehensive 3D SR Storage
    "1.2.840.10008.5.1.4.1.1.66.4",  # Segmentation Storage
)

#: Accepted transfer syntaxes. pynetdicom accepts, for each proposed context, the first syntax of this
#: list the peer proposed, so compressed syntaxes come first: a sender offering its file's own
#: compression next to an uncompressed fallback sends the file as it is, without recoding it.
#: Explicit VR Big Endian is retired (PS3.5 A.3) but still sent by old modalities; we keep it as received.
TRANSFER_SYNTAXES: tuple[str, ...] = tuple(
    str(uid)
    for uid in (
        JPEG2000Lossless,
        JPEG2000,
        JPEGLSLossless,
        JPEGLSNearLossless,
        JPEGLosslessSV1,
        JPEGLossless,
        JPEGBaseline8Bit,
        JPEGExtended12Bit,
        RLELossless,
        DeflatedExplicitVRLittleEndian,
        ExplicitVRLittleEndian,
        ImplicitVRLittleEndian,
        ExplicitVRBigEndian,
    )
)
