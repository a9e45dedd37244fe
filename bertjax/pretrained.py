"""The Python API: `from_pretrained(path)` and `save_pretrained(model, tokenizer, out)`.

    model, tokenizer = bertjax.from_pretrained('runs/quickstart')   # or an HF directory
    batch = tokenizer(['a first text', 'and a second'])
    out = model(**batch)        # out.last_hidden_state, out.pooled_output, head logits
    bertjax.save_pretrained(model, tokenizer, 'exported/')   # transformers loads it
"""
from __future__ import annotations

import dataclasses
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from bertjax import hf_convert, storage, weights, workdir as workdir_lib
from bertjax.data import tokenizer as tokenizer_lib
from bertjax.errors import UserError
from bertjax.models import heads
from bertjax.models.bert import BertConfig


@jax.tree_util.register_dataclass
@dataclasses.dataclass
class BertOutput:
  """Outputs named as in `transformers`; head logits are None where there is no head."""
  last_hidden_state: jax.Array
  pooled_output: jax.Array | None
  prediction_logits: jax.Array | None = None
  seq_relationship_logits: jax.Array | None = None
  logits: jax.Array | None = None
  start_logits: jax.Array | None = None
  end_logits: jax.Array | None = None
  # With output_attentions=True: one (batch, heads, length, length) array per layer.
  attentions: tuple[jax.Array, ...] | None = None


class PretrainedModel:
  """A BERT with its weights, callable like a `transformers` model (eval mode)."""

  def __init__(self, module: nnx.Module, kind: str, config: BertConfig, num_labels: int = 2,
               label_names: tuple[str, ...] = ()):
    self.module, self.kind, self.config, self.num_labels = module, kind, config, num_labels
    self.label_names = tuple(label_names)  # a classifier's, where its source named them
    self._graphdef, self._state = nnx.split(module)
    self._forward = jax.jit(self._apply, static_argnames='output_attentions')

  @property
  def params(self):
    return nnx.to_pure_dict(self._state)

  def _apply(self, state, input_ids, token_type_ids, attention_mask, output_attentions):
    module = nnx.merge(self._graphdef, state)
    bert = module if self.kind == 'encoder' else module.bert
    hidden, pooled, *attentions = bert(input_ids, token_type_ids, attention_mask,
                                       output_attentions=output_attentions)
    out = BertOutput(hidden, pooled, attentions=attentions[0] if attentions else None)
    if self.kind == 'pretraining':
      every_position = jnp.broadcast_to(jnp.arange(input_ids.shape[1]), input_ids.shape)
      logits, out.seq_relationship_logits = module.head(hidden, pooled, every_position)
      # The real vocabulary's columns, as `transformers` returns them.
      out.prediction_logits = logits[..., :self.config.vocab_size]
    elif heads.kind_of(self.kind).labelled:  # one logit per label, as `transformers`
      out.logits = module.head(hidden, pooled)
    elif self.kind == 'question_answering':
      out.start_logits, out.end_logits = module.head(hidden, pooled)
    return out

  def __call__(self, input_ids, token_type_ids=None, attention_mask=None, *,
               output_attentions: bool = False) -> BertOutput:
    """`output_attentions=True` fills `out.attentions` (the xla attention computes
    them, whatever `model.attention` says)."""
    input_ids = jnp.asarray(input_ids, jnp.int32)
    if input_ids.ndim == 1:
      raise UserError('input_ids must be a batch (B, L); wrap a single sequence in a list')
    if input_ids.shape[1] > self.config.max_position_embeddings:
      raise UserError(f'sequences of {input_ids.shape[1]} tokens exceed the model\'s '
                      f'{self.config.max_position_embeddings} positions; truncate them')
    zeros = jnp.zeros_like(input_ids)
    token_type_ids = zeros if token_type_ids is None else jnp.asarray(token_type_ids, jnp.int32)
    attention_mask = (jnp.ones_like(input_ids) if attention_mask is None
                      else jnp.asarray(attention_mask, jnp.int32))
    return self._forward(self._state, input_ids, token_type_ids, attention_mask,
                         output_attentions=output_attentions)


class PretrainedTokenizer:
  """Batches text the way `transformers` tokenizers do: [CLS] A [SEP] (B [SEP]), with
  special tokens written in the text ('the [MASK] of france') read as their ids."""

  def __init__(self, tokenizer: tokenizer_lib.Tokenizer, max_length: int = 512):
    self.tokenizer, self.max_length = tokenizer, max_length

  def encode(self, text: str) -> list[int]:
    return tokenizer_lib.encode_with_special_tokens(self.tokenizer, [text])[0]

  def decode(self, ids: Sequence[int]) -> str:
    return self.tokenizer.decode(ids)

  def __call__(self, texts: str | Sequence[str], text_pair: str | Sequence[str] | None = None,
               *, max_length: int | None = None, truncation: bool = True,
               padding: bool = True) -> dict[str, np.ndarray]:
    """input_ids, token_type_ids, attention_mask as (B, L) int32 arrays, padded to the
    longest sequence; pairs are truncated longest-first, as `transformers` does."""
    single = isinstance(texts, str)
    texts = [texts] if single else list(texts)
    pairs = [None] * len(texts) if text_pair is None else (
        [text_pair] if isinstance(text_pair, str) else list(text_pair))
    if len(pairs) != len(texts):
      raise UserError(f'{len(texts)} texts but {len(pairs)} text pairs')
    limit = max_length or self.max_length
    tok = self.tokenizer
    a_ids = tokenizer_lib.encode_with_special_tokens(tok, texts)
    b_ids = iter(tokenizer_lib.encode_with_special_tokens(
        tok, [b for b in pairs if b is not None]))
    rows = [tokenizer_lib.encode_pair(tok, a, next(b_ids) if b_text is not None else None,
                                      limit if truncation else None)
            for a, b_text in zip(a_ids, pairs)]
    width = max(len(ids) for ids, _ in rows)
    if not padding and len({len(ids) for ids, _ in rows}) > 1:
      raise UserError('texts of different lengths need padding=True')
    out = {k: np.full((len(rows), width), v, np.int32)
           for k, v in (('input_ids', tok.pad_id), ('token_type_ids', 0),
                        ('attention_mask', 0))}
    for i, (ids, types) in enumerate(rows):
      out['input_ids'][i, :len(ids)] = ids
      out['token_type_ids'][i, :len(ids)] = types
      out['attention_mask'][i, :len(ids)] = 1
    return out


def from_pretrained(path: str) -> tuple[PretrainedModel, PretrainedTokenizer]:
  """Loads a Hugging Face BERT directory or a bertjax workdir: a pre-training one's
  latest checkpoint, a fine-tuned one's best weights with its task head."""
  if not (workdir_lib.is_workdir(path) or (storage.as_path(path) / 'config.json').is_file()):
    raise UserError(f'{path} is neither a Hugging Face model directory (config.json + '
                    'model.safetensors) nor a bertjax workdir (config.json + checkpoints/)')
  source = weights.open_weights(path)
  cfg = source.model_cfg
  module = heads.build(source.kind, cfg, num_labels=source.num_labels, rngs=nnx.Rngs(0))
  graphdef, state = nnx.split(module)
  fresh = jax.tree.map(np.asarray, nnx.to_pure_dict(state))
  params, _ = weights.transplant(source, fresh, source.kind, source.num_labels)
  nnx.replace_by_pure_dict(state, params)
  return (PretrainedModel(nnx.merge(graphdef, state), source.kind, cfg, source.num_labels,
                          source.label_names),
          PretrainedTokenizer(weights.open_tokenizer(path), cfg.max_position_embeddings))


def save_pretrained(model: PretrainedModel, tokenizer: PretrainedTokenizer, out_dir: str) -> str:
  """Writes a directory `transformers` loads with the class matching the model's head,
  into a new or empty directory or over an earlier export (anything else is refused)."""
  params = jax.tree.map(np.asarray, model.params)
  return hf_convert.write_hf_dir(params, model.config, model.kind, tokenizer.tokenizer, out_dir,
                                 num_labels=model.num_labels, label_names=model.label_names)
