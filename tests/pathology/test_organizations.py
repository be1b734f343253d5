"""Every WSI organization real producers write (PS3.3 C.8.12.4, A.32.8), read like the rendered slide.

Producers: Orthanc's ``OrthancWSIDicomizer`` (per-frame positions, no Image Type, no Frame of
Reference, levels split by Concatenation under ``--max-size``) and ``wsidicomizer`` (TILED_FULL),
both converting the project's synthetic pyramidal TIFF; headers as converters write them, several
optical paths and focal planes, HTJ2K frames, and a slide too coarse for the model.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.encaps import encapsulate, generate_frames
from pydicom.sequence import Sequence

from appliance.errors import JobFailed
from appliance.pathology import PathologySettings, run_dicom_series
from appliance.pathology._codecs import decode_frame
from appliance.pathology._wsi import DicomSlide
from tests.pathology.conftest import SlideFiles
from tests.pathology.tiny_engines import tiny_engines

ORTHANC_WSI = Path("/usr/bin/OrthancWSIDicomizer")
WSIDICOMIZER = shutil.which("wsidicomizer") or str(Path(__import__("sys").executable).parent / "wsidicomizer")


def orthanc_dicomize(tiff: Path, out: Path, compression: str, max_size_mb: int) -> list[Path]:
    """``OrthancWSIDicomizer`` as a lab runs it: 0.5 um/px (1.024 mm over 2048 px), tiles re-encoded."""
    if not ORTHANC_WSI.exists():
        pytest.skip(f"{ORTHANC_WSI} is not installed (Debian package orthanc-wsi; scripts/setup.sh)")
    out.mkdir(parents=True)
    cmd = [str(ORTHANC_WSI), "--compression", compression, "--reencode", "1", "--max-size", str(max_size_mb),
           "--imaged-width", "1.024", "--imaged-height", "1.024", "--folder", str(out), str(tiff)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return sorted(out.glob("*.dcm"))


def _headers(paths: list[Path]) -> list[pydicom.Dataset]:
    return [pydicom.dcmread(p, stop_before_pixels=True) for p in paths]


@pytest.mark.parametrize("compression, syntax, tolerance", [
    ("jpeg2000", "1.2.840.10008.1.2.4.90", 1.0),
    ("jpeg", "1.2.840.10008.1.2.4.50", 4.0),
    ("none", "1.2.840.10008.1.2", 0.0),
])
def test_orthanc_wsi_dicomizer_concatenations_read_like_the_rendered_slide(
    tumour_slide: SlideFiles, tmp_path: Path, compression: str, syntax: str, tolerance: float
) -> None:
    paths = orthanc_dicomize(tumour_slide.tiff, tmp_path / "out", compression, max_size_mb=1)
    headers = _headers(paths)
    assert {str(h.file_meta.TransferSyntaxUID) for h in headers} == {syntax}
    assert all("ImageType" not in h and "FrameOfReferenceUID" not in h for h in headers), "as Orthanc writes them"
    level0 = [h for h in headers if int(h.TotalPixelMatrixColumns) == 2048]
    if compression != "jpeg":
        assert len(level0) >= 2 and len({h.ConcatenationUID for h in level0}) == 1, "level 0 split by Concatenation"
        assert sorted(int(h.ConcatenationFrameOffsetNumber) for h in level0)[1] > 0
    with DicomSlide(paths, threads=2) as slide:
        assert [(lv.width, lv.height) for lv in slide.levels][:3] == [(2048, 2048), (1024, 1024), (512, 512)]
        assert slide.levels[0].mpp == pytest.approx(0.5, rel=1e-3)
        got = slide.read_region(0, 900, 1300, 700, 600).astype(np.int16)  # spans the concatenation's parts
    want = tumour_slide.slide.render(0, 900, 1300, 700, 600).astype(np.int16)
    assert np.abs(got - want).mean() <= tolerance + 2.0  # the TIFF's JPEG tiles were the producer's input


def test_orthanc_wsi_dicomizer_slide_scores_like_the_project_slide(tumour_slide: SlideFiles, tmp_path: Path) -> None:
    paths = orthanc_dicomize(tumour_slide.tiff, tmp_path / "out", "jpeg2000", max_size_mb=1)
    tile, slide = tiny_engines(64, 1.0)
    ours = run_dicom_series(tumour_slide.jpeg, tile, slide, job_id="ours").findings[0]
    theirs = run_dicom_series(paths, tile, slide, job_id="orthanc").findings[0]
    assert theirs.tiles_scored == pytest.approx(ours.tiles_scored, rel=0.05)
    assert theirs.probability == pytest.approx(ours.probability, abs=0.03)


def test_wsidicomizer_slide_reads_like_the_rendered_slide(tumour_slide: SlideFiles, tmp_path: Path) -> None:
    if not Path(WSIDICOMIZER).exists():
        pytest.skip("wsidicomizer is not installed")
    out = tmp_path / "wz"
    proc = subprocess.run([WSIDICOMIZER, "-i", str(tumour_slide.tiff), "-o", str(out)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    paths = sorted(out.glob("*.dcm"))
    with DicomSlide(paths) as slide:
        assert (slide.levels[0].width, slide.levels[0].height) == (2048, 2048)
        assert slide.levels[0].mpp == pytest.approx(0.5, rel=1e-3)
        got = slide.read_region(0, 300, 200, 500, 400).astype(np.int16)
    want = tumour_slide.slide.render(0, 300, 200, 500, 400).astype(np.int16)
    assert np.abs(got - want).mean() <= 6.0


# --------------------------------------------------------------------------- optical paths, focal planes


def _frames(ds: pydicom.Dataset) -> list[bytes]:
    return [bytes(f) for f in generate_frames(ds.PixelData, number_of_frames=int(ds.NumberOfFrames))]


def _uniform_frame(ds: pydicom.Dataset, value: int) -> bytes:
    """A JPEG 2000 frame of ``ds``'s size, every sample ``value``."""
    import imagecodecs

    shape = (int(ds.Rows), int(ds.Columns), 3)
    return bytes(imagecodecs.jpeg2k_encode(np.full(shape, value, np.uint8), level=0))


def _two_paths_full(src: Path, dst: Path, focal_planes: int) -> Path:
    """TILED_FULL with focal planes then optical paths after the first plane (PS3.3 C.7.6.17.3)."""
    ds = pydicom.dcmread(src)
    frames = _frames(ds)
    other = [_uniform_frame(ds, 40)] * len(frames)
    blank = [_uniform_frame(ds, 255)] * len(frames)
    planes = [frames] + [blank] * (focal_planes - 1) + [other] * focal_planes  # path 1 planes, then path 2's
    second = pydicom.Dataset()
    second.update(ds.OpticalPathSequence[0])
    second.OpticalPathIdentifier = "2"
    second.OpticalPathDescription = "second path"
    ds.OpticalPathSequence = Sequence([ds.OpticalPathSequence[0], second])
    ds.NumberOfOpticalPaths = 2
    ds.TotalPixelMatrixFocalPlanes = focal_planes
    ds.NumberOfFocalPlanes = focal_planes
    del ds.SharedFunctionalGroupsSequence[0].OpticalPathIdentificationSequence
    ds.NumberOfFrames = len(frames) * len(planes)
    ds.PixelData = encapsulate([f for plane in planes for f in plane])
    ds.save_as(dst, enforce_file_format=True)
    return dst


def _two_paths_sparse(src: Path, dst: Path) -> Path:
    """TILED_SPARSE: the second path's frames first, each frame naming its path and position."""
    ds = pydicom.dcmread(src)
    frames = _frames(ds)
    across = -(-int(ds.TotalPixelMatrixColumns) // int(ds.Columns))
    out, per_frame = [], []
    for path_id, value in (("2", 40), ("1", None), ("1", 255)):  # a second focal plane of path 1 at z=1 um
        for k, frame in enumerate(frames):
            fg, pos, ident = pydicom.Dataset(), pydicom.Dataset(), pydicom.Dataset()
            pos.RowPositionInTotalImagePixelMatrix = (k // across) * int(ds.Rows) + 1
            pos.ColumnPositionInTotalImagePixelMatrix = (k % across) * int(ds.Columns) + 1
            pos.XOffsetInSlideCoordinateSystem, pos.YOffsetInSlideCoordinateSystem = 0.0, 0.0
            pos.ZOffsetInSlideCoordinateSystem = 1.0 if value == 255 else 0.0
            ident.OpticalPathIdentifier = path_id
            fg.PlanePositionSlideSequence = Sequence([pos])
            fg.OpticalPathIdentificationSequence = Sequence([ident])
            per_frame.append(fg)
            out.append(frame if value is None else _uniform_frame(ds, value))
    second = pydicom.Dataset()
    second.update(ds.OpticalPathSequence[0])
    second.OpticalPathIdentifier = "2"
    ds.OpticalPathSequence = Sequence([ds.OpticalPathSequence[0], second])
    ds.NumberOfOpticalPaths = 2
    ds.DimensionOrganizationType = "TILED_SPARSE"
    del ds.SharedFunctionalGroupsSequence[0].OpticalPathIdentificationSequence
    ds.PerFrameFunctionalGroupsSequence = Sequence(per_frame)
    ds.NumberOfFrames = len(out)
    ds.PixelData = encapsulate(out)
    ds.save_as(dst, enforce_file_format=True)
    return dst


@pytest.mark.parametrize("layout", ["full", "full-2-focal-planes", "sparse"])
def test_the_named_optical_path_else_the_first_and_the_first_focal_plane(
    tumour_slide: SlideFiles, tmp_path: Path, layout: str
) -> None:
    level2 = tumour_slide.jpeg2000[2]
    if layout == "sparse":
        multi = _two_paths_sparse(level2, tmp_path / "multi.dcm")
    else:
        multi = _two_paths_full(level2, tmp_path / "multi.dcm", 2 if "focal" in layout else 1)
    with DicomSlide([level2]) as one:
        want = one.read_region(0, 0, 0, 512, 512)
    with DicomSlide([multi]) as first:
        assert first.optical_path == "1"
        assert np.array_equal(first.read_region(0, 0, 0, 512, 512), want)
    with DicomSlide([multi], optical_path="2") as second:
        assert (np.abs(second.read_region(0, 0, 0, 512, 512).astype(int) - 40) <= 2).all()
    with pytest.raises(JobFailed, match=r"optical path 'UV' is not in the slide; it has '1', '2'"):
        DicomSlide([multi], optical_path="UV")


def test_an_optical_path_in_its_own_instances_and_a_thumbnail_are_set_aside(
    tumour_slide: SlideFiles, tmp_path: Path
) -> None:
    level2 = tumour_slide.jpeg2000[2]
    ds = pydicom.dcmread(level2)
    ds.SOPInstanceUID = pydicom.uid.generate_uid()
    ds.OpticalPathSequence[0].OpticalPathIdentifier = "FL"
    ds.SharedFunctionalGroupsSequence[0].OpticalPathIdentificationSequence[0].OpticalPathIdentifier = "FL"
    ds.PixelData = encapsulate([_uniform_frame(ds, 40)] * int(ds.NumberOfFrames))
    ds.save_as(tmp_path / "fl.dcm", enforce_file_format=True)
    thumb = pydicom.dcmread(level2)
    thumb.SOPInstanceUID = pydicom.uid.generate_uid()
    thumb.ImageType = ["DERIVED", "PRIMARY", "THUMBNAIL", "RESAMPLED"]
    thumb.save_as(tmp_path / "thumb.dcm", enforce_file_format=True)
    paths = [tmp_path / "fl.dcm", tmp_path / "thumb.dcm", *tumour_slide.jpeg2000]
    with DicomSlide(paths, optical_path="1") as slide:
        assert len(slide.levels) == 3
        assert slide.levels[2].source.sop_instance_uid == str(pydicom.dcmread(level2).SOPInstanceUID)
    with DicomSlide(paths, optical_path="FL") as fl:
        assert [(lv.width, lv.height) for lv in fl.levels] == [(512, 512)]


# --------------------------------------------------------------------------- converter headers


def _header_variant(src: Path, dst: Path, change: str) -> Path:
    ds = pydicom.dcmread(src)
    shared = ds.SharedFunctionalGroupsSequence[0]
    measures = shared.PixelMeasuresSequence
    if change in ("per-frame", "volume-only", "volume-ambiguous", "nothing"):
        del shared.PixelMeasuresSequence
    if change == "per-frame":
        fg = pydicom.Dataset()
        fg.PixelMeasuresSequence = measures
        ds.PerFrameFunctionalGroupsSequence = Sequence([fg for _ in range(int(ds.NumberOfFrames))])
        ds.DimensionOrganizationType = "TILED_FULL"
    if change == "volume-disagrees":
        ds.ImagedVolumeWidth = float(ds.ImagedVolumeWidth) * 3
    if change == "volume-ambiguous":
        ds.ImagedVolumeHeight = float(ds.ImagedVolumeHeight) * 2
    if change == "nothing":
        del ds.ImagedVolumeWidth
        del ds.ImagedVolumeHeight
    for keyword in ("ImageType", "FrameOfReferenceUID", "PositionReferenceIndicator", "AcquisitionDateTime"):
        if keyword in ds:
            delattr(ds, keyword)
    ds.save_as(dst, enforce_file_format=False)
    return dst


@pytest.mark.parametrize("change", ["per-frame", "volume-disagrees", "volume-only"])
def test_converter_headers_with_unambiguous_geometry_are_read(
    tumour_slide: SlideFiles, tmp_path: Path, change: str
) -> None:
    level2 = _header_variant(tumour_slide.jpeg2000[2], tmp_path / "level.dcm", change)
    with DicomSlide([level2]) as slide:
        assert slide.levels[0].mpp == pytest.approx(2.0)
        assert slide.levels[0].pixel_spacing_mm == pytest.approx((0.002, 0.002))


@pytest.mark.parametrize("change, message", [
    ("volume-ambiguous", r"Imaged Volume Width/Height give different spacings \(0.002000 and 0.004000 mm/px\)"),
    ("nothing", "no Pixel Spacing in the shared or per-frame functional groups and no Imaged Volume"),
])
def test_converter_headers_with_ambiguous_geometry_are_refused_with_the_reason(
    tumour_slide: SlideFiles, tmp_path: Path, change: str, message: str
) -> None:
    level2 = _header_variant(tumour_slide.jpeg2000[2], tmp_path / "level.dcm", change)
    with pytest.raises(JobFailed, match=message):
        DicomSlide([level2])


def test_a_slide_coarser_than_the_model_is_refused_not_upsampled(tumour_slide: SlideFiles) -> None:
    tile, slide = tiny_engines(64, 0.25)  # the slide's finest level is 0.5 um/px
    with pytest.raises(JobFailed, match=r"finest level is 0.500 um/px, coarser than the model's 0.25 um/px"):
        run_dicom_series(tumour_slide.jpeg, tile, slide, job_id="coarse")
    tile, slide = tiny_engines(64, 0.48)  # within the tolerance: read at 0.5
    assert run_dicom_series(tumour_slide.jpeg, tile, slide, job_id="close",
                            settings=PathologySettings(mpp_tolerance=0.1)).findings[0].tiles_scored > 0


@pytest.mark.parametrize("syntax, reversible", [("1.2.840.10008.1.2.4.201", True), ("1.2.840.10008.1.2.4.203", False)])
def test_htj2k_frames_decode(syntax: str, reversible: bool) -> None:
    imagecodecs = pytest.importorskip("imagecodecs")
    if not imagecodecs.HTJ2K.available:
        pytest.skip("imagecodecs was built without HTJ2K")
    rng = np.random.default_rng(0)
    tile = np.clip(rng.normal(150, 30, (64, 48, 3)), 0, 255).astype(np.uint8)
    data = imagecodecs.htj2k_encode(tile, reversible=reversible)
    got = decode_frame(bytes(data), syntax, "RGB", 64, 48)
    assert np.abs(got.astype(int) - tile).mean() <= (0.0 if reversible else 1.0)


def test_a_model_card_without_tile_size_or_mpp_gets_224_px_at_half_a_micron(tumour_slide: SlideFiles) -> None:
    tile, slide = tiny_engines(64, 1.0)
    del tile.manifest.model_card["tile_size"], tile.manifest.model_card["mpp"]
    result = run_dicom_series(tumour_slide.jpeg, tile, slide, job_id="defaults")
    assert "level 0 at 0.500 um/px" in result.notes[0]
    heat = result.findings[0].heat_map
    assert heat is not None and heat.tile_px == 224 and heat.scores.shape == (2048 // 224, 2048 // 224)
