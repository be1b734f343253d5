"""Optional parts of the installation: the commands that need them say so before they start.

The running appliance (``appliance serve``) needs no PyTorch: on an edge box with
a GPU an open ``torch`` requirement would pull a multi-GB CUDA build for
nothing. Training and exporting models (``appliance export``, ``appliance engines
install-demo``, ``appliance demo``, which makes its demo engines) need the
``export`` extra.
"""

from __future__ import annotations

import importlib.util

from appliance.errors import ApplianceError

__all__ = ["EXPORT_EXTRA", "require_export_extra"]

#: the modules of the ``export`` extra (pyproject.toml ``[project.optional-dependencies] export``)
EXPORT_EXTRA: tuple[str, ...] = ("torch", "onnxscript", "safetensors")


def _missing(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is None
    except (ImportError, ValueError):  # a parent package that fails, or a module set to None in sys.modules
        return True


def require_export_extra(command: str) -> None:
    """Raise an :class:`ApplianceError` naming what is missing when ``appliance <command>`` cannot run here."""
    missing = [module for module in EXPORT_EXTRA if _missing(module)]
    if missing:
        raise ApplianceError(
            f"'appliance {command}' needs the export extra ({', '.join(missing)} not installed); install it with "
            "pip install 'cancer-imaging-appliance[export]' (from a working tree: pip install '.[export]')"
        )
