#!/usr/bin/env bash
# Create (or refresh) the virtual environment that holds the RecBole 1.2.1 *peer*.
#
# RecBole is only a comparison peer for speed benchmarks (benchmarks/peers/peer_recbole.py): it is never a
# dependency of thinkrec and is never installed into thinkrec's own environment. This follows the recipe
# in shared/docs/peers.md:
#   1. torch==2.13.0 first, so pip takes the local CPU wheel and never pulls a CUDA build;
#   2. recbole==1.2.1;
#   3. numpy<2, pandas<2.3, scipy<1.14, setuptools<70 (numpy 2 dropped the aliases RecBole uses;
#      recbole.quick_start imports ray, which needs pkg_resources from an older setuptools);
#   4. weights_only=False patched into RecBole's torch.load calls (torch >= 2.6 defaults to
#      weights_only=True, but RecBole pickles its Config into its checkpoints).
#
# Idempotent: an existing venv is reused, pip is skipped when the versions already check out, and the sed
# patches only match the unpatched text. Usage:
#   bash benchmarks/peers/peer_setup.sh                      # venv at $THINKREC_PEER_VENV or <repo>/.peer-venv
#   THINKREC_PEER_VENV=/tmp/peer bash benchmarks/peers/peer_setup.sh
#   THINKREC_PEER_FORCE=1 bash benchmarks/peers/peer_setup.sh   # rerun the pip steps anyway
set -euo pipefail

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
venv="${THINKREC_PEER_VENV:-$repo_root/.peer-venv}"
python_bin="${PYTHON:-python3}"

if [[ ! -x "$venv/bin/python" ]]; then
    echo "peer_setup: creating venv at $venv" >&2
    "$python_bin" -m venv "$venv"
else
    echo "peer_setup: reusing venv at $venv" >&2
fi

# A small self-check, run before pip (to skip it) and at the end (with the patches).
check_py="$(mktemp)"
trap 'rm -f "$check_py"' EXIT
cat >"$check_py" <<'PY'
import sys

import numpy
import torch

import recbole

assert recbole.__version__ == "1.2.1", recbole.__version__
assert torch.__version__ == "2.13.0+cpu", torch.__version__
assert int(numpy.__version__.split(".")[0]) < 2, numpy.__version__
import recbole.quick_start.quick_start as qs  # needs ray + pkg_resources (setuptools<70)
import recbole.trainer.trainer as tr

if "--patches" in sys.argv:
    for mod in (tr, qs):
        with open(mod.__file__, encoding="utf-8") as f:
            assert "weights_only=False" in f.read(), f"weights_only patch missing in {mod.__file__}"
print(f"peer_setup: ok (recbole {recbole.__version__}, torch {torch.__version__}, numpy {numpy.__version__})")
PY

# Three separate pip runs, in this order. They must NOT be merged into one: torch 2.13's metadata requires
# setuptools>=77.0.3, so a single resolve that also asks for setuptools<70 "solves" it by swapping torch
# for an older CUDA build (plus ~5 GB of nvidia-* wheels). Run separately, step 3 only downgrades
# setuptools; pip then warns that torch wants setuptools>=77, which is harmless (torch does not import
# setuptools for training or inference).
pip=("$venv/bin/python" -m pip install --quiet)
if [[ "${THINKREC_PEER_FORCE:-0}" != "1" ]] && "$venv/bin/python" "$check_py" >/dev/null 2>&1; then
    echo "peer_setup: packages already in place, skipping pip" >&2
else
    "${pip[@]}" "torch==2.13.0"                                          # 1. local CPU wheel, first
    "${pip[@]}" "recbole==1.2.1"                                         # 2. torch already satisfied
    "${pip[@]}" "numpy<2" "pandas<2.3" "scipy<1.14" "setuptools<70"           # 3. see above
fi

# 4. weights_only=False in RecBole's torch.load calls (trainer resume / load-best-model; quick_start).
site_packages="$("$venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
sed -i 's/map_location=self.device)/map_location=self.device, weights_only=False)/' \
    "$site_packages/recbole/trainer/trainer.py"
sed -i 's/torch.load(model_file)/torch.load(model_file, weights_only=False)/' \
    "$site_packages/recbole/quick_start/quick_start.py"

# Final check: versions, imports and patches; fails the script if anything is off.
"$venv/bin/python" "$check_py" --patches
