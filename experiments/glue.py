"""Fine-tune on a GLUE task (tensorflow-datasets `glue/NAME`, prepared as array_record).

bertjax train --config experiments/glue.py:task=sst2,init=runs/base --workdir runs/sst2
bertjax train --config experiments/glue.py:task=stsb,init=hf/bert-base-uncased --workdir runs/stsb
bertjax train --config experiments/glue.py:local,init=runs/quickstart --workdir /tmp/glue
  (:local fine-tunes on the embedded country task: seconds, no download)
bertjax evaluate --workdir runs/sst2
"""
from bertjax import config_lib
from bertjax.tasks import classify


_EVAL_SPLIT = {'mnli': 'validation_matched'}


def get_config(arg=None):
  a = config_lib.parse_arg(arg, task='sst2', init='', local=False)
  c = config_lib.finetune_defaults('classify')
  c.init = a.init
  c.task.train = f'tfds:glue/{a.task}:train'
  c.task.eval = f'tfds:glue/{a.task}:{_EVAL_SPLIT.get(a.task, "validation")}'
  if a.task in classify.GLUE:
    c.task.metric = classify.GLUE[a.task][1][0]  # the metric GLUE reports first
  # BERT's GLUE recipe: lr 2e-5, batch 32, 3 epochs, warm-up 10%.
  if a.local:
    c.task.train, c.task.eval = 'embedded', 'embedded'
    c.task.metric = 'accuracy'
    c.task.seq_len = 32
    c.train.epochs, c.train.batch_size, c.train.log_every = 1.0, 32, 10
    c.optim.learning_rate = 1e-3
  return c
