"""Which masking objective gives the better encoder for a budget? Token, whole-word,
span, n-gram and PMI masking, span masking with SpanBERT's span-boundary objective
(span_sbo) and token masking at 40% (token_rate40, Wettig et al. 2023), each
pre-trained on the same data, seed, steps and tokens, then evaluated on held-out MLM
(under the common 15% token masking with 80/10/10, and under its own) and fine-tuned
on a classification task and extractive QA over several seeds; the report has one
column group a task, with 95% t-intervals and Holm-corrected paired t-tests against
token masking. Writes WORKDIR/report.md, report.csv and
plots; re-running resumes.

A variant is a name in `variants`: a masking kind, or a key of `variant_overrides`
(override strings on `pretrain`), e.g. 100% [MASK] at 40%:
  --config.variant_overrides.token_rate40="('data.masking.rate=0.4','data.masking.mask_prob=1.0','data.masking.random_prob=0.0')"
span_sbo differs from span by the SBO head only (the sentence objective is the shared
one; SpanBERT's own recipe, without NSP, is experiments/bert_base_span.py:sbo).

bertjax compare --config experiments/masking_sweep.py --workdir runs/sweep \
    --config.pretrain.data.corpus='/data/wiki/*.txt'
bertjax compare --config experiments/masking_sweep.py:local --workdir /tmp/sweep
  (:local: a tiny BERT on the embedded corpus; the embedded QA and word-order
   classification tasks downstream, 3 seeds each)
bertjax compare --config experiments/masking_sweep.py:gpu --workdir runs/sweep_gpu \
    --config.pretrain.data.corpus=/data/wikitext103_prepared
  (:gpu: BERT-mini on real text, SST-2 and SQuAD v1.1 downstream; about an hour on
   one H200, see the estimate in _gpu)
Offline, point the tasks at files: --config.downstream.task.train=SST-2/train.tsv
--config.downstream.task.eval=SST-2/dev.tsv and
--config.more_downstream.squad.task.train=train-v1.1.json (and .eval=dev-v1.1.json).
"""
import os

from bertjax import config_lib

from .common import bert_recipe

VARIANTS = ('token', 'whole_word', 'span', 'ngram', 'pmi', 'span_sbo', 'token_rate40')


def get_config(arg=None):
  a = config_lib.parse_arg(arg, local=False, gpu=False, model='base', steps=100_000)
  c = config_lib.ConfigDict()
  c.title = 'Masking objectives under one pre-training budget'
  c.notes = ()
  c.variants = VARIANTS
  c.variant_overrides = config_lib.ConfigDict(dict(
      span_sbo=('data.masking.kind=span', 'model.sbo=True'),
      token_rate40=('data.masking.rate=0.4',)))
  # The PMI vocabulary a pmi variant without data.masking.pmi_vocab gets, built from
  # the training documents (the paper keeps ~800K n-grams of Wikipedia + books).
  c.pmi_min_count, c.pmi_size = 10, 200_000
  # BERT's phase-1 recipe at a sweep-sized budget; warm-up 10% of the steps.
  c.pretrain = bert_recipe(a.model, None)
  c.pretrain.train.steps = a.steps
  c.pretrain.optim.warmup_steps = a.steps // 10
  c.pretrain.train.checkpoint_every = max(1, a.steps // 10)
  # Downstream tasks: `downstream` (the first; sweeps before more_downstream had it
  # alone) and `more_downstream`, by name.
  c.downstream_name = 'sst2'
  c.downstream = config_lib.finetune_defaults('classify')
  c.downstream.task.train = 'tfds:glue/sst2:train'
  c.downstream.task.eval = 'tfds:glue/sst2:validation'
  # BERT's SQuAD v1.1 recipe (length 384, stride 128, lr 3e-5, batch 32), one epoch.
  squad = config_lib.finetune_defaults('qa')
  squad.task.train, squad.task.eval = 'tfds:squad/v1.1:train', 'tfds:squad/v1.1:validation'
  squad.task.seq_len, squad.train.epochs, squad.optim.learning_rate = 384, 1.0, 3e-5
  c.more_downstream = config_lib.ConfigDict(dict(squad=squad))
  c.downstream_seeds = (0, 1, 2)
  # More than one pre-training seed: the intervals then cover pre-training variance.
  c.pretrain_seeds = (0,)
  if a.gpu:
    c.title += ' (GPU: BERT-mini on real text)'
    _gpu(c)
  if a.local:
    c.title += ' (local: tiny BERT, embedded corpus)'
    c.notes = ('Downstream: extractive QA on generated biographies (home town, job, '
               "pet's name), one epoch, so the score shows how quickly each encoder "
               'learns to read a paragraph for an answer span; and whether a corpus-style '
               'sentence is as written or has two neighbouring words swapped '
               '(embedded_tasks.write_word_order, one epoch; pre-training lifts it from '
               'chance, 0.49, to about 0.64).',)
    p = config_lib.load_config(os.path.join(os.path.dirname(__file__), 'quickstart.py'))
    # Seven variants, two tasks and three fine-tuning seeds each fit 2 CPU cores in 15
    # minutes (README: the measured phases and the extrapolation). One checkpoint, at
    # the end: a variant pre-trains in under a minute.
    p.train.steps, p.optim.warmup_steps = 300, 30
    p.train.batch_size, p.train.checkpoint_every = 32, 300
    p.train.log_every, p.train.eval_batches = 25, 20
    c.pretrain = p
    c.pmi_min_count, c.pmi_size = 5, 2000
    c.downstream_name = 'qa'
    d = c.downstream = config_lib.finetune_defaults('qa')
    d.task.train = d.task.eval = 'embedded'
    d.task.seq_len, d.task.doc_stride, d.task.max_query_length = 64, 32, 16
    d.train.epochs, d.train.batch_size, d.train.log_every = 1.0, 32, 10
    d.optim.learning_rate = 1e-3
    k = config_lib.finetune_defaults('classify')
    k.task.train = k.task.eval = 'embedded'
    # Not 'country': a city's country is knowledge this tiny encoder does not learn
    # in 300 steps, so every variant scores at chance (embedded_tasks.py).
    k.task.embedded = 'word_order'
    k.task.seq_len = 32  # the sentences are 8 to 14 pieces
    k.train.epochs, k.train.batch_size, k.train.log_every = 1.0, 32, 10
    k.optim.learning_rate = 1e-3
    c.more_downstream = config_lib.ConfigDict(dict(word_order=k))
  return c


def _gpu(c):
  """BERT-mini (4 layers, 256 wide) at length 128 on a prepared real-text corpus.

  Budget: 7 variants x 20,000 steps x 256 rows x 128 tokens = 4.6B tokens. flops.py
  puts BERT-mini at 0.028 GFLOP a trained token (vocab 30,522, 20 predictions a
  row), so 1.3e17 FLOP in all: 22 minutes at an assumed 10% MFU of an H200's 989
  TFLOP/s bf16 peak (a model this small keeps the GPU busy poorly; 9 ms a step).
  The input side must keep up: 32,768 tokens a step in 9 ms is ~3.6M tokens/s,
  hence 8 input workers (the host masks at a few 100K tokens/s a core). Downstream,
  21 runs a task: SST-2 (1 epoch of 67K sentences at batch 64, ~1,050 steps, ~30 s
  with compilation: 11 minutes) and SQuAD v1.1 (1 epoch of ~89K windows of 384 at
  batch 64, ~1,390 steps; 34M tokens at ~0.025 GFLOP a token is 9 s at the same
  MFU, ~45 s with compilation and the 10.8K-question evaluation: 16 minutes). With
  the held-out evaluations, about an hour. Assumptions, not measured on a GPU: the
  MFU, the per-core masking speed, the evaluation's host time, one H200, bf16.
  """
  p = c.pretrain
  p.model = config_lib.model_preset('mini')
  p.model.dtype = 'bfloat16'
  p.data.workers = 8
  p.train.steps, p.train.batch_size = 20_000, 256
  p.optim.learning_rate, p.optim.warmup_steps = 5e-4, 2_000
  p.train.checkpoint_every, p.train.log_every, p.train.eval_batches = 5_000, 500, 50
  c.pmi_min_count, c.pmi_size = 10, 100_000
  for d in (c.downstream, c.more_downstream.squad):
    d.model.dtype = 'bfloat16'
    d.train.epochs, d.train.batch_size = 1.0, 64
    d.optim.learning_rate = 1e-4
