#!/usr/bin/env bash
# Installs the real peers the test suite talks to: dcmtk (storescu, echoscu, dcmqrscp), Orthanc with its
# DICOMweb plugin, Debian's Chromium, and the npm packages of the viewer test (OHIF, playwright-core).
set -euo pipefail
cd "$(dirname "$0")/.."
SUDO=""
if [ "$(id -u)" != 0 ]; then SUDO="sudo"; fi
packages=(dcmtk orthanc orthanc-dicomweb chromium)
missing=()
for p in "${packages[@]}"; do
  dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  $SUDO apt-get update -q
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q --no-install-recommends "${missing[@]}"
fi
# Orthanc's Debian package may start a system service on 4242/8042; the tests start their own on free
# ports, so a running service is harmless.
if [ -f tests/viewer/package.json ]; then
  (cd tests/viewer && npm ci --no-audit --no-fund --loglevel=error)
fi
