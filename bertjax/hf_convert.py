"""Hugging Face import and export.

`import_hf(src, workdir)` turns a `transformers` BERT directory into a bertjax
workdir (config, tokenizer, a params-only step-0 checkpoint) that `bertjax train`
continues from. `export_hf(workdir, out)` writes a directory that `transformers`
loads with no missing or unexpected keys, in the class of the workdir's head
(BertForPreTraining, or the fine-tuned task's class with its label names).
"""
from __future__ import annotations

import os

from bertjax import (checkpoint, config_lib, export_dir, hf, hf_weights, reporting, run_lock,
                     storage, weights as weights_lib, workdir as workdir_lib)
from bertjax.data import tokenizer as tokenizer_lib
from bertjax.errors import UserError
from bertjax.models import heads
from bertjax.models.bert import BertConfig


def import_hf(src: str, workdir: str) -> list[str]:
  """Writes a bertjax workdir from a Hugging Face BERT directory.

  Returns the weights that were not in the checkpoint and were initialised (heads it
  never had); a checkpoint with holes in its encoder is refused before anything is
  written.
  """
  if workdir_lib.is_workdir(src):
    raise UserError(f'{src} is already a bertjax workdir; train from it with '
                    '--config.init={src} instead of importing it')
  target = workdir_lib.path(workdir)
  if target.exists() and any(p.name != workdir_lib.LOCK for p in target.iterdir()):
    raise UserError(f'{workdir} is not empty; import into a new --workdir')
  source = weights_lib.open_weights(src)
  tok = hf.load_hf_tokenizer(src)
  cfg = source.model_cfg
  if tok.vocab_size != cfg.vocab_size:
    raise UserError(f'the tokenizer in {src} has {tok.vocab_size} tokens but config.json '
                    f'says vocab_size={cfg.vocab_size}; they must match')
  fresh = weights_lib.initial_params('pretraining', cfg)
  params, initialised = weights_lib.transplant(source, fresh, 'pretraining')

  config = config_lib.pretrain_defaults()
  config.model = config_lib.model_from_bert_config(cfg)
  config.data.tokenizer.kind = ('sentencepiece' if isinstance(
      tok, tokenizer_lib.SentencePieceTokenizer) else 'wordpiece')
  config.data.tokenizer.vocab_size = cfg.vocab_size
  config.init = os.fspath(storage.as_path(src))
  workdir_lib.create(workdir)
  with run_lock.RunLock(workdir):
    tokenizer_lib.save(tok, os.fspath(target / workdir_lib.TOKENIZER))
    checkpoint.save_params(workdir, 0, params)
    # Written last: config.json is what makes the directory a workdir.
    storage.write_atomic(target / workdir_lib.CONFIG, config_lib.to_json(config))
  reporting.log(f'imported {src} ({cfg.num_layers} layers, hidden {cfg.hidden_size}, '
                f'vocab {cfg.vocab_size}) into {workdir}')
  return initialised


def write_hf_dir(params, cfg: BertConfig, kind: str, tok, out: str, *, num_labels: int = 2,
                 label_names=(), card: str | None = None, workdir: str | None = None,
                 about: dict | None = None) -> str:
  """Writes a `transformers` directory of head `kind` into `out`, refusing a target
  whose files are not an earlier export (see export_dir)."""
  rooted = {'bert': params} if kind == 'encoder' else params
  tensors = hf_weights.to_hf(rooted, kind, cfg.num_layers, vocab_size=cfg.vocab_size)
  files = hf.hf_files(tensors, cfg, kind, tok, label_names=label_names, num_labels=num_labels,
                   card=card)
  return export_dir.write(out, files, workdir=workdir, about=about)


def export_hf(workdir: str, out: str, step: int | None = None) -> str:
  """Writes a workdir's checkpoint as a `transformers` directory of its head's class:
  BertForPreTraining, or the fine-tuned task's class from its best weights."""
  export_dir.check_target(out, workdir=workdir)
  config = config_lib.load_workdir_config(workdir)
  source = weights_lib.open_weights(workdir, step)
  tok = weights_lib.open_tokenizer(workdir)
  files = hf.hf_files(source.tensors, source.model_cfg, source.kind, tok,
                   label_names=source.label_names, num_labels=source.num_labels,
                   card=model_card(config, source, workdir))
  export_dir.write(out, files, workdir=workdir,
                   about=dict(source=os.fspath(workdir_lib.path(workdir)), step=source.step,
                              hf_class=heads.kind_of(source.kind).hf_class))
  reporting.log(f'exported step {source.step} of {workdir} to {out} '
                f'({heads.kind_of(source.kind).hf_class})')
  return out


def _last_metrics(workdir: str) -> dict:
  """The last value of each metric the workdir logged."""
  final = {}
  for record in workdir_lib.read_metrics(workdir):
    final.update(record)
  return final


def model_card(config, source: weights_lib.Weights, workdir: str) -> str:
  cfg, kind = source.model_cfg, source.kind
  hf_class = heads.kind_of(kind).hf_class
  final = _last_metrics(workdir)
  metrics = '\n'.join(f'| {k} | {v:.4g} |' for k, v in sorted(final.items())
                      if k != 'step' and isinstance(v, (int, float))) or '| (none logged) | |'
  optim = config.optim
  schedule = (f'{optim.name}, peak learning rate {optim.learning_rate}, warm-up '
              f'{optim.warmup_steps}, {optim.decay} decay, weight decay {optim.weight_decay}')
  if 'task' in config:
    title = f'BERT fine-tuned with bertjax ({config.task.kind})'
    head_text = f'{hf_class} head' + (f' over labels {", ".join(source.label_names)}'
                                      if source.label_names else '')
    training = (f'- fine-tuned from `{config.init}` on `{config.task.train}`, sequence length '
                f'{config.task.seq_len}; the weights of step {source.step} (best '
                f'{config.task.metric} on the eval split)')
  else:
    title = 'BERT pre-trained with bertjax'
    head_text = 'masked-LM (decoder tied to the word embeddings) and next-sentence prediction'
    if config.model.get('sbo'):
      head_text += ('. It was pre-trained with SpanBERT\'s span-boundary objective '
                    '(model.sbo); that head is not part of the Hugging Face model and is not '
                    'exported')
    training = (f'- steps: {source.step} of {config.train.steps}, batch '
                f'{config.train.batch_size}, sequence length {config.data.seq_len}\n'
                f'- data: `{config.data.corpus}`; masking `{config.data.masking.kind}` at rate '
                f'{config.data.masking.rate}')
  return f"""---
library_name: transformers
tags: [bert, bertjax]
---
# {title}

Load it with `transformers.{hf_class}.from_pretrained(path)` (or `AutoModel`).

## Architecture
BERT, post-LayerNorm: {cfg.num_layers} layers, hidden size {cfg.hidden_size},
{cfg.num_heads} attention heads, feed-forward {cfg.intermediate_size}, vocabulary
{cfg.vocab_size}, up to {cfg.max_position_embeddings} positions. Heads: {head_text}.

## Training
{training}
- optimizer: {schedule}
- seed {config.seed}; config hash `{config_lib.config_hash(config)}`

## Last logged metrics
| metric | value |
| --- | --- |
{metrics}

## Full config
```json
{config_lib.to_json(config)}
```
"""
