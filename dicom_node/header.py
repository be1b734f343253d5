"""The header the node scanned from a received instance, as stored beside its record.

The storage SCP keeps the small top-level elements of every instance it
receives (:class:`dicom_node.scp.InstanceRecord` ``header``) so that routing
and assembly read attributes from them instead of parsing, or inflating, the
spooled file again (docs/conformance.md, "Limits").
"""

from __future__ import annotations

from dicom_node._scan import read_header_blob

__all__ = ["read_header_blob"]
