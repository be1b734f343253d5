#!/usr/bin/env bash
# Installs what the appliance and its tests need on a fresh Debian machine:
# Debian's dcmtk, orthanc (with its DICOMweb and WSI plugins: orthanc-dicomweb, orthanc-wsi,
# whose OrthancWSIDicomizer is a third-party WSI producer), dicom3tools (real DICOM peers and judges), libturbojpeg,
# systemd (systemd-analyze checks the unit files), chromium (the dashboard browser test),
# then a virtual environment in .venv with the project and its dev extras, and .venv-triton with a real
# Triton Inference Server (PyTriton's tritonserver, ONNX Runtime) for the Triton tests and bench.
set -euo pipefail
cd "$(dirname "$0")/.."

need=()
for bin in /usr/bin/storescu /usr/sbin/Orthanc /usr/bin/OrthancWSIDicomizer /usr/bin/dciodvfy /usr/bin/systemd-analyze /usr/bin/chromium; do
  [ -x "$bin" ] || need+=("$bin")
done
[ -e /usr/lib/x86_64-linux-gnu/libturbojpeg.so.0 ] || [ -e /usr/lib/aarch64-linux-gnu/libturbojpeg.so.0 ] || need+=(libturbojpeg)
[ -e /usr/share/orthanc/plugins/libOrthancDicomWeb.so ] || need+=(orthanc-dicomweb)
/usr/bin/python3.11 -c "import ensurepip" 2>/dev/null || need+=(python3-venv)
if [ ${#need[@]} -gt 0 ]; then
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  # Debian starts an Orthanc service on install, and its init script stops *every* Orthanc on the
  # machine (other tests' PACS included): keep the packaged service from starting instead of stopping it.
  policy_added=""
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' | $SUDO tee /usr/sbin/policy-rc.d >/dev/null
    $SUDO chmod 0755 /usr/sbin/policy-rc.d
    policy_added=1
  fi
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq dcmtk orthanc orthanc-dicomweb orthanc-wsi \
    dicom3tools libturbojpeg0 systemd chromium python3-venv >/dev/null
  $SUDO systemctl disable orthanc >/dev/null 2>&1 || true
  [ -z "$policy_added" ] || $SUDO rm -f /usr/sbin/policy-rc.d
fi

PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null || PY=python3
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --disable-pip-version-check --upgrade pip
.venv/bin/python -m pip install -q --disable-pip-version-check -e '.[dev]'

# PyTriton's Python-backend stub must run on Debian's interpreter: on pyenv's 3.11.7 it fails in the
# multiprocessing resource tracker ('_thread.RLock' object has no attribute '_recursion_count').
if ! .venv-triton/bin/python -c "import pytriton, onnxruntime, numpy" 2>/dev/null; then
  rm -rf .venv-triton
  /usr/bin/python3.11 -m venv .venv-triton
  .venv-triton/bin/python -m pip install -q --disable-pip-version-check nvidia-pytriton onnxruntime numpy
fi
