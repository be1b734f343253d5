"""Reports: a :class:`~appliance.findings.StudyResult` as DICOM objects for PACS.

A Comprehensive 3D SR with a TID 1500 Measurement Report (``sr``), a fractional
Segmentation heat map per pathology finding (``heatmap``), an optional Secondary
Capture with the finding burned in (``capture``), all with deterministic UIDs
(``uids``) and written durably to the outbox (``build``).
"""

from appliance.reports.build import build_datasets, build_reports
from appliance.reports.sr import DeviceInfo

__all__ = ["DeviceInfo", "build_datasets", "build_reports"]
