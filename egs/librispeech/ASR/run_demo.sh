#!/usr/bin/env bash
# `make demo`: the whole pipeline on the offline synthetic corpus.
#
#   cd egs/librispeech/ASR && ./run_demo.sh [--train-hours 3.0] [--num-epochs N] ...
#
# 1. ./prepare.sh --corpus synthetic  (TTS corpus, checks, BPE, fbank)
# 2. local/run_table.py with a reduced table: the teacher, the baseline
#    student, PKD and SP-KD (teacher sampler, N=2), same data, seed and epochs;
#    each decoded on test-clean and test-other with modified beam search
#    (beam 4), alone and with shallow fusion of the token 8-gram LM that
#    prepare.sh stage 6 trains on the training transcripts, spelling only
#    the words of those transcripts (--lm-lexicon). The table is
#    printed and written to $exp_root/RESULTS.md.
# 3. The SP-KD student exported to ONNX (fp32 and int8) and one test-clean
#    utterance transcribed with sherpa-onnx (reference and hypothesis printed).
# Everything is resumable: run it again after an interruption and finished
# steps are skipped.
set -eou pipefail

train_hours=3.0
vocab_words=2000   # the closed task's vocabulary (prepare.sh --vocab-words)
dev_utts=200
test_utts=200
num_epochs=3
teacher_epochs=5
teacher_preset=small
student_preset=tiny
max_duration=40
# The closed-vocabulary recipe (RESULTS.md, "What kept the models on the
# plateau"): 40 s batches (about 260 updates per epoch of the 3-hour corpus),
# warm-ups and an Eden schedule sized to a run of a few thousand updates, and
# the three settings measured there to get the models learning: a CTC head
# beside the transducer (weight 0.5), no SpecAugment, BPE 50 (below). The
# teacher's peak lr is AdamW's 2e-3 (4e-3 was worse); the tiny students
# learn faster at 5e-3.
common_args="--warm-step 500 --lr-warmup-batches 200 --lr-batches 1000 --lr-epochs 4 \
  --enable-spec-aug false --use-ctc true --ctc-loss-scale 0.5 --num-workers 0"
teacher_train_args="--base-lr 2e-3 $common_args"
train_args="--base-lr 5e-3 $common_args"
rows=teacher,baseline,pkd,spkd-n2
# a second seed for the student rows, so the table shows their spread
extra_seeds=43
exp_root=demo_exp
# A 50-token vocabulary (letters plus the commonest pieces): with BPE 256 the
# CTC and transducer losses stay on the label-prior plateau for hundreds of
# updates more (RESULTS.md).
vocab_size=50
# Student runs trained side by side, each on cores/jobs threads.
jobs=2
# KD settings: the defaults of train.py and run_table.py
# (icefall_spkd/kd_options.py: lambda 2.0, rho 0.5, tau 1.0, R_kd 5).
# Extra run_table.py KD flags go here, e.g. --kd-args "--kd-scale 1.0".
kd_args=""
# Shallow fusion of the token LM: weight and per-token bonus, chosen on the
# dev set with checkpoints of the 9-hour corpus's teacher (RESULTS.md, "A
# token LM"), and the closed vocabulary of the training transcripts.
lm_scale=0.4
lm_token_bonus=1.2
test_sets=test-clean,test-other

recipe_dir=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
cd "$recipe_dir"
. local/parse_options.sh || exit 1
python=${PYTHON:-$recipe_dir/../../../.venv/bin/python}

start=$(date +%s)
./prepare.sh --corpus synthetic --train-hours "$train_hours" --vocab-sizes "$vocab_size" \
  --vocab-words "$vocab_words" --dev-utts "$dev_utts" --test-utts "$test_utts"
"$python" local/run_table.py \
  --rows "$rows" \
  --exp-root "$exp_root" \
  --results "$exp_root/RESULTS.md" \
  --teacher-preset "$teacher_preset" --student-preset "$student_preset" \
  --num-epochs "$num_epochs" --teacher-epochs "$teacher_epochs" \
  --max-duration "$max_duration" \
  --bpe-model "data/lang_bpe_${vocab_size}/bpe.model" \
  --decoding-methods modified_beam_search,modified_beam_search_lm \
  --lm-path "data/lm/token_8gram_bpe_${vocab_size}.pt" \
  --lm-scale "$lm_scale" --lm-token-bonus "$lm_token_bonus" \
  --lm-lexicon "data/lang_bpe_${vocab_size}/transcript_words.txt" \
  --test-sets "$test_sets" \
  --jobs "$jobs" \
  --extra-seeds "$extra_seeds" --extra-seed-rows baseline,pkd,spkd-n2 \
  $kd_args \
  --teacher-train-args "$teacher_train_args" \
  --train-args "$train_args" \
  --title "make demo: reduced SP-KD table on the synthetic corpus"
# Ship the SP-KD student: ONNX (+ int8) as sherpa-onnx reads it, then one
# test-clean utterance transcribed by sherpa-onnx itself.
if [[ ",$rows," == *",spkd-n2,"* ]]; then
  student_dir=$exp_root/spkd-n2/seed-42
  "$python" spkd_transducer/export-onnx.py --exp-dir "$student_dir" --epoch "$num_epochs" --avg 1 \
    --use-averaged-model false --tokens "data/lang_bpe_${vocab_size}/tokens.txt" \
    --output-dir "$student_dir/onnx"
  "$python" spkd_transducer/sherpa_onnx_decode.py --onnx-dir "$student_dir/onnx" \
    --cuts data/fbank/librispeech_cuts_test-clean.jsonl.gz --num-utts 1
else
  echo "no spkd-n2 row in --rows $rows: nothing to export"
fi
echo "make demo finished in $(( ($(date +%s) - start) / 60 )) min; table: $recipe_dir/$exp_root/RESULTS.md"
