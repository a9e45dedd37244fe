"""Hugging Face import and export: config.json, model.safetensors and tokenizer files.

`import_hf(src, workdir)` turns a `transformers` BERT directory into a bertjax
workdir (config, tokenizer, a params-only step-0 checkpoint) that `bertjax train`
continues from. `export_hf(workdir, out)` writes a directory that
`transformers.BertForPreTraining.from_pretrained` loads with no missing or
unexpected keys. Weights travel as safetensors only: no pickle is ever loaded.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile

import jax
import numpy as np
from flax import nnx

from bertjax import checkpoint, config_lib, hf_weights, reporting
from bertjax.data import tokenizer as tokenizer_lib
from bertjax.errors import UserError
from bertjax.models.bert import BertConfig
from bertjax.tasks import pretrain

# Buffers some checkpoints carry that are not weights.
_IGNORED = ('embeddings.position_ids', 'bert.embeddings.position_ids')


def read_hf_config(src: str) -> tuple[BertConfig, dict]:
  path = os.path.join(src, 'config.json')
  if not os.path.isfile(path):
    raise UserError(f'{src} has no config.json; point --from at a Hugging Face model '
                    'directory (config.json, model.safetensors, vocab.txt)')
  with open(path, encoding='utf-8') as f:
    raw = json.load(f)
  if raw.get('model_type', 'bert') != 'bert':
    raise UserError(f'{path}: model_type {raw.get("model_type")!r} is not BERT')
  if raw.get('hidden_act', 'gelu') != 'gelu':
    raise UserError(f'{path}: hidden_act {raw["hidden_act"]!r} is unsupported; bertjax '
                    'BERT uses the exact (erf) GELU, hidden_act="gelu"')
  if raw.get('position_embedding_type', 'absolute') != 'absolute':
    raise UserError(f'{path}: only absolute position embeddings are supported')
  cfg = BertConfig(
      vocab_size=raw['vocab_size'], num_layers=raw['num_hidden_layers'],
      hidden_size=raw['hidden_size'], num_heads=raw['num_attention_heads'],
      intermediate_size=raw['intermediate_size'],
      max_position_embeddings=raw.get('max_position_embeddings', 512),
      type_vocab_size=raw.get('type_vocab_size', 2),
      dropout_rate=raw.get('hidden_dropout_prob', 0.1),
      attention_dropout_rate=raw.get('attention_probs_dropout_prob', 0.1),
      layer_norm_eps=raw.get('layer_norm_eps', 1e-12))
  return cfg, raw


def hf_config_dict(cfg: BertConfig, kind: str, **extra) -> dict:
  return dict(
      architectures=[hf_weights.HF_CLASSES[kind]], model_type='bert',
      vocab_size=cfg.vocab_size, hidden_size=cfg.hidden_size,
      num_hidden_layers=cfg.num_layers, num_attention_heads=cfg.num_heads,
      intermediate_size=cfg.intermediate_size, hidden_act='gelu',
      hidden_dropout_prob=cfg.dropout_rate,
      attention_probs_dropout_prob=cfg.attention_dropout_rate,
      max_position_embeddings=cfg.max_position_embeddings,
      type_vocab_size=cfg.type_vocab_size, initializer_range=0.02,
      layer_norm_eps=cfg.layer_norm_eps, pad_token_id=0,
      position_embedding_type='absolute', tie_word_embeddings=True, **extra)


def read_safetensors(src: str) -> dict[str, np.ndarray]:
  from safetensors.numpy import load_file
  path = os.path.join(src, 'model.safetensors')
  if not os.path.isfile(path):
    if os.path.isfile(os.path.join(src, 'pytorch_model.bin')):
      raise UserError(f'{src} holds only pytorch_model.bin (pickle), which bertjax does '
                      'not load; convert it with transformers: '
                      'model.save_pretrained(dir, safe_serialization=True)')
    raise UserError(f'{src} has no model.safetensors')
  return {k: v for k, v in load_file(path).items() if k not in _IGNORED}


def load_hf_tokenizer(src: str) -> tokenizer_lib.Tokenizer:
  """The tokenizer of a Hugging Face directory: spiece.model, vocab.txt or tokenizer.json."""
  if os.path.isfile(os.path.join(src, 'spiece.model')):
    return tokenizer_lib.SentencePieceTokenizer(os.path.join(src, 'spiece.model'))
  if os.path.isfile(os.path.join(src, 'vocab.txt')):
    from bertjax.data.wordpiece import WordPieceTokenizer
    return WordPieceTokenizer(os.path.join(src, 'vocab.txt'), do_lower_case=_do_lower_case(src))
  if os.path.isfile(os.path.join(src, 'tokenizer.json')):
    # A fast-tokenizer-only directory: unpack its WordPiece vocabulary once.
    unpacked = tempfile.mkdtemp(prefix='bertjax-vocab-')
    _vocab_from_tokenizer_json(os.path.join(src, 'tokenizer.json'), unpacked)
    return tokenizer_lib.load(unpacked)
  raise UserError(f'{src} has no tokenizer: expected vocab.txt, tokenizer.json or '
                  'spiece.model')


def _do_lower_case(src: str) -> bool:
  path = os.path.join(src, 'tokenizer_config.json')
  if os.path.isfile(path):
    with open(path, encoding='utf-8') as f:
      return bool(json.load(f).get('do_lower_case', True))
  return True


def _vocab_from_tokenizer_json(path: str, dest: str) -> None:
  with open(path, encoding='utf-8') as f:
    spec = json.load(f)
  model = spec.get('model', {})
  if model.get('type') != 'WordPiece':
    raise UserError(f'{path} holds a {model.get("type")} model; bertjax imports WordPiece '
                    'tokenizer.json files, vocab.txt or spiece.model')
  vocab = sorted(model['vocab'].items(), key=lambda kv: kv[1])
  with open(os.path.join(dest, 'vocab.txt'), 'w', encoding='utf-8') as f:
    f.writelines(token + '\n' for token, _ in vocab)
  lower = bool((spec.get('normalizer') or {}).get('lowercase', True))
  with open(os.path.join(dest, 'tokenizer_config.json'), 'w', encoding='utf-8') as f:
    json.dump({'do_lower_case': lower}, f)


def checkpoint_kind(tensors, raw_config: dict) -> str:
  """The head kind of a `transformers` checkpoint, from its class and its keys."""
  by_class = {v: k for k, v in hf_weights.HF_CLASSES.items()}
  for arch in raw_config.get('architectures') or ():
    if arch in by_class:
      kind = by_class[arch]
      break
  else:
    kind = 'pretraining' if 'cls.predictions.bias' in tensors else 'encoder'
  if kind != 'encoder' and 'bert.embeddings.word_embeddings.weight' not in tensors:
    kind = 'encoder'  # e.g. a BertModel saved under another class name
  if kind == 'encoder' and 'embeddings.word_embeddings.weight' not in tensors:
    raise UserError('model.safetensors holds no BERT embeddings '
                    '(embeddings.word_embeddings.weight)')
  return kind


def num_labels(tensors, kind: str) -> int:
  if kind in ('sequence_classification', 'token_classification'):
    return int(tensors['classifier.weight'].shape[0])
  return 2


def import_hf(src: str, workdir: str) -> list[str]:
  """Writes a bertjax workdir from a Hugging Face BERT directory.

  Returns the parameter groups that were not in the checkpoint and were initialised.
  """
  if os.path.isdir(os.path.join(workdir, 'checkpoints')):
    raise UserError(f'{workdir} already holds checkpoints; import into a new --workdir')
  cfg, raw = read_hf_config(src)
  tensors = read_safetensors(src)
  kind = checkpoint_kind(tensors, raw)
  tok = load_hf_tokenizer(src)
  if tok.vocab_size != cfg.vocab_size:
    raise UserError(f'the tokenizer in {src} has {tok.vocab_size} tokens but config.json '
                    f'says vocab_size={cfg.vocab_size}; they must match')
  os.makedirs(workdir, exist_ok=True)
  tokenizer_lib.save(tok, os.path.join(workdir, 'tokenizer'))

  model = pretrain.build_model(cfg, jax.random.key(0))
  initial = nnx.to_pure_dict(nnx.state(model))
  params, missing = hf_weights.into_pretraining(tensors, initial, kind, cfg.num_layers)
  known = {name for name, _, _ in hf_weights.name_map(kind, cfg.num_layers)}
  dropped = sorted(set(tensors) - known)

  config = config_lib.pretrain_defaults()
  config.model = config_lib.model_from_bert_config(cfg)
  config.data.tokenizer.kind = ('sentencepiece' if isinstance(
      tok, tokenizer_lib.SentencePieceTokenizer) else 'wordpiece')
  config.data.tokenizer.vocab_size = cfg.vocab_size
  config.init = os.path.abspath(src)
  with open(os.path.join(workdir, 'config.json'), 'w', encoding='utf-8') as f:
    f.write(config_lib.to_json(config))
  checkpoint.save_params(workdir, 0, jax.tree.map(np.asarray, params))

  groups = sorted('.'.join(str(p) for p in path) for path in missing)
  if groups:
    reporting.log(f'not in the checkpoint, initialised: {", ".join(groups)} '
                  '(the MLM decoder is tied to the word embeddings)')
  if dropped:
    reporting.log(f'not imported (heads bertjax pre-training does not use): '
                  f'{", ".join(dropped)}')
  reporting.log(f'imported {src} ({cfg.num_layers} layers, hidden {cfg.hidden_size}, '
                f'vocab {cfg.vocab_size}) into {workdir}')
  return groups


def write_hf_dir(params, cfg: BertConfig, kind: str, tok, out: str, *, num_labels: int = 2,
                 card: str | None = None) -> str:
  """Writes config.json, model.safetensors, tokenizer files (and a card) atomically:
  into a temporary sibling first, replacing `out` only once all is written."""
  from safetensors.numpy import save_file
  from bertjax.data import hf_tokenizer
  tensors = hf_weights.to_hf(params, kind, cfg.num_layers)
  parent = os.path.dirname(os.path.abspath(out))
  os.makedirs(parent, exist_ok=True)
  tmp = tempfile.mkdtemp(dir=parent, prefix='.export-')
  save_file(tensors, os.path.join(tmp, 'model.safetensors'), metadata={'format': 'pt'})
  extra = {}
  if kind in ('sequence_classification', 'token_classification'):
    extra = dict(id2label={str(i): f'LABEL_{i}' for i in range(num_labels)},
                 label2id={f'LABEL_{i}': i for i in range(num_labels)})
  with open(os.path.join(tmp, 'config.json'), 'w', encoding='utf-8') as f:
    json.dump(hf_config_dict(cfg, kind, **extra), f, indent=2)
  hf_tokenizer.write_hf_tokenizer(tok, tmp, model_max_length=cfg.max_position_embeddings)
  if card is not None:
    with open(os.path.join(tmp, 'README.md'), 'w', encoding='utf-8') as f:
      f.write(card)
  if os.path.exists(out):
    shutil.rmtree(out)
  os.replace(tmp, out)
  return out


def export_hf(workdir: str, out: str, step: int | None = None) -> str:
  """Writes a workdir's checkpoint as a `transformers` BertForPreTraining directory."""
  config = config_lib.load_workdir_config(workdir)
  tok = tokenizer_lib.load(os.path.join(workdir, 'tokenizer'))
  cfg = BertConfig.from_dict({**config.model.to_dict(), 'vocab_size': tok.vocab_size})
  abstract = nnx.to_pure_dict(nnx.state(nnx.eval_shape(
      lambda: pretrain.build_model(cfg, jax.random.key(0)))))
  step, params = checkpoint.restore_params(workdir, abstract, step)
  write_hf_dir(params, cfg, 'pretraining', tok, out,
               card=model_card(config, cfg, workdir, step))
  reporting.log(f'exported step {step} of {workdir} to {out}')
  return out


def model_card(config, cfg: BertConfig, workdir: str, step: int) -> str:
  final = {}
  path = os.path.join(workdir, 'metrics.jsonl')
  if os.path.isfile(path):
    with open(path, encoding='utf-8') as f:
      for line in f:
        final.update(json.loads(line))
  metrics = '\n'.join(f'| {k} | {v:.4g} |' for k, v in sorted(final.items())
                      if k != 'step' and isinstance(v, (int, float))) or '| (none logged) | |'
  return f"""---
library_name: transformers
tags: [bert, fill-mask, bertjax]
---
# BERT pre-trained with bertjax

Load it with `transformers.BertForPreTraining.from_pretrained(path)` (or `AutoModel`).

## Architecture
BERT, post-LayerNorm: {cfg.num_layers} layers, hidden size {cfg.hidden_size},
{cfg.num_heads} attention heads, feed-forward {cfg.intermediate_size}, vocabulary
{cfg.vocab_size}, up to {cfg.max_position_embeddings} positions. Heads: masked-LM
(decoder tied to the word embeddings) and next-sentence prediction.

## Training
- steps: {step} of {config.train.steps}, batch {config.train.batch_size}, sequence length {config.data.seq_len}
- data: `{config.data.corpus}`; masking `{config.data.masking.kind}` at rate {config.data.masking.rate}
- optimizer: AdamW, peak learning rate {config.optim.learning_rate}, warm-up {config.optim.warmup_steps}, {config.optim.decay} decay, weight decay {config.optim.weight_decay}
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
