"""bertjax computes what `transformers` BERT computes, head by head, within 1e-5."""
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers
from flax import nnx

from bertjax import hf_weights
from bertjax.models import heads
from bertjax.models.bert import BertConfig

ATOL = 1e-5
SHAPES = [  # layers, hidden, heads, intermediate, vocab
    (1, 32, 2, 64, 50),
    (2, 48, 4, 100, 97),
    (3, 64, 8, 128, 131),
]


def make_pair(shape, kind, hf_class, num_labels=None, seed=0):
  layers, hidden, n_heads, inter, vocab = shape
  hf_cfg = transformers.BertConfig(
      vocab_size=vocab, hidden_size=hidden, num_hidden_layers=layers,
      num_attention_heads=n_heads, intermediate_size=inter, max_position_embeddings=40,
      type_vocab_size=2, hidden_act='gelu', layer_norm_eps=1e-12,
      num_labels=num_labels or 2, attn_implementation='eager')
  torch.manual_seed(seed)
  reference = getattr(transformers, hf_class)(hf_cfg).eval()
  with torch.no_grad():  # move every weight off its init (LayerNorm 1/0, zero biases)
    for p in reference.parameters():
      p.add_(0.05 * torch.randn_like(p))
  cfg = BertConfig(vocab_size=vocab, num_layers=layers, hidden_size=hidden,
                   num_heads=n_heads, intermediate_size=inter, max_position_embeddings=40)
  build = {
      'pretraining': lambda: heads.BertForPreTraining(cfg, rngs=nnx.Rngs(0)),
      'sequence_classification': lambda: heads.BertForSequenceClassification(
          cfg, num_labels, rngs=nnx.Rngs(0)),
      'token_classification': lambda: heads.BertForTokenClassification(
          cfg, num_labels, rngs=nnx.Rngs(0)),
      'question_answering': lambda: heads.BertForQuestionAnswering(cfg, rngs=nnx.Rngs(0)),
  }[kind]
  model = build()
  graphdef, state = nnx.split(model)
  tensors = {k: v.detach().numpy() for k, v in reference.state_dict().items()}
  params, missing = hf_weights.from_hf(tensors, nnx.to_pure_dict(state), kind, layers)
  assert missing == []
  nnx.replace_by_pure_dict(state, params)
  return nnx.merge(graphdef, state), reference


def make_inputs(vocab, seed=0, batch=3, length=12):
  rng = np.random.default_rng(seed)
  ids = rng.integers(0, vocab, (batch, length))
  token_types = (np.arange(length)[None] >= rng.integers(2, length, (batch, 1))).astype(int)
  mask = (np.arange(length)[None] < np.array([[length], [length - 4], [5]])).astype(int)
  return ids, token_types, mask


def run_reference(reference, ids, token_types, mask):
  with torch.no_grad():
    return reference(input_ids=torch.tensor(ids), token_type_ids=torch.tensor(token_types),
                     attention_mask=torch.tensor(mask), output_hidden_states=True)


def close(ours, theirs):
  np.testing.assert_allclose(np.asarray(ours), theirs.detach().numpy(), atol=ATOL, rtol=0)


@pytest.mark.parametrize('shape', SHAPES)
def test_pretraining_heads_and_encoder(shape):
  model, reference = make_pair(shape, 'pretraining', 'BertForPreTraining')
  ids, tt, mask = make_inputs(shape[-1])
  ref = run_reference(reference, ids, tt, mask)
  every_position = jnp.broadcast_to(jnp.arange(ids.shape[1]), ids.shape)
  mlm_logits, nsp_logits = model(jnp.asarray(ids), jnp.asarray(tt), jnp.asarray(mask),
                                 every_position)
  close(mlm_logits[..., :shape[-1]], ref.prediction_logits)  # the real vocabulary's columns
  close(nsp_logits, ref.seq_relationship_logits)
  hidden, pooled = model.bert(jnp.asarray(ids), jnp.asarray(tt), jnp.asarray(mask))
  close(hidden, ref.hidden_states[-1])
  with torch.no_grad():
    ref_pooled = reference.bert(input_ids=torch.tensor(ids), token_type_ids=torch.tensor(tt),
                                attention_mask=torch.tensor(mask)).pooler_output
  close(pooled, ref_pooled)


@pytest.mark.parametrize('shape', SHAPES[:2])
@pytest.mark.parametrize('num_labels', [1, 3])
def test_sequence_classification(shape, num_labels):
  model, reference = make_pair(shape, 'sequence_classification',
                               'BertForSequenceClassification', num_labels)
  ids, tt, mask = make_inputs(shape[-1], seed=1)
  close(model(jnp.asarray(ids), jnp.asarray(tt), jnp.asarray(mask)),
        run_reference(reference, ids, tt, mask).logits)


@pytest.mark.parametrize('shape', SHAPES[:2])
def test_token_classification(shape):
  model, reference = make_pair(shape, 'token_classification', 'BertForTokenClassification', 5)
  ids, tt, mask = make_inputs(shape[-1], seed=2)
  close(model(jnp.asarray(ids), jnp.asarray(tt), jnp.asarray(mask)),
        run_reference(reference, ids, tt, mask).logits)


@pytest.mark.parametrize('shape', SHAPES[:2])
def test_question_answering(shape):
  model, reference = make_pair(shape, 'question_answering', 'BertForQuestionAnswering')
  ids, tt, mask = make_inputs(shape[-1], seed=3)
  start, end = model(jnp.asarray(ids), jnp.asarray(tt), jnp.asarray(mask))
  ref = run_reference(reference, ids, tt, mask)
  close(start, ref.start_logits)
  close(end, ref.end_logits)


def test_export_round_trip_is_lossless():
  model, reference = make_pair(SHAPES[1], 'pretraining', 'BertForPreTraining')
  exported = hf_weights.to_hf(nnx.to_pure_dict(nnx.state(model)), 'pretraining', 2,
                              vocab_size=SHAPES[1][-1])
  state = reference.state_dict()
  tied = {'cls.predictions.decoder.weight', 'cls.predictions.decoder.bias'}
  assert set(exported) == set(state) - tied
  for name, value in exported.items():
    np.testing.assert_array_equal(value, state[name].numpy(), err_msg=name)
