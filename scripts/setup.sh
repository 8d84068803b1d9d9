#!/usr/bin/env bash
# One-command, idempotent set-up for this repository.
#
#   bash scripts/setup.sh            # creates .venv/ and installs everything
#
# What it does (each step is skipped when already done, so a second run
# takes seconds):
#   1. Debian packages for the offline synthetic corpus (flite, espeak-ng,
#      sox, ...) via apt-get, only when a tool is missing.
#   2. A virtual environment in .venv/ (git-ignored).
#   3. Python packages from requirements.txt, torch pinned to 2.13.0 so pip
#      takes the CPU wheel instead of a multi-GB CUDA build.
#   4. fast_rnnt 1.3 and kaldifeat 1.24 built from their PyPI sdists without
#      internet: their CMake fetches pybind11 from GitHub, so we point it at
#      pybind11's PyPI sdist instead (see ../shared/docs/OFFLINE.md).
#   5. This repository's library, icefall_spkd, in editable mode.
#
# k2 is used instead of fast_rnnt whenever `import k2` works; install it
# from the k2 project's wheel index matched to your torch (see README).
set -euo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
venv=${VENV:-$repo/.venv}
py=${PYTHON:-python3}
stamp_dir=$venv/.setup-stamps
log() { echo "[setup] $*"; }

# ---------------------------------------------------------------- 1. Debian
need_apt=()
command -v flite >/dev/null || need_apt+=(flite)
command -v espeak-ng >/dev/null || need_apt+=(espeak-ng)
command -v sox >/dev/null || need_apt+=(sox libsox-fmt-all)
command -v text2wave >/dev/null || need_apt+=(festival festvox-us-slt-hts festvox-kallpc16k festvox-kdlpc16k)
[ -f /usr/share/games/fortunes/fortunes ] || need_apt+=(fortunes fortunes-min)
command -v flac >/dev/null || need_apt+=(flac)
if [ ${#need_apt[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ]; then
    log "apt-get install ${need_apt[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >/dev/null
    apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null
  elif command -v sudo >/dev/null && sudo -n true 2>/dev/null; then
    log "sudo apt-get install ${need_apt[*]}"
    sudo apt-get update -qq >/dev/null
    sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null
  else
    log "WARNING: missing Debian packages: ${need_apt[*]}"
    log "WARNING: not root and no password-less sudo; install them with"
    log "WARNING:   sudo apt-get install ${need_apt[*]}"
    log "WARNING: the synthetic corpus cannot be built until then."
  fi
fi

# ---------------------------------------------------------------- 2. venv
if [ ! -x "$venv/bin/python" ]; then
  log "creating $venv"
  "$py" -m venv "$venv"
fi
mkdir -p "$stamp_dir"
vpy=$venv/bin/python
# This machine's pip.conf names local indexes that may not exist; pip warns
# once per package about them. Hide only that warning.
pip() { "$vpy" -m pip "$@" 2> >(grep -v "is ignored: it is neither a file nor a directory" >&2); }

# ---------------------------------------------------------------- 3. pip
req_hash=$(cat "$repo/requirements.txt" | sha1sum | cut -c1-12)
if [ ! -f "$stamp_dir/requirements-$req_hash" ]; then
  log "installing requirements.txt"
  pip install -q --upgrade pip setuptools wheel >/dev/null
  pip install -q -r "$repo/requirements.txt"
  touch "$stamp_dir/requirements-$req_hash"
fi

# ---------------------------------------------------------------- 4. sdists
build_dir=$venv/build-src
mkdir -p "$build_dir"
pybind_dir=$build_dir/pybind11-3.0.4
if [ ! -d "$pybind_dir" ]; then
  log "fetching pybind11 sdist (for offline CMake builds)"
  pip download -q --no-binary :all: --no-deps -d "$build_dir" pybind11==3.0.4
  tar -xzf "$build_dir"/pybind11-3.0.4.tar.gz -C "$build_dir"
fi
cmake_common="-DCMAKE_BUILD_TYPE=Release -DCMAKE_CXX_STANDARD=17 -DPYBIND11_FINDPYTHON=OFF -DFETCHCONTENT_FULLY_DISCONNECTED=ON -DFETCHCONTENT_SOURCE_DIR_PYBIND11=$pybind_dir"

if ! "$vpy" -c "import fast_rnnt" 2>/dev/null; then
  log "building fast_rnnt 1.3 from its sdist (about 1 minute)"
  FT_CMAKE_ARGS="$cmake_common -DFT_BUILD_TESTS=OFF -DFT_WITH_CUDA=OFF" FT_MAKE_ARGS="-j2" \
    pip install -q --no-build-isolation --no-deps fast_rnnt==1.3
fi
if ! "$vpy" -c "import kaldifeat" 2>/dev/null; then
  log "building kaldifeat 1.24 from its sdist (about 5 minutes on 2 cores)"
  KALDIFEAT_CMAKE_ARGS="$cmake_common -DKALDIFEAT_BUILD_TESTS=OFF" KALDIFEAT_MAKE_ARGS="-j2" \
    pip install -q --no-build-isolation --no-deps kaldifeat==1.24
fi

# ---------------------------------------------------------------- 5. repo
# Checked from / : in the repository root `import icefall_spkd` would find the
# source folder itself and hide a missing install.
if ! (cd / && "$vpy" -c "import icefall_spkd") 2>/dev/null; then
  log "installing icefall_spkd (editable)"
  pip install -q --no-build-isolation --no-deps -e "$repo"
fi

# ---------------------------------------------------------------- 6. test reference
# zipformer 0.1.3 (icefall's Zipformer2/ScaledAdam/Eden, standalone) is the
# tests' reference only (tests/zipformer_reference.py). --no-deps: it pins
# torch<2.8 and wants torchaudio/webdataset, none of which we install.
if ! "$vpy" -c "import importlib.metadata as m, sys; sys.exit(m.version('zipformer') != '0.1.3' or m.version('atdataset') != '0.2.6')" 2>/dev/null; then
  log "installing the test reference zipformer 0.1.3 (--no-deps)"
  pip install -q --no-deps zipformer==0.1.3 atdataset==0.2.6
fi

(cd / && "$vpy" -) <<'PY'
import importlib
mods = ["torch", "lhotse", "sentencepiece", "kaldifeat", "icefall_spkd"]
for m in mods:
    importlib.import_module(m)
try:
    import k2  # noqa: F401
    backend = "k2"
except Exception:
    import fast_rnnt  # noqa: F401
    backend = "fast_rnnt"
import torch
print(f"[setup] ok: torch {torch.__version__}, pruned RNN-T backend: {backend}")
PY
