"""Source studies for the report tests: a synthetic WSI level, pydicom's MR/CT files, odd variants."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pydicom
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian, generate_uid

from appliance.findings import EngineIdentity, SourceImage

WSI_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.77.1.6"  # VL Whole Slide Microscopy Image Storage


def _code(value: str, scheme: str, meaning: str) -> Dataset:
    item = Dataset()
    item.CodeValue = value
    item.CodingSchemeDesignator = scheme
    item.CodeMeaning = meaning
    return item


def make_wsi_level(
    path: Path, rows: int = 768, columns: int = 1024, tile: int = 256, mpp: float = 0.5, seed: str = "slide-1"
) -> SourceImage:
    """Write one TILED_FULL VL Whole Slide Microscopy level (uncompressed RGB); UIDs derive from ``seed``."""
    ds = Dataset()
    ds.SOPClassUID = WSI_SOP_CLASS
    ds.SOPInstanceUID = generate_uid(entropy_srcs=[seed, "instance"])
    ds.StudyInstanceUID = generate_uid(entropy_srcs=[seed, "study"])
    ds.SeriesInstanceUID = generate_uid(entropy_srcs=[seed, "series"])
    ds.FrameOfReferenceUID = generate_uid(entropy_srcs=[seed, "frame-of-reference"])
    ds.Modality = "SM"
    ds.PatientName = "Slide^Synthetic"
    ds.PatientID = "WSI-0001"
    ds.PatientBirthDate = ""
    ds.PatientSex = "F"
    ds.StudyDate = "20260101"
    ds.StudyTime = "120000"
    ds.StudyID = "S1"
    ds.AccessionNumber = "ACC-WSI-1"
    ds.ReferringPhysicianName = ""
    ds.SeriesNumber = 1
    ds.InstanceNumber = 1
    ds.Manufacturer = "Synthetic Scanner"
    ds.ManufacturerModelName = "Test"
    ds.DeviceSerialNumber = "1"
    ds.SoftwareVersions = "1"
    ds.ContentDate = "20260101"
    ds.ContentTime = "120000"
    ds.AcquisitionDateTime = "20260101120000"
    ds.ImageType = ["ORIGINAL", "PRIMARY", "VOLUME", "NONE"]
    ds.BurnedInAnnotation = "NO"
    ds.SpecimenLabelInImage = "NO"
    ds.FocusMethod = "AUTO"
    ds.ExtendedDepthOfField = "NO"
    ds.VolumetricProperties = "VOLUME"
    ds.ImagedVolumeWidth = columns * mpp / 1000
    ds.ImagedVolumeHeight = rows * mpp / 1000
    ds.ImagedVolumeDepth = 0.005
    ds.TotalPixelMatrixColumns = columns
    ds.TotalPixelMatrixRows = rows
    ds.TotalPixelMatrixFocalPlanes = 1
    origin = Dataset()
    origin.XOffsetInSlideCoordinateSystem = 20.0
    origin.YOffsetInSlideCoordinateSystem = 40.0
    ds.TotalPixelMatrixOriginSequence = [origin]
    ds.ImageOrientationSlide = [0.0, -1.0, 0.0, -1.0, 0.0, 0.0]
    ds.DimensionOrganizationType = "TILED_FULL"
    ds.NumberOfFocalPlanes = 1
    ds.NumberOfOpticalPaths = 1
    ds.ContainerIdentifier = "SLIDE-1"
    ds.IssuerOfTheContainerIdentifierSequence = []
    ds.ContainerTypeCodeSequence = [_code("433466003", "SCT", "Microscope slide")]
    specimen = Dataset()
    specimen.SpecimenIdentifier = "SPECIMEN-1"
    specimen.SpecimenUID = generate_uid(entropy_srcs=[seed, "specimen"])
    specimen.IssuerOfTheSpecimenIdentifierSequence = []
    specimen.SpecimenPreparationSequence = []
    ds.SpecimenDescriptionSequence = [specimen]
    path_item = Dataset()
    path_item.OpticalPathIdentifier = "1"
    path_item.IlluminationTypeCodeSequence = [_code("111744", "DCM", "Brightfield illumination")]
    path_item.IlluminationColorCodeSequence = [_code("11744", "DCM", "Full Spectrum")]
    ds.OpticalPathSequence = [path_item]
    ds.AcquisitionContextSequence = []
    measures = Dataset()
    measures.PixelSpacing = [mpp / 1000, mpp / 1000]
    measures.SliceThickness = 0.005
    frame_type = Dataset()
    frame_type.FrameType = ["ORIGINAL", "PRIMARY", "VOLUME", "NONE"]
    shared = Dataset()
    shared.PixelMeasuresSequence = [measures]
    shared.WholeSlideMicroscopyImageFrameTypeSequence = [frame_type]
    ds.SharedFunctionalGroupsSequence = [shared]
    ds.Rows = tile
    ds.Columns = tile
    tiles = ((rows + tile - 1) // tile) * ((columns + tile - 1) // tile)
    ds.NumberOfFrames = tiles
    ds.SamplesPerPixel = 3
    ds.PhotometricInterpretation = "RGB"
    ds.PlanarConfiguration = 0
    ds.BitsAllocated = 8
    ds.BitsStored = 8
    ds.HighBit = 7
    ds.PixelRepresentation = 0
    ds.LossyImageCompression = "00"
    pixels = np.full((tiles, tile, tile, 3), 230, dtype=np.uint8)
    ds.PixelData = pixels.tobytes()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.save_as(path, enforce_file_format=True)
    return SourceImage(ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID, ds.SOPClassUID, path)


def copy_testdata(name: str, directory: Path) -> Path:
    """A private copy of one of pydicom's test files."""
    src = Path(str(get_testdata_file(name)))
    dst = directory / name
    shutil.copyfile(src, dst)
    return dst


def odd_mr(directory: Path) -> Path:
    """MR_small.dcm re-encoded in Implicit VR with optional and Type 2 tags removed."""
    ds = pydicom.dcmread(copy_testdata("MR_small.dcm", directory))
    for keyword in ("PatientBirthDate", "PatientSex", "AccessionNumber", "StudyID", "ReferringPhysicianName",
                    "Manufacturer", "StudyTime", "InstitutionName", "SpecificCharacterSet"):
        if keyword in ds:
            delattr(ds, keyword)
    ds.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian
    out = directory / "odd_mr.dcm"
    ds.save_as(out, enforce_file_format=True)
    return out


def mr_series(directory: Path, series: int = 2, per_series: int = 3) -> list[Path]:
    """MR_small.dcm copied as ``series`` x ``per_series`` instances of one study (new series/instance UIDs)."""
    template = pydicom.dcmread(copy_testdata("MR_small.dcm", directory))
    paths = []
    for s in range(series):
        series_uid = generate_uid(entropy_srcs=["mr-series", str(s)])
        for i in range(per_series):
            template.SeriesInstanceUID = series_uid
            template.SeriesNumber = s + 1
            template.InstanceNumber = i + 1
            template.SOPInstanceUID = generate_uid(entropy_srcs=["mr-instance", str(s), str(i)])
            template.file_meta.MediaStorageSOPInstanceUID = template.SOPInstanceUID
            template.SeriesDescription = f"DCE phase {s}"
            path = directory / f"mr_{s}_{i}.dcm"
            template.save_as(path, enforce_file_format=True)
            paths.append(path)
    return paths


def source_of(path: Path) -> SourceImage:
    ds = pydicom.dcmread(path, stop_before_pixels=True)
    return SourceImage(ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID, ds.SOPClassUID, path)


def engine(task: str, version: str = "1.0.0", demo: bool = True) -> EngineIdentity:
    digest = (task.encode().hex() + version.encode().hex() + "0" * 64)[:64]
    return EngineIdentity(task, version, f"Demo {task} model", "Appliance Demo Models", "fp32", digest, demo)
