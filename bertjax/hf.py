"""The Hugging Face model directory format: config.json, model.safetensors, tokenizer.

Reading a directory (its config, tensors, tokenizer and head class) and producing the
files of one. Weights travel as safetensors only: no pickle is ever loaded. The
directory may be local or a URL (`gs://`), read through epath; tokenizer files are
staged to local disk for the libraries that open only local files. Moving
weights between such directories and workdirs is hf_convert.py's job.
"""
from __future__ import annotations

import json
import os
import tempfile

import numpy as np

from bertjax import storage
from bertjax.data import tokenizer as tokenizer_lib
from bertjax.errors import UserError
from bertjax.models import heads
from bertjax.models.bert import BertConfig

# Buffers some checkpoints carry that are not weights.
_IGNORED = ('embeddings.position_ids', 'bert.embeddings.position_ids')


# config.json keys that must be positive whole numbers, and their defaults (None: required).
_SIZE_KEYS = dict(vocab_size=None, num_hidden_layers=None, hidden_size=None,
                  num_attention_heads=None, intermediate_size=None,
                  max_position_embeddings=512, type_vocab_size=2)
_RATE_KEYS = dict(hidden_dropout_prob=0.1, attention_probs_dropout_prob=0.1,
                  layer_norm_eps=1e-12)


def read_hf_config(src: str) -> tuple[BertConfig, dict]:
  path = storage.as_path(src) / 'config.json'
  if not path.is_file():
    raise UserError(f'{src} has no config.json; point --from at a Hugging Face model '
                    'directory (config.json, model.safetensors, vocab.txt)')
  try:
    raw = json.loads(path.read_bytes())
  except (json.JSONDecodeError, UnicodeDecodeError) as e:
    raise UserError(f'{path} is not valid JSON ({e}); re-save the model with '
                    'transformers\' save_pretrained') from None
  if not isinstance(raw, dict):
    raise UserError(f'{path} holds a {type(raw).__name__}, not a BERT config object')
  if raw.get('model_type', 'bert') != 'bert':
    raise UserError(f'{path}: model_type {raw.get("model_type")!r} is not BERT')
  if raw.get('hidden_act', 'gelu') != 'gelu':
    raise UserError(f'{path}: hidden_act {raw["hidden_act"]!r} is unsupported; bertjax '
                    'BERT uses the exact (erf) GELU, hidden_act="gelu"')
  if raw.get('position_embedding_type', 'absolute') != 'absolute':
    raise UserError(f'{path}: only absolute position embeddings are supported')
  sizes = {}
  for key, default in _SIZE_KEYS.items():
    value = raw.get(key, default)
    if value is None:
      raise UserError(f'{path} lacks {key}; a BERT config.json gives it')
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
      raise UserError(f'{path}: {key} is {value!r}, not a positive whole number; fix '
                      'config.json')
    sizes[key] = value
  rates = {}
  for key, default in _RATE_KEYS.items():
    value = raw.get(key, default)
    # Dropout rates lie in [0, 1); the LayerNorm epsilon is positive.
    ok = (not isinstance(value, bool) and isinstance(value, (int, float))
          and (0 < value if key == 'layer_norm_eps' else 0 <= value < 1))
    if not ok:
      want = 'a positive number' if key == 'layer_norm_eps' else 'a rate in [0, 1)'
      raise UserError(f'{path}: {key} is {value!r}, not {want}; fix config.json')
    rates[key] = float(value)
  if sizes['hidden_size'] % sizes['num_attention_heads']:
    raise UserError(f'{path}: hidden_size {sizes["hidden_size"]} is not a multiple of '
                    f'num_attention_heads {sizes["num_attention_heads"]}; fix config.json')
  cfg = BertConfig(
      vocab_size=sizes['vocab_size'], num_layers=sizes['num_hidden_layers'],
      hidden_size=sizes['hidden_size'], num_heads=sizes['num_attention_heads'],
      intermediate_size=sizes['intermediate_size'],
      max_position_embeddings=sizes['max_position_embeddings'],
      type_vocab_size=sizes['type_vocab_size'],
      dropout_rate=rates['hidden_dropout_prob'],
      attention_dropout_rate=rates['attention_probs_dropout_prob'],
      layer_norm_eps=rates['layer_norm_eps'])
  return cfg, raw


def hf_config_dict(cfg: BertConfig, kind: str, *, pad_token_id: int = 0, **extra) -> dict:
  return dict(
      architectures=[heads.kind_of(kind).hf_class], model_type='bert',
      vocab_size=cfg.vocab_size, hidden_size=cfg.hidden_size,
      num_hidden_layers=cfg.num_layers, num_attention_heads=cfg.num_heads,
      intermediate_size=cfg.intermediate_size, hidden_act='gelu',
      hidden_dropout_prob=cfg.dropout_rate,
      attention_probs_dropout_prob=cfg.attention_dropout_rate,
      max_position_embeddings=cfg.max_position_embeddings,
      type_vocab_size=cfg.type_vocab_size, initializer_range=0.02,
      layer_norm_eps=cfg.layer_norm_eps, pad_token_id=pad_token_id,
      position_embedding_type='absolute', tie_word_embeddings=True, **extra)


def safetensors_path(src: str):
  """The model.safetensors of the directory `src`; one line when it has none."""
  path = storage.as_path(src) / 'model.safetensors'
  if not path.is_file():
    if (storage.as_path(src) / 'pytorch_model.bin').is_file():
      raise UserError(f'{src} holds only pytorch_model.bin (pickle), which bertjax does '
                      'not load; convert it with transformers: '
                      'model.save_pretrained(dir, safe_serialization=True)')
    raise UserError(f'{src} has no model.safetensors')
  return path


def read_safetensors(src: str) -> dict[str, np.ndarray]:
  from safetensors.numpy import load
  return {k: v for k, v in load(safetensors_path(src).read_bytes()).items()
          if k not in _IGNORED}


def load_hf_tokenizer(src: str) -> tokenizer_lib.Tokenizer:
  """The tokenizer of a Hugging Face directory: spiece.model, vocab.txt or tokenizer.json."""
  directory = storage.as_path(src)
  if (directory / 'spiece.model').is_file():
    return tokenizer_lib.SentencePieceTokenizer(directory / 'spiece.model')
  if (directory / 'vocab.txt').is_file():
    from bertjax.data.wordpiece import WordPieceTokenizer
    return WordPieceTokenizer(storage.local_copy(directory / 'vocab.txt'),
                              do_lower_case=_do_lower_case(src))
  if (directory / 'tokenizer.json').is_file():
    # A fast-tokenizer-only directory: unpack its WordPiece vocabulary once.
    unpacked = tempfile.mkdtemp(prefix='bertjax-vocab-')
    _vocab_from_tokenizer_json(directory / 'tokenizer.json', unpacked)
    return tokenizer_lib.load(unpacked)
  raise UserError(f'{src} has no tokenizer: expected vocab.txt, tokenizer.json or '
                  'spiece.model')


def _do_lower_case(src: str) -> bool:
  path = storage.as_path(src) / 'tokenizer_config.json'
  if path.is_file():
    return bool(json.loads(path.read_text()).get('do_lower_case', True))
  return True


def _vocab_from_tokenizer_json(path, dest: str) -> None:
  spec = json.loads(path.read_text())
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
  by_class = {head.hf_class: name for name, head in heads.KINDS.items()}
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
  head = heads.kind_of(kind)
  return int(tensors[head.labels_weight].shape[0]) if head.labelled else 2


def hf_files(tensors: dict[str, np.ndarray], cfg: BertConfig, kind: str, tok, *,
             label_names=(), num_labels: int = 2, card: str | None = None) -> dict[str, bytes]:
  """The files of a Hugging Face model directory, by name."""
  from safetensors.numpy import save
  from bertjax.data import hf_tokenizer
  extra = {}
  if heads.kind_of(kind).labelled:
    names = list(label_names) or [f'LABEL_{i}' for i in range(num_labels)]
    extra = dict(id2label={str(i): n for i, n in enumerate(names)},
                 label2id={n: i for i, n in enumerate(names)})
  files = {
      'model.safetensors': save(tensors, metadata={'format': 'pt'}),
      'config.json': json.dumps(hf_config_dict(cfg, kind, pad_token_id=tok.pad_id, **extra),
                             indent=2).encode(),
  }
  with tempfile.TemporaryDirectory(prefix='bertjax-tokenizer-') as tmp:
    hf_tokenizer.write_hf_tokenizer(tok, tmp, model_max_length=cfg.max_position_embeddings)
    for name in sorted(os.listdir(tmp)):
      with open(os.path.join(tmp, name), 'rb') as f:
        files[name] = f.read()
  if card is not None:
    files['README.md'] = card.encode()
  return files
