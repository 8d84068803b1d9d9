#!/usr/bin/env bash
# Data preparation for AISHELL-1 (icefall style), with the LibriSpeech recipe's checks.
#
#   cd egs/aishell/ASR
#   ./prepare.sh --dl-dir /data                        # downloads /data/aishell if absent
#   ./prepare.sh --dl-dir /data --speed-perturb true   # with x0.9/x1.1 copies of train
#
# Stages:
#   0  download   lhotse's download_aishell into $dl_dir/aishell (skipped when
#                 $dl_dir/aishell/data_aishell/wav exists)
#   1  manifests  data/manifests/aishell_{recordings,supervisions}_{train,dev,test}.jsonl.gz
#                 (lhotse.recipes.prepare_aishell; local/prepare_aishell.py lists every
#                 transcript line and wav left out)
#   2  checks I   audio readable/16 kHz mono (converted if not), transcripts normalised
#                 (icefall_spkd/text_zh.py: full-width forms, punctuation, spaces; only
#                 Chinese characters and Latin letters kept), not absurdly dense
#                 -> aishell_cuts_<part>_validated.jsonl.gz
#   3  chars      data/lang_char/{tokens.txt,text}: <blk>=0, <sos/eos>=1, <unk>=2, then the
#                 characters of the checked transcripts (icefall's layout)
#   4  checks II  <unk> characters, more tokens than subsampled frames
#                 -> aishell_cuts_<part>_filtered.jsonl.gz
#   5  fbank      data/fbank/aishell_cuts_{train,dev,test}.jsonl.gz (80-dim, kaldifeat or
#                 lhotse.Fbank; --speed-perturb true adds x0.9 and x1.1 train copies)
# Every dropped or converted utterance is listed in data/manifests/filter_report_<part>.tsv.
# The checks and the features are the LibriSpeech recipe's scripts, run with
# --prefix aishell (they live in ../../librispeech/ASR/local).
set -eou pipefail

stage=0
stop_stage=100
nj=2
dl_dir=download
speed_perturb=false
max_chars_per_sec=30
full_read=true          # decode all audio in the checks (false: headers only)

help_message="Usage: $0 [--stage N] [--stop-stage N] [--nj N] [--dl-dir DIR]
  [--speed-perturb true|false] [--max-chars-per-sec X] [--full-read true|false]"

recipe_dir=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo_root=$(cd "$recipe_dir/../../.." && pwd)
librispeech_local=$repo_root/egs/librispeech/ASR/local
. "$librispeech_local/parse_options.sh" || exit 1

log() {
  local fname=${BASH_SOURCE[1]##*/}
  echo -e "$(date '+%Y-%m-%d %H:%M:%S') (${fname}:${BASH_LINENO[0]}:${FUNCNAME[1]}) $*"
}

# Python: $PYTHON, else the repository's .venv, else python3.
if [ -n "${PYTHON:-}" ]; then
  python=$PYTHON
elif [ -x "$repo_root/.venv/bin/python" ]; then
  python=$repo_root/.venv/bin/python
else
  python=python3
fi
export PYTHONPATH="$repo_root${PYTHONPATH:+:$PYTHONPATH}"

parts="train dev test"
manifests=data/manifests
mkdir -p "$manifests" data/fbank "$dl_dir"
log "dl_dir=$dl_dir parts='$parts' python=$python"

if [ $stage -le 0 ] && [ $stop_stage -ge 0 ]; then
  log "Stage 0: download AISHELL-1"
  if [ -d "$dl_dir/aishell/data_aishell/wav" ]; then
    log "Stage 0: $dl_dir/aishell/data_aishell/wav exists, skipping download"
  else
    $python -c "import sys; from lhotse.recipes import download_aishell; download_aishell(sys.argv[1])" "$dl_dir"
  fi
fi

if [ $stage -le 1 ] && [ $stop_stage -ge 1 ]; then
  log "Stage 1: manifests"
  $python "$recipe_dir"/local/prepare_aishell.py --corpus-dir "$dl_dir/aishell" --output-dir "$manifests"
fi

if [ $stage -le 2 ] && [ $stop_stage -ge 2 ]; then
  log "Stage 2: data checks I (audio, transcripts) -> $manifests/filter_report_<part>.tsv"
  # shellcheck disable=SC2086
  $python "$librispeech_local"/validate_and_filter.py --pass audio-text --prefix aishell --language zh \
    --manifest-dir "$manifests" --parts $parts --nj "$nj" \
    --max-chars-per-sec "$max_chars_per_sec" --full-read "$full_read"
fi

if [ $stage -le 3 ] && [ $stop_stage -ge 3 ]; then
  log "Stage 3: character vocabulary -> data/lang_char/tokens.txt"
  cuts=""
  for part in $parts; do
    cuts="$cuts $manifests/aishell_cuts_${part}_validated.jsonl.gz"
  done
  # shellcheck disable=SC2086
  $python "$recipe_dir"/local/prepare_char.py --lang-dir data/lang_char --cuts $cuts
fi

if [ $stage -le 4 ] && [ $stop_stage -ge 4 ]; then
  log "Stage 4: data checks II (tokens) -> $manifests/filter_report_<part>.tsv"
  # shellcheck disable=SC2086
  $python "$librispeech_local"/validate_and_filter.py --pass tokens --prefix aishell \
    --manifest-dir "$manifests" --parts $parts --lang-dirs data/lang_char --speed-perturb "$speed_perturb"
fi

if [ $stage -le 5 ] && [ $stop_stage -ge 5 ]; then
  log "Stage 5: fbank features -> data/fbank"
  # shellcheck disable=SC2086
  $python "$librispeech_local"/compute_fbank.py --prefix aishell --manifest-dir "$manifests" \
    --output-dir data/fbank --parts $parts --nj "$nj" --speed-perturb "$speed_perturb"
fi

log "Done (stages $stage..$stop_stage)."
