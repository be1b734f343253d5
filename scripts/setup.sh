#!/usr/bin/env bash
# Installs what the appliance and its tests need on a fresh Debian machine:
# Debian's dcmtk, orthanc, dicom3tools (real DICOM peers and judges), libturbojpeg,
# systemd (systemd-analyze checks the unit files), chromium (the dashboard browser test),
# then a virtual environment in .venv with the project and its dev extras.
set -euo pipefail
cd "$(dirname "$0")/.."

need=()
for bin in /usr/bin/storescu /usr/sbin/Orthanc /usr/bin/dciodvfy /usr/bin/systemd-analyze /usr/bin/chromium; do
  [ -x "$bin" ] || need+=("$bin")
done
[ -e /usr/lib/x86_64-linux-gnu/libturbojpeg.so.0 ] || [ -e /usr/lib/aarch64-linux-gnu/libturbojpeg.so.0 ] || need+=(libturbojpeg)
if [ ${#need[@]} -gt 0 ]; then
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq dcmtk orthanc dicom3tools libturbojpeg0 systemd chromium >/dev/null
  # Debian starts an Orthanc service on install; the tests start their own.
  $SUDO systemctl stop orthanc >/dev/null 2>&1 || $SUDO service orthanc stop >/dev/null 2>&1 || true
fi

PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null || PY=python3
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --disable-pip-version-check --upgrade pip
.venv/bin/python -m pip install -q --disable-pip-version-check -e '.[dev]'
