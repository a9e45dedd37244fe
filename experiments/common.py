"""Recipes shared by the experiment files (not an experiment itself: no get_config).

Experiment files import it as `from .common import bert_recipe`: `bertjax` loads an
experiment file as a module of its directory, so the import works from any cwd.
"""
from bertjax import config_lib
from bertjax.errors import UserError


def bert_recipe(model: str, arg: str | None) -> config_lib.ConfigDict:
  """BERT's two-phase pre-training recipe (Devlin et al. 2019).

  `arg` keys: `phase` (1: 90% of the steps at length 128; 2: the last 10% at 512,
  starting from phase 1's workdir given as `init`), `masking` (token, whole_word,
  span, ngram), `local` (a tiny model on the embedded corpus, seconds on a CPU).
  """
  a = config_lib.parse_arg(arg, local=False, phase=1, masking='token', init='')
  if a.phase not in (1, 2):
    raise UserError(f'phase must be 1 or 2, got {a.phase!r}')
  c = config_lib.pretrain_defaults(model=model)
  c.data.masking.kind = a.masking
  # No corpus is implied: point data.corpus at your text (documents separated by
  # blank lines), e.g. --config.data.corpus='/data/wiki/*.txt'.
  c.data.corpus = ''
  c.data.tokenizer.vocab_size = 30522
  total = 1_000_000
  if a.phase == 1:
    c.train.steps = total * 9 // 10
  else:
    if not a.init:
      raise UserError('phase 2 continues from phase 1: pass :phase=2,init=PHASE1_WORKDIR')
    c.init = a.init
    c.train.steps = total // 10
    c.data.seq_len, c.data.masking.max_predictions = 512, 80
    c.optim.warmup_steps = c.train.steps // 10
  if a.local:
    c.model = config_lib.model_preset('tiny')
    c.data.corpus = 'embedded'
    c.data.embedded_documents = 400
    c.data.tokenizer.vocab_size = 512
    c.data.tokenizer.model_type = 'bpe'
    c.data.seq_len = 64 if a.phase == 1 else 128
    c.data.masking.max_predictions = 10 if a.phase == 1 else 20
    c.train.steps, c.train.batch_size, c.train.log_every = 4, 8, 2
    c.train.checkpoint_every, c.train.eval_batches = 4, 2
    c.optim.warmup_steps = 2
  return c

