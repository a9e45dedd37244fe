"""Which masking objective gives the better encoder for a budget? Token, whole-word,
span and n-gram masking, each pre-trained on the same data, seed, steps and tokens,
then evaluated on held-out MLM (under common token masking and under its own) and
fine-tuned downstream over several seeds. Writes WORKDIR/report.md, report.csv and
plots; re-running resumes.

bertjax compare --config experiments/masking_sweep.py --workdir runs/sweep \
    --config.pretrain.data.corpus='/data/wiki/*.txt'
bertjax compare --config experiments/masking_sweep.py:local --workdir /tmp/sweep
  (:local: a tiny BERT on the embedded corpus, embedded QA downstream; about 9
   minutes on 2 CPU cores)
"""
import os

from bertjax import config_lib
from bertjax.data import masking

from .common import bert_recipe


def get_config(arg=None):
  a = config_lib.parse_arg(arg, local=False, model='base', steps=100_000)
  c = config_lib.ConfigDict()
  c.title = 'Masking objectives under one pre-training budget'
  c.notes = ()
  c.variants = masking.KINDS
  # BERT's phase-1 recipe at a sweep-sized budget; warm-up 10% of the steps.
  c.pretrain = bert_recipe(a.model, None)
  c.pretrain.train.steps = a.steps
  c.pretrain.optim.warmup_steps = a.steps // 10
  c.pretrain.train.checkpoint_every = max(1, a.steps // 10)
  c.downstream = config_lib.finetune_defaults('classify')
  c.downstream.task.train = 'tfds:glue/sst2:train'
  c.downstream.task.eval = 'tfds:glue/sst2:validation'
  c.downstream_seeds = (0, 1, 2)
  if a.local:
    c.title += ' (local: tiny BERT, embedded corpus)'
    c.notes = ('Downstream: extractive QA on generated biographies (home town, job, '
               "pet's name), one epoch, so the score shows how quickly each encoder "
               'learns to read a paragraph for an answer span.',)
    p = config_lib.load_config(os.path.join(os.path.dirname(__file__), 'quickstart.py'))
    # The quickstart's 600 steps at half its batch: four variants fit the budget.
    p.train.batch_size, p.train.checkpoint_every = 32, 200
    p.train.log_every, p.train.eval_batches = 25, 20
    c.pretrain = p
    # A generated country-of-a-held-out-city classification did not transfer
    # from an encoder this small (chance for every variant); reading for answer
    # spans does, and separates the variants after one epoch.
    d = c.downstream = config_lib.finetune_defaults('qa')
    d.task.train = d.task.eval = 'embedded'
    d.task.seq_len, d.task.doc_stride, d.task.max_query_length = 64, 32, 16
    d.train.epochs, d.train.batch_size, d.train.log_every = 1.0, 32, 10
    d.optim.learning_rate = 1e-3
    c.downstream_seeds = (0, 1)
  return c
