"""DICOM encoding of a synthetic slide: VL Whole Slide Microscopy Image (PS3.3 A.32.8).

One instance per pyramid level, TILED_FULL (PS3.3 C.7.6.17.3), frames encoded
as JPEG baseline (YBR_FULL_422) or lossless JPEG 2000 (RGB). Pixel Data is
streamed to the file frame by frame: the Basic Offset Table is reserved first
and filled in afterwards (PS3.5 A.4), so a level is never held in memory.
"""

from __future__ import annotations

import datetime as dt
import os
import struct
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Iterator

import numpy as np
from pydicom import Dataset
from pydicom.dataset import FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import (
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    PYDICOM_IMPLEMENTATION_UID,
    UID,
    VLWholeSlideMicroscopyImageStorage,
    generate_uid,
)

from engines.files import durable_file
from export.synthetic.slide import SyntheticSlide

__all__ = ["WsiWriter", "encode_frame"]

_ITEM = 0xE000FFFE  # (FFFE,E000) read as a little-endian uint32
_SEQ_DELIM = 0xE0DDFFFE


def _code(value: str, scheme: str, meaning: str) -> Dataset:
    c = Dataset()
    c.CodeValue, c.CodingSchemeDesignator, c.CodeMeaning = value, scheme, meaning
    return c


def _srgb_profile() -> bytes:
    from PIL import ImageCms

    return bytes(ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes())


def encode_frame(frame: np.ndarray, transfer_syntax: str, quality: int = 90) -> bytes:
    """One frame's encapsulated bytes in the given syntax ("jpeg" or "jpeg2000")."""
    import imagecodecs

    if transfer_syntax == "jpeg":
        return bytes(imagecodecs.jpeg8_encode(frame, level=quality, subsampling="422"))
    return bytes(imagecodecs.jpeg2k_encode(frame, codecformat="J2K", reversible=True, mct=False))


class WsiWriter:
    """Writes the instances of one synthetic slide's series."""

    def __init__(self, slide: SyntheticSlide, out_dir: Path, transfer_syntax: str, tile: int,
                 study_uid: str | None, series_uid: str | None, patient_id: str) -> None:
        self.slide, self.out_dir, self.tile = slide, Path(out_dir), tile
        self.ts = transfer_syntax
        self.ts_uid: UID = JPEGBaseline8Bit if transfer_syntax == "jpeg" else JPEG2000Lossless
        seed = [str(slide.seed), str(slide.width), str(slide.height), transfer_syntax]
        self.study_uid = study_uid or generate_uid(entropy_srcs=seed + ["study"])
        self.series_uid = series_uid or generate_uid(entropy_srcs=seed + ["series"])
        self.frame_of_reference = generate_uid(entropy_srcs=seed + ["for"])
        self.specimen_uid = generate_uid(entropy_srcs=seed + ["specimen"])
        self.patient_id = patient_id
        self.now = dt.datetime(2024, 1, 2, 10, 0, 0)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self._icc = _srgb_profile()

    # -- datasets -----------------------------------------------------------
    def _base(self, image_type: list[str], rows: int, cols: int, total: tuple[int, int],
              spacing_mm: float, frames: int, instance: int, uid_key: str) -> Dataset:
        ds = Dataset()
        self._identity(ds, image_type, instance, uid_key)
        self._dimensions(ds)
        self._image(ds, rows, cols, total, spacing_mm, frames)
        self._flags(ds, image_type)
        ds.SharedFunctionalGroupsSequence = Sequence([_shared_groups(image_type, spacing_mm)])
        self._specimen(ds)
        self._optical_path(ds)
        return ds

    def _identity(self, ds: Dataset, image_type: list[str], instance: int, uid_key: str) -> None:
        """SOP Common, Patient, General Study/Series/Equipment and Frame of Reference attributes."""
        ds.SpecificCharacterSet = "ISO_IR 100"
        ds.ImageType = image_type
        ds.SOPClassUID = VLWholeSlideMicroscopyImageStorage
        ds.SOPInstanceUID = generate_uid(entropy_srcs=[self.series_uid, uid_key])
        ds.StudyDate = ds.SeriesDate = ds.ContentDate = self.now.strftime("%Y%m%d")
        ds.StudyTime = ds.SeriesTime = ds.ContentTime = self.now.strftime("%H%M%S")
        ds.AcquisitionDateTime = self.now.strftime("%Y%m%d%H%M%S")
        ds.AccessionNumber = ""
        ds.Modality = "SM"
        ds.Manufacturer = "Synthetic Scanner Co"
        ds.ManufacturerModelName = "SynthScan 1"
        ds.DeviceSerialNumber = "0001"
        ds.SoftwareVersions = "1.0"
        ds.ReferringPhysicianName = ""
        ds.PatientName = "SYNTHETIC^SLIDE"
        ds.PatientID = self.patient_id
        ds.PatientBirthDate = ""
        ds.PatientSex = ""
        ds.StudyInstanceUID = self.study_uid
        ds.SeriesInstanceUID = self.series_uid
        ds.StudyID = "1"
        ds.SeriesNumber = 1
        ds.InstanceNumber = instance
        ds.FrameOfReferenceUID = self.frame_of_reference
        ds.PositionReferenceIndicator = "SLIDE_CORNER"

    def _dimensions(self, ds: Dataset) -> None:
        """Multi-frame Dimension module: TILED_FULL, indexed by column and row position."""
        ds.DimensionOrganizationType = "TILED_FULL"
        org = Dataset()
        org.DimensionOrganizationUID = generate_uid(entropy_srcs=[self.series_uid, "dim"])
        ds.DimensionOrganizationSequence = Sequence([org])
        index = []
        for tag, desc in ((0x0048021E, "Column Position"), (0x0048021F, "Row Position")):
            d = Dataset()
            d.DimensionOrganizationUID = org.DimensionOrganizationUID
            d.DimensionIndexPointer = tag
            d.FunctionalGroupPointer = 0x0048021A  # Plane Position (Slide) Sequence
            d.DimensionDescriptionLabel = desc
            index.append(d)
        ds.DimensionIndexSequence = Sequence(index)

    def _image(self, ds: Dataset, rows: int, cols: int, total: tuple[int, int], spacing_mm: float,
               frames: int) -> None:
        """Image Pixel and Whole Slide Microscopy Image attributes: frames, total matrix, imaged volume."""
        ds.SamplesPerPixel = 3
        ds.PhotometricInterpretation = "YBR_FULL_422" if self.ts == "jpeg" else "RGB"
        ds.PlanarConfiguration = 0
        ds.NumberOfFrames = frames
        ds.Rows, ds.Columns = rows, cols
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
        ds.TotalPixelMatrixColumns, ds.TotalPixelMatrixRows = total
        ds.TotalPixelMatrixFocalPlanes = 1
        ds.ImagedVolumeWidth = round(total[0] * spacing_mm, 6)
        ds.ImagedVolumeHeight = round(total[1] * spacing_mm, 6)
        ds.ImagedVolumeDepth = 0.004
        origin = Dataset()
        origin.XOffsetInSlideCoordinateSystem = 20.0
        origin.YOffsetInSlideCoordinateSystem = 40.0
        ds.TotalPixelMatrixOriginSequence = Sequence([origin])
        ds.ImageOrientationSlide = [0, -1, 0, -1, 0, 0]
        ds.VolumetricProperties = "VOLUME"

    def _flags(self, ds: Dataset, image_type: list[str]) -> None:
        """Label and annotation flags (Slide Label module for a LABEL), focus, and lossy compression."""
        associated = image_type[2] in ("LABEL", "OVERVIEW")
        ds.SpecimenLabelInImage = "YES" if associated else "NO"
        ds.BurnedInAnnotation = "YES" if associated else "NO"
        if image_type[2] == "LABEL":  # Slide Label module (PS3.3 C.8.12.8)
            ds.BarcodeValue = f"SLIDE-{self.slide.seed}"
            ds.LabelText = "SYNTHETIC"
        ds.FocusMethod = "AUTO"
        ds.ExtendedDepthOfField = "NO"
        ds.AcquisitionContextSequence = Sequence([])
        if self.ts == "jpeg":
            ds.LossyImageCompression = "01"
            ds.LossyImageCompressionRatio = 10.0
            ds.LossyImageCompressionMethod = "ISO_10918_1"
        else:
            ds.LossyImageCompression = "00"

    def _specimen(self, ds: Dataset) -> None:
        """Specimen module (PS3.3 C.7.6.22): one slide holding one specimen."""
        ds.ContainerIdentifier = f"SLIDE-{self.slide.seed}"
        ds.IssuerOfTheContainerIdentifierSequence = Sequence([])
        ds.ContainerTypeCodeSequence = Sequence([_code("433466003", "SCT", "Microscope slide")])
        spec = Dataset()
        spec.SpecimenIdentifier = f"SPEC-{self.slide.seed}"
        spec.SpecimenUID = self.specimen_uid
        spec.IssuerOfTheSpecimenIdentifierSequence = Sequence([])
        spec.SpecimenPreparationSequence = Sequence([])
        ds.SpecimenDescriptionSequence = Sequence([spec])

    def _optical_path(self, ds: Dataset) -> None:
        """Optical Path module (PS3.3 C.8.12.5): brightfield, full spectrum, sRGB profile."""
        op = Dataset()
        op.OpticalPathIdentifier = "1"
        op.IlluminationTypeCodeSequence = Sequence([_code("111744", "DCM", "Brightfield illumination")])
        op.IlluminationColorCodeSequence = Sequence([_code("414298005", "SCT", "Full Spectrum")])
        op.ICCProfile = self._icc
        op.ColorSpace = "SRGB"
        op.ObjectiveLensPower = 20
        ds.NumberOfOpticalPaths = 1
        ds.OpticalPathSequence = Sequence([op])

    # -- files ---------------------------------------------------------------
    def _write(self, ds: Dataset, frames: Iterator[np.ndarray], n_frames: int, name: str,
               encoded: Iterator[bytes] | None = None) -> Path:
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = ds.SOPClassUID
        meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        meta.TransferSyntaxUID = self.ts_uid
        meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
        ds.file_meta = meta
        final = self.out_dir / name
        with durable_file(final) as fh:
            ds.save_as(fh, enforce_file_format=True)
            fh.write(struct.pack("<HH2sHI", 0x7FE0, 0x0010, b"OB", 0, 0xFFFFFFFF))
            fh.write(struct.pack("<II", _ITEM, 4 * n_frames))
            bot_at = fh.tell()
            fh.write(b"\0" * (4 * n_frames))
            first = fh.tell()
            offsets = []
            for data in encoded if encoded is not None else self._encoded(frames):
                if len(data) % 2:
                    data += b"\0"
                offsets.append(fh.tell() - first)
                fh.write(struct.pack("<II", _ITEM, len(data)))
                fh.write(data)
            fh.write(struct.pack("<II", _SEQ_DELIM, 0))
            if len(offsets) != n_frames:
                raise RuntimeError(f"wrote {len(offsets)} frames, expected {n_frames}")
            fh.seek(bot_at)
            fh.write(struct.pack(f"<{n_frames}I", *offsets))
        return final

    def _encoded(self, frames: Iterator[np.ndarray]) -> Iterator[bytes]:
        """Encode frames on a few threads, in order, with only a small window in flight.

        (``Executor.map`` would take every frame of a gigapixel level up front.)
        """
        workers = min(4, os.cpu_count() or 1)
        window: deque[Future[bytes]] = deque()
        with ThreadPoolExecutor(max_workers=workers) as pool:
            for frame in frames:
                window.append(pool.submit(encode_frame, frame, self.ts))
                if len(window) > 2 * workers:
                    yield window.popleft().result()
            while window:
                yield window.popleft().result()

    def write_level(self, level: int) -> Path:
        """One pyramid level, ORIGINAL for the base and DERIVED/RESAMPLED below it."""
        w, h = self.slide.level_size(level)
        t = self.tile
        n = ((w + t - 1) // t) * ((h + t - 1) // t)
        image_type = ["ORIGINAL", "PRIMARY", "VOLUME", "NONE"] if level == 0 else [
            "DERIVED", "PRIMARY", "VOLUME", "RESAMPLED"]
        spacing = self.slide.mpp * 2**level / 1000.0
        ds = self._base(image_type, t, t, (w, h), spacing, n, level + 1, f"level{level}")
        ds.SeriesDescription = "synthetic H&E"
        return self._write(ds, self.slide.frames(level, t), n, f"level_{level}.dcm")

    def write_mosaic_level(self, level: int, reps: int) -> Path:
        """One level of a slide ``reps`` x ``reps`` times the size: the level's frames repeated.

        Like several sections of one tissue block on a large slide; each distinct frame is encoded
        once, so a level of tens of thousands of frames is written in seconds, a frame at a time.
        """
        w, h = self.slide.level_size(level)
        t = self.tile
        if w % t or h % t:
            raise ValueError(f"a mosaic needs levels of whole frames: level {level} is {w}x{h}, frames {t}")
        across, down = w // t, h // t
        small = list(self._encoded(self.slide.frames(level, t)))
        n = across * down * reps * reps
        image_type = ["ORIGINAL", "PRIMARY", "VOLUME", "NONE"] if level == 0 else [
            "DERIVED", "PRIMARY", "VOLUME", "RESAMPLED"]
        spacing = self.slide.mpp * 2**level / 1000.0
        ds = self._base(image_type, t, t, (w * reps, h * reps), spacing, n, level + 1, f"level{level}")
        ds.SeriesDescription = "synthetic H&E"
        order = (small[(r % down) * across + c % across] for r in range(down * reps) for c in range(across * reps))
        return self._write(ds, iter(()), n, f"level_{level}.dcm", encoded=order)

    def write_associated(self, kind: str) -> Path:
        """A single-frame LABEL or OVERVIEW image (not part of the pyramid)."""
        if kind == "LABEL":
            img = np.full((128, 256, 3), 235, np.uint8)
            img[40:88:8, 24:232] = 30  # a barcode-like stripe pattern
            spacing = 0.1
        else:
            s = self.slide
            level = s.levels_for(self.tile) - 1
            lw, lh = s.level_size(level)
            img = s.render(level, 0, 0, min(lw, 512) // 16 * 16, min(lh, 512) // 16 * 16)
            spacing = s.mpp * 2**level / 1000.0
        rows, cols = img.shape[:2]
        image_type = ["ORIGINAL", "PRIMARY", kind, "NONE"]
        ds = self._base(image_type, rows, cols, (cols, rows), spacing, 1, 100 + len(kind), kind)
        return self._write(ds, iter([img]), 1, f"{kind.lower()}.dcm")


def _shared_groups(image_type: list[str], spacing_mm: float) -> Dataset:
    """The Shared Functional Groups item: pixel measures, frame type, optical path."""
    shared = Dataset()
    measures = Dataset()
    measures.PixelSpacing = [round(spacing_mm, 9), round(spacing_mm, 9)]
    measures.SliceThickness = 0.004
    shared.PixelMeasuresSequence = Sequence([measures])
    frame_type = Dataset()
    frame_type.FrameType = image_type
    shared.WholeSlideMicroscopyImageFrameTypeSequence = Sequence([frame_type])
    path_id = Dataset()
    path_id.OpticalPathIdentifier = "1"
    shared.OpticalPathIdentificationSequence = Sequence([path_id])
    return shared
