"""Write a synthetic DCE case (:mod:`export.synthetic.dce`) as real MR DICOM, in three encodings.

Scanners encode a dynamic series in one of three ways, and the appliance must
assemble all three to the same 4-D array:

``single_series``
    one classic MR Image Storage series holding every phase; phases told apart
    by Temporal Position Identifier (0020,0100) / Number of Temporal Positions
    (0020,0105), with Acquisition Time per phase (PS3.3 C.8.3.1 MR Image
    Module). Trigger Time is left out: it is Type 2C there, for cardiac-gated
    images only, and dciodvfy reports it as an error otherwise (the assembly
    still orders by it when a scanner sends it; the tests add it).
``series_per_phase``
    one classic series per phase, Series Description ``pre``, ``post1`` ..
    ``post4``, ordered by Acquisition Time; no temporal position attributes.
    Pixel values carry Rescale Slope 0.5 / Intercept -10 so readers must apply them.
``enhanced``
    one Enhanced MR Image Storage instance (PS3.3 A.36.2) whose frames carry
    Temporal Position Index in the per-frame Frame Content Sequence
    (C.7.6.16.2.2) and the slice position in the Plane Position Sequence.

Geometry is axial, Image Orientation (Patient) ``1\\0\\0\\0\\1\\0``, slices along +z
(patient superior) at :data:`export.synthetic.dce.SPACING_MM`. Every value
stored is ``round(volume)`` (see :func:`stored_signal`), so all three
encodings decode to exactly the same numbers. Patient and study attributes are
synthetic, derived from a seed.
"""

from __future__ import annotations

import datetime as dt
from io import BytesIO
from pathlib import Path
from typing import Literal

import numpy as np
from pydicom.datadict import dictionary_VR, tag_for_keyword
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filewriter import dcmwrite
from pydicom.uid import (
    PYDICOM_IMPLEMENTATION_UID,
    EnhancedMRImageStorage,
    ExplicitVRLittleEndian,
    MRImageStorage,
    generate_uid,
)

from engines.files import durable_file
from export.synthetic._dce_common import (
    GADOLINIUM,
    IOP,
    ORIGIN,
    StudyIdentity,
    code_item,
    common_modules,
    contrast_module,
    decimal_string,
    phase_name,
    phase_time,
    pixel_module,
    position,
    stored_signal,
    study_identity,
    tm,
)
from export.synthetic.dce import SPACING_MM, DceCase

__all__ = [
    "ENCODINGS",
    "MR_IMAGE_STORAGE",
    "ENHANCED_MR_IMAGE_STORAGE",
    "Encoding",
    "StudyIdentity",
    "encode_case",
    "phase_name",
    "stored_signal",
    "study_identity",
    "to_bytes",
    "write_case",
]

Encoding = Literal["single_series", "series_per_phase", "enhanced"]
ENCODINGS: tuple[Encoding, ...] = ("single_series", "series_per_phase", "enhanced")
MR_IMAGE_STORAGE: str = MRImageStorage
ENHANCED_MR_IMAGE_STORAGE: str = EnhancedMRImageStorage

_PER_PHASE_SLOPE, _PER_PHASE_INTERCEPT = 0.5, -10.0
_ENHANCED_INTERCEPT = -100.0


def _classic_slice(
    case: DceCase, ident: StudyIdentity, phase: int, k: int, series_uid: str, series_number: int,
    description: str, instance_number: int, stored: np.ndarray, temporal: bool, rescale: tuple[float, float] | None,
) -> Dataset:
    """One MR Image Storage instance (A.4): slice ``k`` of ``phase``."""
    ds = Dataset()
    sop_uid = generate_uid(entropy_srcs=[ident.uid_seed, series_uid, str(phase), str(k)])
    common_modules(ds, ident, case, MR_IMAGE_STORAGE, sop_uid)
    when = phase_time(ident, case, phase)
    ds.SeriesInstanceUID, ds.SeriesNumber, ds.SeriesDescription = series_uid, series_number, description
    ds.Laterality = "L"
    ds.SeriesDate, ds.SeriesTime = when.strftime("%Y%m%d"), tm(when if not temporal else phase_time(ident, case, 0))
    ds.InstanceNumber = instance_number
    ds.ImageType = ["ORIGINAL", "PRIMARY", "OTHER"]
    ds.AcquisitionNumber = phase + 1
    ds.AcquisitionDate, ds.AcquisitionTime = when.strftime("%Y%m%d"), tm(when)
    ds.ContentDate, ds.ContentTime = when.strftime("%Y%m%d"), tm(when)
    ds.PixelSpacing = [decimal_string(SPACING_MM[1]), decimal_string(SPACING_MM[2])]
    ds.ImageOrientationPatient = [decimal_string(v) for v in IOP]
    ds.ImagePositionPatient = position(k)
    ds.SliceThickness = decimal_string(SPACING_MM[0])
    ds.SpacingBetweenSlices = decimal_string(SPACING_MM[0])
    ds.SliceLocation = decimal_string(ORIGIN[2] + k * SPACING_MM[0])
    ds.ScanningSequence, ds.SequenceVariant, ds.ScanOptions = "GR", ["SP", "SS"], ""
    ds.MRAcquisitionType = "3D"
    ds.SequenceName = "*fl3d1"
    ds.AngioFlag = "N"
    ds.RepetitionTime, ds.EchoTime, ds.EchoTrainLength, ds.FlipAngle = "4.5", "1.8", 1, "10"
    ds.NumberOfAverages, ds.ImagingFrequency, ds.ImagedNucleus = "1", "63.6", "1H"
    ds.MagneticFieldStrength = "1.5"
    if temporal:
        ds.TemporalPositionIdentifier = phase + 1
        ds.NumberOfTemporalPositions = len(case.phase_times_s)
    if phase > 0:
        contrast_module(ds, ident, case)
    rows, cols = stored.shape
    if rescale is None:
        pixels = stored.astype(np.uint16)
        pixel_module(ds, rows, cols, 12)
    else:
        slope, intercept = rescale
        pixels = np.round((stored - intercept) / slope).astype(np.uint16)
        pixel_module(ds, rows, cols, 16)
        ds.RescaleSlope, ds.RescaleIntercept, ds.RescaleType = decimal_string(slope), decimal_string(intercept), "US"
    ds.WindowCenter, ds.WindowWidth = "300", "700"
    ds.PixelData = pixels.tobytes()
    return ds


def _classic(case: DceCase, ident: StudyIdentity, per_phase: bool) -> list[Dataset]:
    stored = stored_signal(case)
    out: list[Dataset] = []
    n_z = stored.shape[1]
    if not per_phase:
        series_uid = generate_uid(entropy_srcs=[ident.uid_seed, "single-series"])
        for p in range(stored.shape[0]):
            for k in range(n_z):
                out.append(_classic_slice(case, ident, p, k, series_uid, 3, "DCE dynamic", p * n_z + k + 1,
                                          stored[p, k], temporal=True, rescale=None))
        return out
    for p in range(stored.shape[0]):
        series_uid = generate_uid(entropy_srcs=[ident.uid_seed, "per-phase", str(p)])
        for k in range(n_z):
            out.append(_classic_slice(case, ident, p, k, series_uid, 10 + p, phase_name(p), k + 1, stored[p, k],
                                      temporal=False, rescale=(_PER_PHASE_SLOPE, _PER_PHASE_INTERCEPT)))
    return out


def _item(**attrs: object) -> Dataset:
    item = Dataset()
    for keyword, value in attrs.items():
        setattr(item, keyword, _binary_number(keyword, value))
    return item


def _binary_number(keyword: str, value: object) -> object:
    """Enhanced MR uses FD for many values that classic MR keeps as DS: convert text to float there."""
    if isinstance(value, str) and value and dictionary_VR(tag_for_keyword(keyword) or 0) in ("FD", "FL"):
        return float(value)
    return value


def _enhanced_shared(ident: StudyIdentity) -> Dataset:
    """Shared Functional Groups (C.7.6.16.1): geometry, pixel transformation and MR acquisition macros."""
    shared = Dataset()
    shared.PixelMeasuresSequence = [_item(
        PixelSpacing=[decimal_string(SPACING_MM[1]), decimal_string(SPACING_MM[2])], SliceThickness=decimal_string(SPACING_MM[0]),
        SpacingBetweenSlices=decimal_string(SPACING_MM[0]),
    )]
    shared.PlaneOrientationSequence = [_item(ImageOrientationPatient=[decimal_string(v) for v in IOP])]
    shared.PixelValueTransformationSequence = [_item(
        RescaleIntercept=decimal_string(_ENHANCED_INTERCEPT), RescaleSlope="1", RescaleType="US",
    )]
    shared.FrameAnatomySequence = [_item(
        AnatomicRegionSequence=[code_item("76752008", "SCT", "Breast")], FrameLaterality="L",
    )]
    shared.MRTimingAndRelatedParametersSequence = [_item(
        RepetitionTime="4.5", FlipAngle="10", EchoTrainLength=1, RFEchoTrainLength=1, GradientEchoTrainLength=1,
        SpecificAbsorptionRateSequence=[_item(
            SpecificAbsorptionRateDefinition="IEC_WHOLE_BODY", SpecificAbsorptionRateValue=0.8,
        )],
        GradientOutputType="DB_DT", GradientOutput="0.5",
        OperatingModeSequence=[_item(OperatingModeType="STATIC FIELD", OperatingMode="IEC_NORMAL")],
    )]
    shared.MRFOVGeometrySequence = [_item(
        InPlanePhaseEncodingDirection="ROW", MRAcquisitionFrequencyEncodingSteps=64,
        MRAcquisitionPhaseEncodingStepsInPlane=64, MRAcquisitionPhaseEncodingStepsOutOfPlane=16,
        PercentSampling="100", PercentPhaseFieldOfView="100",
    )]
    shared.MREchoSequence = [_item(EffectiveEchoTime="1.8")]
    shared.MRModifierSequence = [_item(
        InversionRecovery="NO", FlowCompensation="NONE", Spoiling="RF", T2Preparation="NO",
        SpectrallySelectedExcitation="NONE", SpatialPresaturation="NONE", PartialFourier="NO",
        ParallelAcquisition="NO",
    )]
    shared.MRImagingModifierSequence = [_item(
        MagnetizationTransfer="NONE", BloodSignalNulling="NO", Tagging="NONE",
        TransmitterFrequency="63.6", PixelBandwidth="500",
    )]
    shared.MRReceiveCoilSequence = [_item(
        ReceiveCoilName="Breast 16", ReceiveCoilManufacturerName="Synthetic", ReceiveCoilType="MULTICOIL",
        QuadratureReceiveCoil="NO",
        MultiCoilDefinitionSequence=[_item(MultiCoilElementName="BR1", MultiCoilElementUsed="YES")],
    )]
    shared.MRTransmitCoilSequence = [_item(
        TransmitCoilName="Body", TransmitCoilManufacturerName="Synthetic", TransmitCoilType="BODY",
    )]
    shared.MRAveragesSequence = [_item(NumberOfAverages="1")]
    shared.MRImageFrameTypeSequence = [_item(
        FrameType=["ORIGINAL", "PRIMARY", "VOLUME", "NONE"], PixelPresentation="MONOCHROME",
        VolumetricProperties="VOLUME", VolumeBasedCalculationTechnique="NONE",
        ComplexImageComponent="MAGNITUDE", AcquisitionContrast="T1",
    )]
    return shared


def _enhanced_frame(ident: StudyIdentity, case: DceCase, phase: int, k: int, n_z: int) -> Dataset:
    """Per-frame Functional Groups: Frame Content (temporal position, stack position), Plane Position, contrast use."""
    when = phase_time(ident, case, phase) + dt.timedelta(seconds=k * 60.0 / n_z)
    frame = Dataset()
    frame.FrameContentSequence = [_item(
        FrameAcquisitionNumber=phase + 1,
        FrameReferenceDateTime=when.strftime("%Y%m%d%H%M%S.%f"),
        FrameAcquisitionDateTime=when.strftime("%Y%m%d%H%M%S.%f"),
        FrameAcquisitionDuration=60000.0 / n_z,
        DimensionIndexValues=[phase + 1, k + 1],
        TemporalPositionIndex=phase + 1,
        StackID="1",
        InStackPositionNumber=k + 1,
        FrameLabel=phase_name(phase),
    )]
    frame.PlanePositionSequence = [_item(ImagePositionPatient=position(k))]
    frame.ContrastBolusUsageSequence = [_item(
        ContrastBolusAgentNumber=1, ContrastBolusAgentAdministered="YES" if phase > 0 else "NO",
        ContrastBolusAgentDetected="YES" if phase > 0 else "NO",
        ContrastBolusAgentPhase="DYNAMIC" if phase > 0 else "PRE_CONTRAST",
    )]
    return frame


def _enhanced(case: DceCase, ident: StudyIdentity) -> Dataset:
    """One Enhanced MR Image Storage instance (PS3.3 A.36.2) holding every phase as frames."""
    stored = stored_signal(case)
    n_p, n_z, rows, cols = stored.shape
    ds = Dataset()
    series_uid = generate_uid(entropy_srcs=[ident.uid_seed, "enhanced"])
    common_modules(ds, ident, case, ENHANCED_MR_IMAGE_STORAGE, generate_uid(entropy_srcs=[ident.uid_seed, series_uid]))
    first = phase_time(ident, case, 0)
    ds.SeriesInstanceUID, ds.SeriesNumber, ds.SeriesDescription = series_uid, 5, "DCE dynamic (enhanced)"
    ds.SeriesDate, ds.SeriesTime = first.strftime("%Y%m%d"), tm(first)
    ds.InstanceNumber = 1
    ds.ContentDate, ds.ContentTime = first.strftime("%Y%m%d"), tm(first)
    ds.NumberOfFrames = n_p * n_z
    ds.ImageType = ["ORIGINAL", "PRIMARY", "VOLUME", "NONE"]
    ds.AcquisitionNumber = 1
    ds.AcquisitionDateTime = first.strftime("%Y%m%d%H%M%S.%f")
    ds.AcquisitionDuration = case.phase_times_s[-1] + 60.0
    ds.ContentQualification = "RESEARCH"
    ds.ResonantNucleus = "1H"
    ds.KSpaceFiltering = "NONE"
    ds.MagneticFieldStrength = "1.5"
    ds.ApplicableSafetyStandardAgency = "IEC"
    ds.ImageComments = "synthetic DCE study"
    ds.PixelPresentation, ds.VolumetricProperties = "MONOCHROME", "VOLUME"
    ds.VolumeBasedCalculationTechnique, ds.ComplexImageComponent, ds.AcquisitionContrast = "NONE", "MAGNITUDE", "T1"
    ds.BurnedInAnnotation, ds.LossyImageCompression, ds.PresentationLUTShape = "NO", "00", "IDENTITY"
    _pulse_sequence_module(ds)
    ds.ContrastBolusAgentSequence = [_contrast_agent()]  # Enhanced Contrast/Bolus Module (C.7.6.4b)
    ds.AcquisitionContextSequence = []
    # Multi-frame Dimension Module (C.7.6.17)
    organization = generate_uid(entropy_srcs=[ident.uid_seed, "dimension-organization"])
    ds.DimensionOrganizationSequence = [_item(DimensionOrganizationUID=organization)]
    ds.DimensionOrganizationType = "3D_TEMPORAL"
    ds.DimensionIndexSequence = [
        _item(DimensionOrganizationUID=organization, DimensionIndexPointer=0x00209128,
              FunctionalGroupPointer=0x00209111, DimensionDescriptionLabel="Temporal Position"),
        _item(DimensionOrganizationUID=organization, DimensionIndexPointer=0x00209057,
              FunctionalGroupPointer=0x00209111, DimensionDescriptionLabel="Stack Position"),
    ]
    ds.SharedFunctionalGroupsSequence = [_enhanced_shared(ident)]
    ds.PerFrameFunctionalGroupsSequence = [_enhanced_frame(ident, case, p, k, n_z) for p in range(n_p)
                                           for k in range(n_z)]
    pixel_module(ds, rows, cols, 16)
    ds.PixelData = np.round(stored - _ENHANCED_INTERCEPT).astype(np.uint16).reshape(n_p * n_z, rows, cols).tobytes()
    return ds


def _pulse_sequence_module(ds: Dataset) -> None:
    """MR Pulse Sequence Module (C.8.13.4) of a 3-D spoiled gradient echo."""
    ds.PulseSequenceName = "fl3d"
    ds.MRAcquisitionType = "3D"
    ds.EchoPulseSequence, ds.MultiPlanarExcitation = "GRADIENT", "NO"
    ds.PhaseContrast, ds.TimeOfFlightContrast = "NO", "NO"
    ds.SteadyStatePulseSequence, ds.EchoPlanarPulseSequence, ds.SaturationRecovery = "NONE", "NO", "NO"
    ds.SpectrallySelectedSuppression, ds.OversamplingPhase = "NONE", "NONE"
    ds.GeometryOfKSpaceTraversal, ds.SegmentedKSpaceTraversal = "RECTILINEAR", "SINGLE"
    ds.RectilinearPhaseEncodeReordering, ds.CoverageOfKSpace = "LINEAR", "FULL"
    ds.NumberOfKSpaceTrajectories = 1


def _contrast_agent() -> Dataset:
    """The gadolinium agent item of the Enhanced Contrast/Bolus Module (C.7.6.4b)."""
    agent = code_item(*GADOLINIUM)
    agent.ContrastBolusAgentNumber = 1
    agent.ContrastBolusAdministrationRouteSequence = [code_item("47625008", "SCT", "Intravenous route")]
    agent.ContrastBolusIngredientCodeSequence = [code_item("10467000", "SCT", "Gadolinium")]
    agent.ContrastBolusVolume = "7.5"
    agent.ContrastBolusIngredientConcentration = "604.72"
    return agent


def encode_case(case: DceCase, encoding: Encoding, identity: StudyIdentity | None = None) -> list[Dataset]:
    """The case as DICOM datasets in ``encoding``, each with file meta (Explicit VR Little Endian)."""
    ident = identity or study_identity(0)
    if encoding == "single_series":
        datasets = _classic(case, ident, per_phase=False)
    elif encoding == "series_per_phase":
        datasets = _classic(case, ident, per_phase=True)
    elif encoding == "enhanced":
        datasets = [_enhanced(case, ident)]
    else:
        raise ValueError(f"encoding {encoding!r} is not one of {', '.join(ENCODINGS)}")
    return [_with_meta(ds) for ds in datasets]


def _with_meta(ds: Dataset) -> Dataset:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = ds.SOPClassUID
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    ds.file_meta = meta
    return ds


def to_bytes(ds: Dataset) -> bytes:
    """One dataset as a DICOM Part 10 file in memory (Explicit VR Little Endian)."""
    buffer = BytesIO()
    if "TransferSyntaxUID" not in getattr(ds, "file_meta", {}):
        _with_meta(ds)
    dcmwrite(buffer, ds, enforce_file_format=True)
    return buffer.getvalue()


def write_case(
    case: DceCase, directory: Path, encoding: Encoding, identity: StudyIdentity | None = None,
) -> list[Path]:
    """Write the case as Part 10 files ``<SOPInstanceUID>.dcm`` under ``directory``; return the paths."""
    directory.mkdir(parents=True, exist_ok=True)
    paths: list[Path] = []
    for ds in encode_case(case, encoding, identity):
        path = directory / f"{ds.SOPInstanceUID}.dcm"
        with durable_file(path) as handle:  # temporary name, fsync, rename, directory fsync
            handle.write(to_bytes(ds))
        paths.append(path)
    return paths

