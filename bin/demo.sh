#!/usr/bin/env bash
# The main job on the built-in example, through the real `qiime` command.
set -euo pipefail
QIIME=$1; PY=$2; OUT=$3
rm -rf "$OUT"
"$PY" -m q2_aam.demo "$OUT"
MODEL="--p-embedding-dim 64 --p-attention-heads 4 --p-attention-layers 2 --p-batch-size 16"
RUN="--p-epochs 15 --p-learning-rate 1e-3 --p-random-state 1 --verbose"

echo "== pretrain: an encoder whose embedding distances reproduce UniFrac"
"$QIIME" aam pretrain --i-table "$OUT/train-table.qza" --i-sequences "$OUT/sequences.qza" \
  --i-distance-matrix "$OUT/unweighted-unifrac.qza" $MODEL $RUN \
  --o-encoder "$OUT/encoder.qza"
"$QIIME" aam summarize --i-model "$OUT/encoder.qza" --o-visualization "$OUT/encoder-summary.qzv"

echo "== fit-regressor on the pretrained encoder (frozen: ASVs embedded once), then predict held-out samples"
"$QIIME" aam fit-regressor --i-table "$OUT/train-table.qza" --i-sequences "$OUT/sequences.qza" \
  --m-metadata-file "$OUT/metadata.tsv" --m-metadata-column age \
  --i-pretrained-encoder "$OUT/encoder.qza" --p-freeze-encoder $RUN \
  --o-model "$OUT/age-regressor.qza"
"$QIIME" aam summarize --i-model "$OUT/age-regressor.qza" --o-visualization "$OUT/age-regressor-summary.qzv"
"$QIIME" aam predict --i-model "$OUT/age-regressor.qza" --i-table "$OUT/test-table.qza" \
  --i-sequences "$OUT/sequences.qza" --o-predictions "$OUT/age-predictions.qza"
"$QIIME" aam scatterplot --i-predictions "$OUT/age-predictions.qza" \
  --m-truth-file "$OUT/metadata.tsv" --m-truth-column age --o-visualization "$OUT/age-scatterplot.qzv"

echo "== fit-classifier on the pretrained encoder, then predict held-out samples"
"$QIIME" aam fit-classifier --i-table "$OUT/train-table.qza" --i-sequences "$OUT/sequences.qza" \
  --m-metadata-file "$OUT/metadata.tsv" --m-metadata-column site \
  --i-pretrained-encoder "$OUT/encoder.qza" --p-freeze-encoder $RUN \
  --o-model "$OUT/site-classifier.qza"
"$QIIME" aam predict --i-model "$OUT/site-classifier.qza" --i-table "$OUT/test-table.qza" \
  --i-sequences "$OUT/sequences.qza" --o-predictions "$OUT/site-predictions.qza"
"$QIIME" aam predict-probabilities --i-model "$OUT/site-classifier.qza" --i-table "$OUT/test-table.qza" \
  --i-sequences "$OUT/sequences.qza" --o-probabilities "$OUT/site-probabilities.qza"
"$QIIME" aam confusion-matrix --i-predictions "$OUT/site-predictions.qza" \
  --i-probabilities "$OUT/site-probabilities.qza" \
  --m-truth-file "$OUT/metadata.tsv" --m-truth-column site --o-visualization "$OUT/site-confusion-matrix.qzv"
# q2-sample-classifier's own visualizers read our predictions too.
"$QIIME" sample-classifier confusion-matrix --i-predictions "$OUT/site-predictions.qza" \
  --i-probabilities "$OUT/site-probabilities.qza" \
  --m-truth-file "$OUT/metadata.tsv" --m-truth-column site --o-visualization "$OUT/site-confusion-matrix-q2sc.qzv"

echo "== pipelines: split, fit on the training part, predict the test part, visualize"
"$QIIME" aam regress-samples --i-table "$OUT/table.qza" --i-sequences "$OUT/sequences.qza" \
  --m-metadata-file "$OUT/metadata.tsv" --m-metadata-column age \
  --i-pretrained-encoder "$OUT/encoder.qza" --p-freeze-encoder --p-test-size 0.2 $RUN \
  --output-dir "$OUT/regress-samples"
"$QIIME" aam classify-samples --i-table "$OUT/table.qza" --i-sequences "$OUT/sequences.qza" \
  --m-metadata-file "$OUT/metadata.tsv" --m-metadata-column site \
  --i-pretrained-encoder "$OUT/encoder.qza" --p-freeze-encoder --p-test-size 0.2 $RUN \
  --output-dir "$OUT/classify-samples"

echo "== embed and predict-distances for the held-out samples"
"$QIIME" aam embed --i-model "$OUT/encoder.qza" --i-table "$OUT/test-table.qza" \
  --i-sequences "$OUT/sequences.qza" --o-embeddings "$OUT/test-embeddings.qza"
"$QIIME" aam predict-distances --i-encoder "$OUT/encoder.qza" --i-table "$OUT/test-table.qza" \
  --i-sequences "$OUT/sequences.qza" --o-distance-matrix "$OUT/test-predicted-unifrac.qza"
echo "Demo outputs in $OUT/:"; ls -R "$OUT"
