#!/usr/bin/env bash
# Installs the CPU build of torch into a venv before the project, so `pip install -e .` never pulls a multi-GB CUDA
# build by accident. Usage: scripts/install_torch.sh VENV_BIN CONSTRAINTS. A GPU machine (nvidia-smi works), a torch
# already installed, or TORCH_BUILD=any leaves the choice to pip; a local "+cpu" wheel (pip's find-links) is used
# where one lies, else PyTorch's CPU wheel index.
set -euo pipefail
bin="$1"
constraints="$2"
pin="$(grep -E '^torch==' "$constraints" | head -n1)"
pin="${pin:-torch}"
if "$bin/python" -c 'import torch' 2>/dev/null || [ "${TORCH_BUILD:-cpu}" = any ] \
   || { command -v nvidia-smi >/dev/null && nvidia-smi >/dev/null 2>&1; }; then
  exit 0
fi
version="${pin#torch==}"
links="$("$bin/pip" config get global.find-links 2>/dev/null || true)"
for dir in $links; do
  if compgen -G "$dir/torch-${version}+cpu-*.whl" >/dev/null; then
    "$bin/pip" install --quiet -c "$constraints" "$pin"
    exit 0
  fi
done
"$bin/pip" install --quiet -c "$constraints" "$pin" \
  --index-url "${TORCH_CPU_INDEX:-https://download.pytorch.org/whl/cpu}" --extra-index-url https://pypi.org/simple
