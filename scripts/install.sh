#!/usr/bin/env bash
# Install morphzoo and its dependencies into the current Python environment.
#   bash scripts/install.sh         # the package
#   bash scripts/install.sh --dev   # plus the test tools (and Debian's chromium for the browser test, as root)
# On a machine without an NVIDIA GPU it installs the CPU build of torch 2.13.0 first and pins it, so no dependency can
# pull the multi-GB CUDA wheels. With a GPU (nvidia-smi present) or MORPHZOO_TORCH=keep, the torch you already have
# (or pip's default CUDA build) is used: GPU users install the torch build they want first, then run this script.
set -euo pipefail
cd "$(dirname "$0")/.."
TORCH_VERSION=2.13.0
extras=""
[[ "${1:-}" == "--dev" ]] && extras="[dev]"
pip=(python -m pip install --quiet --disable-pip-version-check)

constraints=$(mktemp)
trap 'rm -f "$constraints"' EXIT
if [[ "${MORPHZOO_TORCH:-}" != "keep" ]] && ! command -v nvidia-smi >/dev/null 2>&1; then
    if ! python -c "import torch, sys; sys.exit(torch.__version__.split('+')[0] != '$TORCH_VERSION' or torch.version.cuda is not None)" 2>/dev/null; then
        echo "[install] CPU machine: installing torch==$TORCH_VERSION (CPU build)"
        # This workplace's pip finds the CPU wheel on disk (find-links). Elsewhere, install the CPU build from
        # PyTorch's own CPU wheel index before running this script; the check above then skips this step.
        "${pip[@]}" "torch==$TORCH_VERSION"
    fi
    echo "torch==$TORCH_VERSION" > "$constraints"
fi
if [[ -n "$extras" ]] && ! command -v chromium >/dev/null 2>&1; then
    # The explorer's browser test drives Debian's chromium + chromedriver; without them it skips, saying so.
    if command -v apt-get >/dev/null 2>&1 && [[ $(id -u) == 0 ]]; then
        echo "[install] installing Debian's chromium and chromium-driver (the explorer's browser test)"
        { apt-get install -y -q chromium chromium-driver >/dev/null 2>&1 \
            || { apt-get update -q >/dev/null 2>&1 && apt-get install -y -q chromium chromium-driver >/dev/null 2>&1; }; } \
            || echo "[install] could not install chromium: the explorer's browser test will be skipped"
    else
        echo "[install] no chromium (needs apt-get as root): the explorer's browser test will be skipped"
    fi
fi
echo "[install] installing morphzoo$extras"
"${pip[@]}" -c "$constraints" -e ".$extras"
python -c "import torch, morphzoo; print(f'[install] morphzoo {morphzoo.__version__} with torch {torch.__version__}')"
