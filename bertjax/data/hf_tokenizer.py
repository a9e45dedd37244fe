"""Exports a bertjax tokenizer as files `transformers.AutoTokenizer` loads.

A converted checkpoint is only usable from Hugging Face if its tokenizer gives
the ids the model was trained on, with [CLS] A [SEP] (B [SEP]) around them.

WordPiece vocabularies are written as the standard BERT layout (`vocab.txt`
plus `BertTokenizer` config). SentencePiece models become a fast-tokenizer
`tokenizer.json` rebuilt from the model proto: its precompiled normalizer
(nmt_nfkc by default), SentencePiece's whitespace rules (trim, collapse runs,
dummy '▁' prefix), the Unigram scores or BPE merges, and fused [UNK] runs. This
needs the `protobuf` package at export time only.
"""
from __future__ import annotations

import json
import os
import shutil

import tokenizers

from bertjax.data.tokenizer import SentencePieceTokenizer
from bertjax.data.wordpiece import WordPieceTokenizer
from bertjax.errors import UserError

_SP_WORD_BOUNDARY = '\u2581'
_SP_UNIGRAM, _SP_BPE = 1, 2
_SP_NORMAL, _SP_USER_DEFINED = 1, 4  # ModelProto.SentencePiece.Type
_TOKEN_KEYS = ('pad_token', 'unk_token', 'cls_token', 'sep_token', 'mask_token')


def write_hf_tokenizer(tokenizer: WordPieceTokenizer | SentencePieceTokenizer, out_dir: str,
                       *, model_max_length: int = 512) -> None:
  """Writes `tokenizer` into `out_dir` for `AutoTokenizer.from_pretrained(out_dir)`.

  `model_max_length` should be the model's maximum sequence length, so that
  `truncation=True` cuts where the position embeddings end.
  """
  os.makedirs(out_dir, exist_ok=True)
  special = dict(zip(_TOKEN_KEYS, (tokenizer.id_to_piece(i) for i in _special_ids(tokenizer))))
  if isinstance(tokenizer, WordPieceTokenizer):
    with open(os.path.join(out_dir, 'vocab.txt'), 'w', encoding='utf-8') as f:
      f.writelines(p + '\n' for p in tokenizer.pieces)
    config = {'tokenizer_class': 'BertTokenizer', 'do_lower_case': tokenizer.do_lower_case,
              'tokenize_chinese_chars': True, 'strip_accents': None}
  elif isinstance(tokenizer, SentencePieceTokenizer):
    _sentencepiece_tokenizer(tokenizer).save(os.path.join(out_dir, 'tokenizer.json'))
    shutil.copyfile(tokenizer.path, os.path.join(out_dir, 'spiece.model'))
    config = {'tokenizer_class': 'PreTrainedTokenizerFast'}
  else:
    raise TypeError(f'cannot export a {type(tokenizer).__name__} for Hugging Face')
  config.update(special, model_max_length=model_max_length, clean_up_tokenization_spaces=False,
                model_input_names=['input_ids', 'token_type_ids', 'attention_mask'])
  _write_json(os.path.join(out_dir, 'tokenizer_config.json'), config)
  _write_json(os.path.join(out_dir, 'special_tokens_map.json'), special)


def _special_ids(tokenizer) -> tuple[int, ...]:
  """Ids in _TOKEN_KEYS order."""
  return (tokenizer.pad_id, tokenizer.unk_id, tokenizer.cls_id, tokenizer.sep_id,
          tokenizer.mask_id)


def _write_json(path: str, obj: dict) -> None:
  with open(path, 'w', encoding='utf-8') as f:
    json.dump(obj, f, indent=2, ensure_ascii=False)
    f.write('\n')


def _sentencepiece_tokenizer(tokenizer: SentencePieceTokenizer):
  """A `tokenizers.Tokenizer` that encodes like `tokenizer`, with BERT's template."""
  try:
    from sentencepiece import sentencepiece_model_pb2
  except ImportError as e:
    raise UserError('exporting a SentencePiece tokenizer for Hugging Face needs protobuf: '
                    'pip install protobuf') from e
  proto = sentencepiece_model_pb2.ModelProto()
  proto.ParseFromString(tokenizer.sp.serialized_model_proto())
  _check_exportable(proto, tokenizer.path)
  trainer, norm = proto.trainer_spec, proto.normalizer_spec
  hf = tokenizers.Tokenizer(_sentencepiece_model(tokenizers.models, proto))
  hf.normalizer = _sentencepiece_normalizer(tokenizers, norm)
  prepend = 'always' if norm.add_dummy_prefix else 'never'
  # The '▁' prefix is already in place; splitting at '▁' only gives word ids,
  # as pieces never cross a word boundary when split_by_whitespace is on.
  hf.pre_tokenizer = tokenizers.pre_tokenizers.Metaspace(
      _SP_WORD_BOUNDARY, prepend_scheme='never', split=trainer.split_by_whitespace)
  hf.decoder = tokenizers.decoders.Metaspace(_SP_WORD_BOUNDARY, prepend_scheme=prepend)
  hf.add_special_tokens([tokenizers.AddedToken(tokenizer.id_to_piece(i), special=True,
                                               normalized=False)
                         for i in sorted(_special_ids(tokenizer))])
  cls, sep = tokenizer.id_to_piece(tokenizer.cls_id), tokenizer.id_to_piece(tokenizer.sep_id)
  hf.post_processor = tokenizers.processors.TemplateProcessing(
      single=f'{cls}:0 $A:0 {sep}:0', pair=f'{cls}:0 $A:0 {sep}:0 $B:1 {sep}:1',
      special_tokens=[(cls, tokenizer.cls_id), (sep, tokenizer.sep_id)])
  return hf


def _check_exportable(proto, path: str) -> None:
  """Rejects SentencePiece options whose encoding the export would not reproduce."""
  unsupported = [name for name, used in [
      ('byte_fallback', proto.trainer_spec.byte_fallback),
      ('treat_whitespace_as_suffix', proto.trainer_spec.treat_whitespace_as_suffix),
      ('user_defined_symbols', any(p.type == _SP_USER_DEFINED for p in proto.pieces)),
      ('a model type other than unigram or bpe',
       proto.trainer_spec.model_type not in (_SP_UNIGRAM, _SP_BPE))] if used]
  if unsupported:
    raise UserError(f'{path} uses {", ".join(unsupported)}, which the Hugging Face export '
                    'does not support; train it with bertjax.data.tokenizer.train_sentencepiece')


def _sentencepiece_model(models, proto):
  """Unigram keeps SentencePiece's scores; BPE turns piece scores into merge ranks.

  Both fuse runs of unknown characters into one [UNK], as SentencePiece does
  (`tokenizers`' Unigram always does).
  """
  pieces = [(p.piece, p.score) for p in proto.pieces]
  if proto.trainer_spec.model_type == _SP_UNIGRAM:
    return models.Unigram(pieces, unk_id=proto.trainer_spec.unk_id, byte_fallback=False)
  vocab = {piece: i for i, (piece, _) in enumerate(pieces)}
  return models.BPE(vocab, _bpe_merges(proto), unk_token=proto.trainer_spec.unk_piece,
                    fuse_unk=True, byte_fallback=False)


def _bpe_merges(proto) -> list[tuple[str, str]]:
  """Every split of a normal piece into two normal pieces, best piece score first.

  SentencePiece BPE repeatedly joins the adjacent pair whose union scores best;
  ranking each merge by its union's score makes Hugging Face's BPE do the same.
  """
  # Control and unknown pieces never come from text, so no merge makes them.
  normal = {p.piece: (-p.score, i) for i, p in enumerate(proto.pieces) if p.type == _SP_NORMAL}
  merges = [(rank, piece[:k], piece[k:]) for piece, rank in normal.items()
            for k in range(1, len(piece)) if piece[:k] in normal and piece[k:] in normal]
  return [(left, right) for _, left, right in sorted(merges)]


def _sentencepiece_normalizer(tokenizers, norm):
  """SentencePiece's normalizer: character map, then its whitespace rules, then '▁'."""
  normalizers, regex = tokenizers.normalizers, tokenizers.Regex
  steps = []
  if norm.precompiled_charsmap:
    steps.append(normalizers.Precompiled(norm.precompiled_charsmap))
  if norm.remove_extra_whitespaces:
    steps += [normalizers.Replace(regex(' {2,}'), ' '), normalizers.Replace(regex(r'\A | \z'), '')]
  steps.append(normalizers.Replace(' ', _SP_WORD_BOUNDARY))
  if norm.add_dummy_prefix:
    steps.append(normalizers.Prepend(_SP_WORD_BOUNDARY))
  return normalizers.Sequence(steps)
