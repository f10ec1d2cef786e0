#!/usr/bin/env bash
# Install everything snapshop needs on a fresh Debian machine (run as root):
# Debian packages, a virtual environment in .venv, the pinned CPU torch, the weights
# packages, snapshop itself, and the test tools. Safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."

VENV=${VENV:-.venv}
PYTHON=${PYTHON:-python3}
DEBIAN_PACKAGES=(
  dataset-fashion-mnist   # Fashion-MNIST product photos for the demo catalog
  opencv-doc              # real photos: multi-view test set and backgrounds
  chromium                # the browser the page's tests drive with Playwright (never `playwright install`)
)

missing=()
for package in "${DEBIAN_PACKAGES[@]}"; do
  dpkg -s "$package" >/dev/null 2>&1 || missing+=("$package")
done
if [ ${#missing[@]} -gt 0 ]; then
  apt-get update
  DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${missing[@]}"
fi

[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
"$VENV/bin/python" -m pip install --quiet --upgrade pip
# torch first and pinned: the CPU build of 2.13.0; nothing later may replace it.
"$VENV/bin/python" -m pip install --quiet torch==2.13.0
"$VENV/bin/python" -m pip install --quiet -e ".[export,test,cluster]"  # cluster: Milvus server + Ray, for their tests
# Export the default model and the demo's (fashion-clicks) to ONNX once, so the first search does not pay for it.
"$VENV/bin/python" -c "from snapshop.models.backbone import resolve_model; [resolve_model(m) for m in ('efficientnet-lite0', 'fashion-clicks')]"
echo "snapshop installed in $VENV"
