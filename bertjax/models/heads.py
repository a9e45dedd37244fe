"""Heads over the encoder: masked-LM (tied decoder + bias), next-sentence, SpanBERT's
span boundary (SBO, optional in pre-training), and the task heads (sequence classification/regression, token classification, QA spans).

Each model is `bert` plus a head; `head(x_BLD, pooled_BD, ...)` applies the head to
encoder outputs, so callers that also want the hidden states run the encoder once.
Module and parameter names follow `transformers`' classes; KINDS, the one table of
head kinds, says which class each model is and how its head's weights are named
there (hf_weights.py maps them).

The MLM head runs only at the `positions_BP` chosen by masking: P is a fixed
max_predictions, so shapes stay static and the V-wide matmul costs P, not L, rows.
"""
from __future__ import annotations

import dataclasses

import jax.numpy as jnp
from flax import nnx

from bertjax.models import layers
from bertjax.models.bert import BertConfig, BertModel

# The logit of a padding row of the vocabulary: far below any real logit, so softmax,
# argmax and losses ignore it, yet finite, so a temperature or a KL stays finite too.
PADDED_LOGIT = -1e9


class MaskedLMHead(nnx.Module):
  """dense + GELU + LayerNorm, then logits against the word embeddings + a bias."""

  def __init__(self, cfg: BertConfig, *, rngs: nnx.Rngs):
    dt = cfg.compute_dtype
    self.transform = layers.Dense(cfg.hidden_size, cfg.hidden_size, axes=('embed', 'mlp'),
                                  dtype=dt, rngs=rngs)
    self.layer_norm = layers.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps, dtype=dt,
                                       rngs=rngs)
    self.bias = layers.param(rngs, nnx.initializers.zeros, (cfg.padded_vocab_size,),
                             ('vocab',))
    self.vocab_size = cfg.vocab_size

  def __call__(self, x_BPD, word_embeddings: layers.Embed):
    """(B, P, padded V) float32 logits, PADDED_LOGIT in the padding columns."""
    h_BPD = layers.gelu(self.transform(x_BPD))
    h_BPD = self.layer_norm(h_BPD)
    logits_BPV = word_embeddings.attend(h_BPD) + self.bias[...].astype(h_BPD.dtype)
    return _without_padding(logits_BPV.astype(jnp.float32), self.vocab_size)


def _without_padding(logits_BPV, vocab_size: int):
  """PADDED_LOGIT in the vocabulary's padding columns."""
  if logits_BPV.shape[-1] == vocab_size:
    return logits_BPV
  # A select, not an additive bias: the padding rows get exactly zero gradient.
  real_V = jnp.arange(logits_BPV.shape[-1]) < vocab_size
  return jnp.where(real_V, logits_BPV, PADDED_LOGIT)


class SpanBoundaryHead(nnx.Module):
  """SpanBERT's span-boundary objective: each masked token of a span s..e predicted
  from the encoder states just outside it and its place in it,

    h0 = [x_{s-1}; x_{e+1}; p_{i-s+1}], h1 = LN(GELU(W1 h0)), y = LN(GELU(W2 h1)),

  scored against the tied word embeddings. Touching spans merge, so a span may be as
  long as the row: the relative-position table has max_position_embeddings rows,
  which no offset inside a row reaches (jit would clamp it silently).
  """

  def __init__(self, cfg: BertConfig, *, rngs: nnx.Rngs):
    dt, d = cfg.compute_dtype, cfg.hidden_size
    self.position_embeddings = layers.Embed(cfg.max_position_embeddings, d,
                                            axes=(None, 'embed'), dtype=dt, rngs=rngs)
    self.dense1 = layers.Dense((3, d), d, axes=(None, 'embed', 'mlp'), dtype=dt, rngs=rngs)
    self.layer_norm1 = layers.LayerNorm(d, axis_name='mlp', eps=cfg.layer_norm_eps, dtype=dt,
                                        rngs=rngs)
    self.dense2 = layers.Dense(d, d, axes=('mlp', 'embed'), dtype=dt, rngs=rngs)
    self.layer_norm2 = layers.LayerNorm(d, eps=cfg.layer_norm_eps, dtype=dt, rngs=rngs)
    self.vocab_size = cfg.vocab_size

  def __call__(self, x_BLD, left_BP, right_BP, offset_BP, word_embeddings: layers.Embed):
    """(B, P, padded V) float32 logits; `offset_BP` is 0-based (p_{i-s+1} is row 0)."""
    gather = lambda pos_BP: jnp.take_along_axis(x_BLD, pos_BP[..., None], axis=1)
    h_BP3D = jnp.stack([gather(left_BP), gather(right_BP),
                        self.position_embeddings(offset_BP).astype(x_BLD.dtype)], axis=-2)
    h_BPD = self.layer_norm1(layers.gelu(self.dense1(h_BP3D)))
    h_BPD = self.layer_norm2(layers.gelu(self.dense2(h_BPD)))
    return _without_padding(word_embeddings.attend(h_BPD).astype(jnp.float32), self.vocab_size)


class BertForPreTraining(nnx.Module):
  """Encoder + MLM head (at masked positions) + NSP head on the pooled output, and with
  `cfg.sbo` the span-boundary head (called by the pre-training task on the encoder's
  states, so `head` and `__call__` stay as they are)."""

  def __init__(self, cfg: BertConfig, *, rngs: nnx.Rngs):
    self.config = cfg
    self.bert = BertModel(cfg, rngs=rngs)
    self.mlm = MaskedLMHead(cfg, rngs=rngs)
    self.nsp = layers.Dense(cfg.hidden_size, 2, axes=('embed', None), rngs=rngs)
    # Not part of the Hugging Face model: an export leaves it out.
    self.sbo = SpanBoundaryHead(cfg, rngs=rngs) if cfg.sbo else None

  def head(self, x_BLD, pooled_BD, positions_BP, rngs=None):
    x_BPD = jnp.take_along_axis(x_BLD, positions_BP[..., None], axis=1)
    mlm_logits_BPV = self.mlm(x_BPD, self.bert.embeddings.word_embeddings)
    nsp_logits_B2 = self.nsp(pooled_BD).astype(jnp.float32)
    return mlm_logits_BPV, nsp_logits_B2

  def __call__(self, input_ids_BL, token_type_ids_BL, attention_mask_BL, positions_BP, *,
               position_ids_BL=None, rngs: nnx.Rngs | None = None):
    x_BLD, pooled_BD = self.bert(input_ids_BL, token_type_ids_BL, attention_mask_BL,
                                 position_ids_BL, rngs=rngs)
    return self.head(x_BLD, pooled_BD, positions_BP)


class BertForSequenceClassification(nnx.Module):
  """Pooled output -> dropout -> num_labels logits (num_labels=1 is regression)."""

  def __init__(self, cfg: BertConfig, num_labels: int, *, rngs: nnx.Rngs,
               classifier_dropout: float | None = None):
    self.config, self.num_labels = cfg, num_labels
    self.classifier_dropout = (cfg.dropout_rate if classifier_dropout is None
                               else classifier_dropout)
    self.bert = BertModel(cfg, rngs=rngs)
    self.classifier = layers.Dense(cfg.hidden_size, num_labels, axes=('embed', None),
                                   rngs=rngs)

  def head(self, x_BLD, pooled_BD, rngs=None):
    del x_BLD
    pooled_BD = layers.dropout(pooled_BD, self.classifier_dropout, rngs)
    return self.classifier(pooled_BD).astype(jnp.float32)

  def __call__(self, input_ids_BL, token_type_ids_BL=None, attention_mask_BL=None, *,
               rngs: nnx.Rngs | None = None):
    return self.head(*self.bert(input_ids_BL, token_type_ids_BL, attention_mask_BL,
                                rngs=rngs), rngs)


class BertForTokenClassification(nnx.Module):
  """Per-token num_labels logits over the sequence output (no pooler)."""

  def __init__(self, cfg: BertConfig, num_labels: int, *, rngs: nnx.Rngs,
               classifier_dropout: float | None = None):
    self.config, self.num_labels = cfg, num_labels
    self.classifier_dropout = (cfg.dropout_rate if classifier_dropout is None
                               else classifier_dropout)
    self.bert = BertModel(cfg, add_pooler=False, rngs=rngs)
    self.classifier = layers.Dense(cfg.hidden_size, num_labels, axes=('embed', None),
                                   rngs=rngs)

  def head(self, x_BLD, pooled_BD, rngs=None):
    del pooled_BD
    x_BLD = layers.dropout(x_BLD, self.classifier_dropout, rngs)
    return self.classifier(x_BLD).astype(jnp.float32)

  def __call__(self, input_ids_BL, token_type_ids_BL=None, attention_mask_BL=None, *,
               rngs: nnx.Rngs | None = None):
    return self.head(*self.bert(input_ids_BL, token_type_ids_BL, attention_mask_BL,
                                rngs=rngs), rngs)


class BertForQuestionAnswering(nnx.Module):
  """Start and end logits (B, L) for extractive QA spans (no pooler)."""

  def __init__(self, cfg: BertConfig, *, rngs: nnx.Rngs):
    self.config = cfg
    self.bert = BertModel(cfg, add_pooler=False, rngs=rngs)
    self.qa_outputs = layers.Dense(cfg.hidden_size, 2, axes=('embed', None), rngs=rngs)

  def head(self, x_BLD, pooled_BD, rngs=None):
    del pooled_BD, rngs
    logits_BL2 = self.qa_outputs(x_BLD).astype(jnp.float32)
    return logits_BL2[..., 0], logits_BL2[..., 1]

  def __call__(self, input_ids_BL, token_type_ids_BL=None, attention_mask_BL=None, *,
               rngs: nnx.Rngs | None = None):
    return self.head(*self.bert(input_ids_BL, token_type_ids_BL, attention_mask_BL,
                                rngs=rngs))


@dataclasses.dataclass(frozen=True)
class HeadKind:
  """One head kind: its module and how `transformers` names it. Every module that
  treats kinds differently (weight names, checkpoint classes, label counts, the
  head weights an import may lack) reads this, so a new kind is one entry in KINDS.

  `hf_weights` lists the head's weights outside the encoder as (how, transformers
  name, our path): how is 'dense' (weight + bias), 'layer_norm' (weight + bias) or
  'vocab' (one tensor whose first axis is the padded vocabulary).
  """
  name: str
  module: type                          # built as module(cfg, [num_labels,] rngs=...)
  hf_class: str                         # the `transformers` class of its checkpoints
  pooler: bool                          # whether its encoder has the pooler
  hf_weights: tuple = ()
  # The head's weight groups (`transformers` name prefixes): a checkpoint has each
  # whole or not at all.
  hf_prefixes: tuple[str, ...] = ()
  # The `transformers` weight whose rows are the labels; None: no label count (the
  # module then takes no num_labels or classifier_dropout).
  labels_weight: str | None = None

  @property
  def labelled(self) -> bool:
    return self.labels_weight is not None


KINDS = {k.name: k for k in (
    HeadKind('encoder', BertModel, 'BertModel', pooler=True),
    HeadKind('pretraining', BertForPreTraining, 'BertForPreTraining', pooler=True,
             hf_weights=(('dense', 'cls.predictions.transform.dense', ('mlm', 'transform')),
                         ('layer_norm', 'cls.predictions.transform.LayerNorm',
                          ('mlm', 'layer_norm')),
                         ('vocab', 'cls.predictions.bias', ('mlm', 'bias')),
                         ('dense', 'cls.seq_relationship', ('nsp',))),
             hf_prefixes=('cls.predictions.', 'cls.seq_relationship.')),
    HeadKind('sequence_classification', BertForSequenceClassification,
             'BertForSequenceClassification', pooler=True,
             hf_weights=(('dense', 'classifier', ('classifier',)),),
             hf_prefixes=('classifier.',), labels_weight='classifier.weight'),
    HeadKind('token_classification', BertForTokenClassification, 'BertForTokenClassification',
             pooler=False, hf_weights=(('dense', 'classifier', ('classifier',)),),
             hf_prefixes=('classifier.',), labels_weight='classifier.weight'),
    HeadKind('question_answering', BertForQuestionAnswering, 'BertForQuestionAnswering',
             pooler=False, hf_weights=(('dense', 'qa_outputs', ('qa_outputs',)),),
             hf_prefixes=('qa_outputs.',)),
)}


def kind_of(name: str) -> HeadKind:
  if name not in KINDS:
    raise ValueError(f'unknown model kind {name!r}; the kinds are {sorted(KINDS)}')
  return KINDS[name]


def build(kind: str, cfg: BertConfig, *, num_labels: int = 2, rngs: nnx.Rngs,
          classifier_dropout: float | None = None):
  """A model by head kind (a key of KINDS). `classifier_dropout` (None: the encoder's
  dropout_rate) is the labelled heads' dropout."""
  head = kind_of(kind)
  if head.labelled:
    return head.module(cfg, num_labels, rngs=rngs, classifier_dropout=classifier_dropout)
  return head.module(cfg, rngs=rngs)
