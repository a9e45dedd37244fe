"""`bertjax bench --finetune`: bertjax and `transformers` (PyTorch) fine-tuned alike on
a classification task, side by side: both accuracies and both wall times.

    bertjax bench --finetune --config experiments/agnews.py:init=HF_DIR --workdir W

Both start from the same Hugging Face weights (`init`, a new classifier each), read
the same encoded rows (bertjax's tokenizer gives the ids `transformers`' does) in the
same order (`finetune.batch_indices`), and follow the same recipe: AdamW with the
config's rate, betas, epsilon and weight decay (not on biases and LayerNorm), linear
warm-up then linear decay, gradient clipping, the same dropout, batch and steps.
They differ in what cannot be shared: the classifier's random init and dropout masks.
"""
from __future__ import annotations

import json
import os
import time

import numpy as np

from bertjax import finetune, optim
from bertjax.errors import UserError
from bertjax.tasks import registry


def torch_finetune(config, init: str, train_split, eval_split, num_labels: int) -> dict:
  """Fine-tunes `transformers.BertForSequenceClassification` from `init`; returns
  accuracy and seconds (training, evaluation)."""
  import torch
  import transformers
  torch.manual_seed(config.seed)
  torch.set_num_threads(os.cpu_count() or 1)
  model = transformers.BertForSequenceClassification.from_pretrained(
      init, num_labels=num_labels, hidden_dropout_prob=config.model.dropout_rate,
      attention_probs_dropout_prob=config.model.attention_dropout_rate,
      attn_implementation='sdpa')
  o = config.optim
  no_decay = [p for n, p in model.named_parameters() if n.endswith('bias') or 'LayerNorm' in n]
  decay = [p for n, p in model.named_parameters() if not (n.endswith('bias') or 'LayerNorm' in n)]
  optimizer = torch.optim.AdamW([dict(params=decay, weight_decay=o.weight_decay),
                                 dict(params=no_decay, weight_decay=0.0)],
                                lr=o.learning_rate, betas=(o.b1, o.b2), eps=o.eps)
  steps = finetune.total_steps(config, len(train_split))
  warmup = round(o.warmup_ratio * steps) if o.warmup_ratio else min(o.warmup_steps, steps)
  schedule = transformers.get_linear_schedule_with_warmup(optimizer, warmup, steps)
  features = {k: torch.from_numpy(v.astype(np.int64)) for k, v in train_split.features.items()}
  model.train()
  start = time.perf_counter()
  for step in range(steps):
    rows = torch.from_numpy(finetune.batch_indices(len(train_split), config.train.batch_size,
                                                   step, config.seed))
    batch = {k: v[rows] for k, v in features.items()}
    loss = model(**batch).loss
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), o.clip_norm)
    optimizer.step()
    schedule.step()
    optimizer.zero_grad(set_to_none=True)
    if (step + 1) % config.train.log_every == 0:
      print(f'  transformers step {step + 1}/{steps}: loss {loss.item():.4f}', flush=True)
  train_seconds = time.perf_counter() - start
  model.eval()
  start = time.perf_counter()
  predictions = []
  with torch.no_grad():
    eval_features = {k: torch.from_numpy(v.astype(np.int64))
                     for k, v in eval_split.features.items() if k != 'labels'}
    for i in range(0, len(eval_split), config.train.eval_batch_size):
      batch = {k: v[i:i + config.train.eval_batch_size] for k, v in eval_features.items()}
      predictions.append(model(**batch).logits.argmax(-1).numpy())
  accuracy = float(np.mean(np.concatenate(predictions) == eval_split.features['labels']))
  return dict(accuracy=accuracy, train_seconds=train_seconds,
              eval_seconds=time.perf_counter() - start)


def side_by_side(config, workdir: str) -> dict:
  if config.task.kind != 'classify' or config.optim.name != 'adamw' or \
      config.optim.layer_decay != 1.0 or config.optim.decay != 'linear':
    raise UserError('the side-by-side runs classification with AdamW, linear decay and '
                    'no layer decay (what the transformers side implements)')
  if not os.path.isfile(os.path.join(config.init, 'config.json')) or os.path.isdir(
      os.path.join(config.init, 'checkpoints')):
    raise UserError(f'init={config.init!r} must be a Hugging Face model directory, which '
                    'both sides load (export a bertjax workdir with `bertjax export`)')
  optim.learning_rate_schedule(config.optim, 1)  # validate before hours of training
  ours_dir = os.path.join(workdir, 'bertjax')
  start = time.perf_counter()
  ours = finetune.finetune_and_evaluate(config, ours_dir)
  ours_seconds = time.perf_counter() - start

  from bertjax.data import tokenizer as tokenizer_lib
  tok = tokenizer_lib.load(os.path.join(ours_dir, 'tokenizer'))
  task = registry.task_module('classify')
  train_split = task.load_split(config.task, 'train', tok, config.task.seq_len)
  eval_split = task.load_split(config.task, 'eval', tok, config.task.seq_len,
                               label_names=train_split.label_names)
  theirs = torch_finetune(config, config.init, train_split, eval_split,
                          len(train_split.label_names))
  result = dict(
      task=train_split.source, eval=eval_split.source, init=config.init,
      steps=finetune.total_steps(config, len(train_split)),
      batch_size=config.train.batch_size, seq_len=config.task.seq_len, seed=config.seed,
      bertjax=dict(accuracy=ours['accuracy'], wall_seconds=ours_seconds),
      transformers=dict(accuracy=theirs['accuracy'],
                        wall_seconds=theirs['train_seconds'] + theirs['eval_seconds'],
                        train_seconds=theirs['train_seconds']))
  with open(os.path.join(workdir, 'side_by_side.json'), 'w', encoding='utf-8') as f:
    json.dump(result, f, indent=2)
  return result


def format_result(r: dict) -> str:
  gap = 100 * (r['bertjax']['accuracy'] - r['transformers']['accuracy'])
  return '\n'.join([
      f'fine-tuned {r["init"]} on {r["task"]} ({r["steps"]} steps of {r["batch_size"]} x '
      f'{r["seq_len"]} tokens, seed {r["seed"]}), evaluated on {r["eval"]}',
      '| system | accuracy | wall time |', '| --- | ---: | ---: |',
      f'| bertjax | {100 * r["bertjax"]["accuracy"]:.2f}% | '
      f'{r["bertjax"]["wall_seconds"]:.0f} s |',
      f'| transformers (PyTorch) | {100 * r["transformers"]["accuracy"]:.2f}% | '
      f'{r["transformers"]["wall_seconds"]:.0f} s |',
      f'bertjax - transformers: {gap:+.2f} accuracy points',
  ])


def run(config, workdir: str, *, as_json: bool) -> dict:
  """Runs the side-by-side into `workdir` (bertjax/ and side_by_side.json) and prints it."""
  result = side_by_side(config, workdir)
  print(json.dumps(result) if as_json else format_result(result))
  return result
