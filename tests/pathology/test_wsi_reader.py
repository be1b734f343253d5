"""The DICOM WSI reader: levels, spacing, frames in several transfer syntaxes, sparse tiling."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.encaps import encapsulate, generate_frames
from pydicom.sequence import Sequence
from pydicom.uid import ExplicitVRLittleEndian, RLELossless

from appliance.errors import JobFailed
from appliance.pathology import nearest_level
from appliance.pathology._codecs import decode_frame
from appliance.pathology._wsi import DicomSlide
from tests.pathology.conftest import SlideFiles



def test_levels_exclude_label_and_overview_and_carry_spacing(tumour_slide: SlideFiles) -> None:
    with DicomSlide(tumour_slide.jpeg) as slide:
        assert [(lv.width, lv.height) for lv in slide.levels] == [(2048, 2048), (1024, 1024), (512, 512)]
        assert [lv.mpp for lv in slide.levels] == pytest.approx([0.5, 1.0, 2.0])
        assert slide.levels[1].pixel_spacing_mm == pytest.approx((0.001, 0.001))
        assert nearest_level(slide.levels, 0.9).index == 1
        assert nearest_level(slide.levels, 5.0).index == 2
        uids = {lv.source.sop_instance_uid for lv in slide.levels}
        assert len(uids) == 3


@pytest.mark.parametrize("encoding, tolerance", [("jpeg", 4.0), ("jpeg2000", 0.0)])
def test_region_matches_rendered_slide(tumour_slide: SlideFiles, encoding: str, tolerance: float) -> None:
    paths = getattr(tumour_slide, encoding)
    with DicomSlide(paths, threads=2) as slide:
        got = slide.read_region(1, 300, 200, 400, 300).astype(np.int16)
        edge = slide.read_region(2, 400, 400, 200, 200)
    want = tumour_slide.slide.render(1, 300, 200, 400, 300).astype(np.int16)
    assert np.abs(got - want).mean() <= tolerance
    assert (edge[112:, :] == 255).all() and (edge[:, 112:] == 255).all()  # beyond the 512 px level


def _rewrite(src: Path, dst: Path, sparse: bool, syntax: str | None) -> Path:
    """Re-encode a JPEG 2000 level as TILED_SPARSE (frames reversed), in fragments, or in another syntax."""
    ds = pydicom.dcmread(src)
    n = int(ds.NumberOfFrames)
    frames = [bytes(f) for f in generate_frames(ds.PixelData, number_of_frames=n)]
    across = (int(ds.TotalPixelMatrixColumns) + int(ds.Columns) - 1) // int(ds.Columns)
    if sparse:
        ds.DimensionOrganizationType = "TILED_SPARSE"
        order = list(reversed(range(n)))
        per_frame = []
        for k in order:
            fg, pos = pydicom.Dataset(), pydicom.Dataset()
            pos.RowPositionInTotalImagePixelMatrix = (k // across) * int(ds.Rows) + 1
            pos.ColumnPositionInTotalImagePixelMatrix = (k % across) * int(ds.Columns) + 1
            pos.XOffsetInSlideCoordinateSystem = 0.0
            pos.YOffsetInSlideCoordinateSystem = 0.0
            pos.ZOffsetInSlideCoordinateSystem = 0.0
            fg.PlanePositionSlideSequence = Sequence([pos])
            per_frame.append(fg)
        ds.PerFrameFunctionalGroupsSequence = Sequence(per_frame)
        frames = [frames[k] for k in order]
    if syntax == "fragments":  # two fragments per frame, grouped by the Basic Offset Table
        ds.PixelData = encapsulate(frames, fragments_per_frame=2, has_bot=True)
    else:
        ds.PixelData = encapsulate(frames)
    if syntax in ("rle", "native"):
        ds.decompress()
        if syntax == "rle":
            ds.compress(RLELossless)
        else:
            ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.save_as(dst, enforce_file_format=True)
    return dst


@pytest.mark.parametrize(
    "sparse, syntax", [(True, None), (False, "fragments"), (False, "rle"), (False, "native"), (True, "native")]
)
def test_sparse_tiling_and_other_syntaxes_read_the_same_pixels(
    tumour_slide: SlideFiles, tmp_path: Path, sparse: bool, syntax: str | None
) -> None:
    level2 = tumour_slide.jpeg2000[2]
    out = _rewrite(level2, tmp_path / "level.dcm", sparse, syntax)
    with DicomSlide([level2]) as a, DicomSlide([out]) as b:
        want = a.read_region(0, 0, 0, 512, 512)
        got = b.read_region(0, 0, 0, 512, 512)
    assert np.array_equal(got, want)


CODEC_CASES = [
    ("JPEG_Baseline_(Process_1)-RGB-8.jpg", "1.2.840.10008.1.2.4.50", "RGB", 2.0),
    ("JPEG_Baseline_(Process_1)-YBR-8.jpg", "1.2.840.10008.1.2.4.50", "YBR_FULL", 2.0),
    ("JPEG_Lossless,_Non-Hierarchical_(Process_14)-RGB-8.jpg", "1.2.840.10008.1.2.4.70", "RGB", 0.0),
    ("JPEG-LS_Lossless_Image_Compression-RGB-8.jls", "1.2.840.10008.1.2.4.80", "RGB", 0.0),
    ("JPEG-LS_Lossy_(Near-Lossless)_Image_Compression-RGB-8.jls", "1.2.840.10008.1.2.4.81", "RGB", 1.0),
    ("JPEG_2000_Image_Compression_(Lossless_Only)-RGB-8.jp2", "1.2.840.10008.1.2.4.90", "RGB", 0.0),
    ("JPEG_2000_Image_Compression_(Lossless_Only)-YBR-8.jp2", "1.2.840.10008.1.2.4.90", "YBR_RCT", 0.0),
    ("JPEG_2000_Image_Compression-YBR-8.jp2", "1.2.840.10008.1.2.4.91", "YBR_ICT", 1.0),
    ("RLE_Lossless-RGB-8.rle", "1.2.840.10008.1.2.5", "RGB", 0.0),
    ("Explicit_VR_Little_Endian-RGB-8.raw", "1.2.840.10008.1.2.1", "RGB", 0.0),
]


@pytest.mark.parametrize("name, syntax, photometric, tolerance", CODEC_CASES, ids=[c[0] for c in CODEC_CASES])
def test_wsidicom_data_frames_decode(name: str, syntax: str, photometric: str, tolerance: float) -> None:
    data_pkg = pytest.importorskip("wsidicom_data", reason="wsidicom-data (dev extra) is not installed")
    root = Path(data_pkg.__file__).parent / "data"
    want = np.asarray(Image.open(root / "test_tile.png").convert("RGB")).astype(np.int16)
    got = decode_frame((root / "encoded" / name).read_bytes(), syntax, photometric, 240, 240)
    assert got.shape == (240, 240, 3) and got.dtype == np.uint8
    assert np.abs(got.astype(np.int16) - want).mean() <= tolerance


def test_unsupported_syntax_names_the_supported_ones() -> None:
    with pytest.raises(JobFailed, match="not supported for slides; supported: 1.2.840.10008.1.2,"):
        decode_frame(b"\0" * 16, "1.2.840.10008.1.2.4.100", "RGB", 2, 2)
