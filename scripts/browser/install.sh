#!/usr/bin/env bash
# Headless Chromium and its WebDriver from Debian packages, for the page test
# (tests/service/test_page.py); idempotent. No browser download of its own.
set -euo pipefail
if command -v chromium >/dev/null 2>&1 && [ -x /usr/bin/chromedriver ]; then
    exit 0
fi
if [ "$(id -u)" -ne 0 ]; then
    echo "scripts/browser/install.sh: run as root (apt-get install chromium chromium-driver)" >&2
    exit 1
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -q
apt-get install -y -q chromium chromium-driver
