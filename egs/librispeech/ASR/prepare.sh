#!/usr/bin/env bash
# Data preparation for the SP-KD transducer recipe (icefall style).
#
#   cd egs/librispeech/ASR
#   ./prepare.sh                                   # offline synthetic corpus (default)
#   ./prepare.sh --corpus librispeech --dl-dir /data/librispeech
#   ./prepare.sh --stage 3 --stop-stage 3 --vocab-sizes "500 1000"
#
# Stages:
#   0  download   librispeech: lhotse's download_librispeech into $dl_dir/LibriSpeech
#                 synthetic:   build the TTS corpus in $dl_dir/synthetic and its manifests
#   1  manifests  data/manifests/librispeech_{recordings,supervisions}_<part>.jsonl.gz
#                 (librispeech: lhotse.recipes.prepare_librispeech; synthetic: made in stage 0)
#   2  checks I   audio readable/16 kHz mono (converted if not), transcripts normalised,
#                 non-empty, not absurdly dense  -> librispeech_cuts_<part>_validated.jsonl.gz
#   3  BPE        data/lang_bpe_<N>/{bpe.model,tokens.txt} for each N in --vocab-sizes,
#                 trained on the checked train transcripts
#   4  checks II  <unk> characters, more tokens than subsampled frames
#                 -> librispeech_cuts_<part>_filtered.jsonl.gz
#   5  fbank      data/fbank/librispeech_cuts_{train,dev,test-clean,test-other}.jsonl.gz
#                 (LibriSpeech: per-part files too, combined into train and dev; dev
#                 (dev-clean + dev-other) is for validation, and decode.py decodes
#                 dev-clean and dev-other separately under icefall's names)
#   6  LM         data/lm/token_<lm_order>gram_bpe_<N>.pt for each N: a token n-gram LM of the
#                 training transcripts, for shallow fusion (decode.py --lm-path), and
#                 data/lm/word_<word_lm_order>gram.pt: a word n-gram LM of the same text
#                 (closed vocabulary: it spells only the training words)
# Every dropped or converted utterance is listed in data/manifests/filter_report_<part>.tsv.
# BPE comes before features so that the token checks filter the cuts before any
# features are computed for them.
set -eou pipefail

stage=0
stop_stage=100
nj=2
corpus=synthetic        # librispeech | synthetic
task=closed             # synthetic only: closed (2,000-word vocabulary) | open
vocab_words=2000        # synthetic only, closed task: vocabulary size
train_hours=3.0         # synthetic only
train_degraded=0.3      # synthetic only: share of train with test-other's reverb and noise
probe_splits=false      # synthetic only: also test-other-clean and test-clean-degraded (voices vs noise)
espeak_seen_variants=3  # synthetic only: espeak-ng voices per seen accent (3-6; test-other's voices stay)
dev_utts=200            # synthetic only
test_utts=200           # synthetic only
seed=42                 # synthetic only
vocab_sizes="500"
speed_perturb=false
full_libri=false        # librispeech: train on all 960 h instead of train-clean-100
dl_dir=download
max_chars_per_sec=30
full_read=true          # decode all audio in the checks (false: headers only)
lm_order=8              # stage 6: n of the token n-gram LM
word_lm_order=3         # stage 6: n of the word n-gram LM (0: none)

help_message="Usage: $0 [--stage N] [--stop-stage N] [--nj N] [--corpus librispeech|synthetic]
  [--task closed|open] [--vocab-words N] [--train-degraded F] [--probe-splits true|false] [--espeak-seen-variants N] [--train-hours H] [--dev-utts N] [--test-utts N] [--seed S] [--vocab-sizes \"500 ...\"]
  [--speed-perturb true|false] [--full-libri true|false] [--dl-dir DIR]
  [--max-chars-per-sec X] [--full-read true|false] [--lm-order N] [--word-lm-order N]"

# Outputs (data/, download/) go under the current directory, normally
# egs/librispeech/ASR; the local/ scripts are found next to this file.
recipe_dir=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
. "$recipe_dir/local/parse_options.sh" || exit 1

log() {
  local fname=${BASH_SOURCE[1]##*/}
  echo -e "$(date '+%Y-%m-%d %H:%M:%S') (${fname}:${BASH_LINENO[0]}:${FUNCNAME[1]}) $*"
}

# Python: $PYTHON, else the repository's .venv, else python3.
repo_root=$(cd "$recipe_dir/../../.." && pwd)
if [ -n "${PYTHON:-}" ]; then
  python=$PYTHON
elif [ -x "$repo_root/.venv/bin/python" ]; then
  python=$repo_root/.venv/bin/python
else
  python=python3
fi
export PYTHONPATH="$repo_root${PYTHONPATH:+:$PYTHONPATH}"

case "$corpus" in
  synthetic)
    parts="train dev test-clean test-other"
    # the closed-vocabulary task has an extra, open-vocabulary test set
    [ "$task" = closed ] && parts="$parts test-open"
    # test-other with one factor at a time: its voices clean, and test-clean with its noise
    [ "$probe_splits" = true ] && parts="$parts test-other-clean test-clean-degraded"
    train_parts="train"
    combine_args=""
    ;;
  librispeech)
    if [ "$full_libri" = true ]; then
      train_parts="train-clean-100 train-clean-360 train-other-500"
    else
      train_parts="train-clean-100"
    fi
    parts="$train_parts dev-clean dev-other test-clean test-other"
    combine_args="train=${train_parts// /,} dev=dev-clean,dev-other"
    ;;
  *)
    echo "$0: --corpus must be librispeech or synthetic, got '$corpus'" >&2
    exit 1
    ;;
esac

manifests=data/manifests
mkdir -p "$manifests" data/fbank "$dl_dir"
log "corpus=$corpus parts='$parts' python=$python"

if [ $stage -le 0 ] && [ $stop_stage -ge 0 ]; then
  log "Stage 0: download / build the corpus"
  if [ "$corpus" = librispeech ]; then
    if [ -d "$dl_dir/LibriSpeech/dev-clean" ] && [ -d "$dl_dir/LibriSpeech/${train_parts%% *}" ]; then
      log "Stage 0: $dl_dir/LibriSpeech exists, skipping download"
    else
      # shellcheck disable=SC2086
      $python -c "import sys; from lhotse.recipes import download_librispeech; download_librispeech(sys.argv[1], dataset_parts=sys.argv[2:])" \
        "$dl_dir" $parts
    fi
  else
    $python "$recipe_dir"/local/prepare_synthetic.py --corpus-dir "$dl_dir/synthetic" --output-dir "$manifests" \
      --train-hours "$train_hours" --dev-utts "$dev_utts" --test-utts "$test_utts" \
      --seed "$seed" --nj "$nj" --task "$task" --vocab-words "$vocab_words" \
      --train-degraded-fraction "$train_degraded" --probe-splits "$probe_splits" \
      --espeak-seen-variants "$espeak_seen_variants"
  fi
fi

if [ $stage -le 1 ] && [ $stop_stage -ge 1 ]; then
  log "Stage 1: manifests"
  if [ "$corpus" = librispeech ]; then
    # shellcheck disable=SC2086
    $python "$recipe_dir"/local/prepare_librispeech.py --corpus-dir "$dl_dir/LibriSpeech" \
      --output-dir "$manifests" --parts $parts --nj "$nj"
  else
    for part in $parts; do
      for kind in recordings supervisions; do
        f=$manifests/librispeech_${kind}_${part}.jsonl.gz
        if [ ! -f "$f" ]; then
          echo "$0: $f is missing; run stage 0 (--stage 0) to build the synthetic corpus" >&2
          exit 1
        fi
      done
    done
    log "Stage 1: synthetic manifests were written by stage 0"
  fi
fi

if [ $stage -le 2 ] && [ $stop_stage -ge 2 ]; then
  log "Stage 2: data checks I (audio, transcripts) -> $manifests/filter_report_<part>.tsv"
  # shellcheck disable=SC2086
  $python "$recipe_dir"/local/validate_and_filter.py --pass audio-text --manifest-dir "$manifests" \
    --parts $parts --nj "$nj" --max-chars-per-sec "$max_chars_per_sec" --full-read "$full_read"
fi

if [ $stage -le 3 ] && [ $stop_stage -ge 3 ]; then
  log "Stage 3: BPE models for vocab sizes: $vocab_sizes"
  train_cuts=""
  for part in $train_parts; do
    train_cuts="$train_cuts $manifests/librispeech_cuts_${part}_validated.jsonl.gz"
  done
  for vocab_size in $vocab_sizes; do
    # shellcheck disable=SC2086
    $python "$recipe_dir"/local/train_bpe_model.py --lang-dir "data/lang_bpe_${vocab_size}" \
      --vocab-size "$vocab_size" --cuts $train_cuts
  done
fi

if [ $stage -le 4 ] && [ $stop_stage -ge 4 ]; then
  log "Stage 4: data checks II (tokens) -> $manifests/filter_report_<part>.tsv"
  lang_dirs=""
  for vocab_size in $vocab_sizes; do
    lang_dirs="$lang_dirs data/lang_bpe_${vocab_size}"
  done
  # shellcheck disable=SC2086
  $python "$recipe_dir"/local/validate_and_filter.py --pass tokens --manifest-dir "$manifests" \
    --parts $parts --lang-dirs $lang_dirs --speed-perturb "$speed_perturb"
fi

if [ $stage -le 5 ] && [ $stop_stage -ge 5 ]; then
  log "Stage 5: fbank features -> data/fbank"
  # shellcheck disable=SC2086
  $python "$recipe_dir"/local/compute_fbank.py --manifest-dir "$manifests" --output-dir data/fbank \
    --parts $parts --nj "$nj" --speed-perturb "$speed_perturb" \
    ${combine_args:+--combine $combine_args}
fi

if [ $stage -le 6 ] && [ $stop_stage -ge 6 ]; then
  log "Stage 6: token ${lm_order}-gram LMs -> data/lm"
  for vocab_size in $vocab_sizes; do
    lm_path="data/lm/token_${lm_order}gram_bpe_${vocab_size}.pt"
    if [ -f "$lm_path" ] && [ "$lm_path" -nt "data/lang_bpe_${vocab_size}/bpe.model" ]; then
      log "$lm_path exists, skipping"
      continue
    fi
    $python "$recipe_dir"/local/train_token_lm.py --bpe-model "data/lang_bpe_${vocab_size}/bpe.model" \
      --text "data/lang_bpe_${vocab_size}/transcript_words.txt" --order "$lm_order" --lm-path "$lm_path"
  done
  if [ "$word_lm_order" -gt 0 ]; then
    # The words do not depend on the BPE model: any vocabulary's transcripts will do.
    first_vocab=${vocab_sizes%% *}
    text="data/lang_bpe_${first_vocab}/transcript_words.txt"
    lm_path="data/lm/word_${word_lm_order}gram.pt"
    if [ -f "$lm_path" ] && [ "$lm_path" -nt "$text" ]; then
      log "$lm_path exists, skipping"
    else
      $python "$recipe_dir"/local/train_word_lm.py --text "$text" --order "$word_lm_order" \
        --lm-path "$lm_path"
    fi
  fi
fi

log "Done (stages $stage..$stop_stage)."
