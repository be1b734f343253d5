"""Which SOP classes and transfer syntaxes the storage SCP accepts (PS3.4 B.5, PS3.5 section 10)."""

from __future__ import annotations

from pydicom.uid import (
    BasicTextSRStorage,
    Comprehensive3DSRStorage,
    ComprehensiveSRStorage,
    CTImageStorage,
    DeflatedExplicitVRLittleEndian,
    EnhancedCTImageStorage,
    EnhancedMRImageStorage,
    EnhancedSRStorage,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    JPEGLossless,
    JPEGLosslessSV1,
    JPEGLSLossless,
    JPEGLSNearLossless,
    LegacyConvertedEnhancedMRImageStorage,
    MRImageStorage,
    MultiFrameTrueColorSecondaryCaptureImageStorage,
    RLELossless,
    SecondaryCaptureImageStorage,
    SegmentationStorage,
    VLWholeSlideMicroscopyImageStorage,
)
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

#: Verification SOP Class (PS3.4 Annex A)
VERIFICATION = Verification

#: Storage SOP classes (PS3.4 Table B.5-1): the two workloads, what routing ignores, and our results.
STORAGE_SOP_CLASSES: tuple[str, ...] = (
    VLWholeSlideMicroscopyImageStorage,
    MRImageStorage,
    EnhancedMRImageStorage,
    LegacyConvertedEnhancedMRImageStorage,
    CTImageStorage,
    EnhancedCTImageStorage,
    SecondaryCaptureImageStorage,
    MultiFrameTrueColorSecondaryCaptureImageStorage,
    BasicTextSRStorage,
    EnhancedSRStorage,
    ComprehensiveSRStorage,
    Comprehensive3DSRStorage,
    SegmentationStorage,
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
