import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from bertjax import config_lib, sharding
from bertjax.models import layers
from bertjax.models.bert import BertConfig, BertModel
from bertjax.models.heads import BertForPreTraining

CFG = BertConfig(vocab_size=97, num_layers=2, hidden_size=32, num_heads=4,
                 intermediate_size=64, max_position_embeddings=64)


@pytest.fixture(scope='module')
def model():
  return BertForPreTraining(CFG, rngs=nnx.Rngs(0))


def test_presets_have_the_published_sizes():
  for name, (depth, hidden, heads) in {'tiny': (2, 128, 2), 'mini': (4, 256, 4),
                                        'small': (4, 512, 8), 'medium': (8, 512, 8),
                                        'base': (12, 768, 12),
                                        'large': (24, 1024, 16)}.items():
    p = config_lib.model_preset(name)
    assert (p.num_layers, p.hidden_size, p.num_heads, p.intermediate_size) == (
        depth, hidden, heads, 4 * hidden)
  base = BertForPreTraining(BertConfig.from_dict(
      {**config_lib.model_preset('base').to_dict(), 'vocab_size': 30522, 'vocab_multiple': 1}),
      rngs=nnx.Rngs(0))
  n = sum(x.size for x in jax.tree.leaves(nnx.state(nnx.eval_shape(lambda: base))))
  assert abs(n - 110.1e6) < 0.1e6  # BERT-base with its heads: ~110M parameters


def test_every_weight_names_its_logical_axes(model):
  known = {'vocab', 'embed', 'heads', 'kv', 'mlp', None}
  for path, var in nnx.to_flat_state(nnx.state(model)):
    axes = var.get_metadata()['out_sharding']
    assert len(axes) == var[...].ndim, path
    assert set(axes) <= known, path


def test_output_shapes_and_determinism_without_rngs(model):
  ids = jnp.arange(2 * 16).reshape(2, 16) % CFG.vocab_size
  positions = jnp.array([[1, 3, 5], [2, 4, 0]])
  mlm, nsp = model(ids, jnp.zeros_like(ids), jnp.ones_like(ids), positions)
  assert mlm.shape == (2, 3, CFG.padded_vocab_size) and nsp.shape == (2, 2)
  mlm2, _ = model(ids, jnp.zeros_like(ids), jnp.ones_like(ids), positions)
  np.testing.assert_array_equal(mlm, mlm2)
  mlm3, _ = model(ids, jnp.zeros_like(ids), jnp.ones_like(ids), positions,
                  rngs=nnx.Rngs(dropout=1))
  assert not np.allclose(mlm, mlm3)  # dropout is on when rngs are given


def test_padding_does_not_change_real_tokens():
  bert = BertModel(CFG, rngs=nnx.Rngs(1))
  ids = jnp.array([[5, 6, 7, 8, 9, 10]])
  short, _ = bert(ids[:, :4], attention_mask_BL=jnp.ones((1, 4), jnp.int32))
  padded, _ = bert(ids.at[:, 4:].set(0), attention_mask_BL=jnp.array([[1, 1, 1, 1, 0, 0]]))
  np.testing.assert_allclose(short, padded[:, :4], atol=1e-5)
  assert np.isfinite(padded).all()


def test_packed_documents_do_not_attend_to_each_other():
  bert = BertModel(CFG, rngs=nnx.Rngs(2))
  doc_a, doc_b = jnp.array([[11, 12, 13]]), jnp.array([[21, 22, 23, 24]])
  packed = jnp.concatenate([doc_a, doc_b], axis=1)
  segments = jnp.array([[1, 1, 1, 2, 2, 2, 2]])
  positions = jnp.array([[0, 1, 2, 0, 1, 2, 3]])
  out, _ = bert(packed, attention_mask_BL=segments, position_ids_BL=positions)
  alone_b, _ = bert(doc_b)
  np.testing.assert_allclose(out[:, 3:], alone_b, atol=1e-5)


def test_logical_rules_use_each_mesh_axis_once():
  rules = sharding.DEFAULT_RULES
  assert sharding.logical_to_spec(('batch', 'length', 'embed'), rules) == \
      jax.sharding.PartitionSpec(('data', 'fsdp'), None, None)
  assert sharding.logical_to_spec(('embed', 'heads', 'kv'), rules) == \
      jax.sharding.PartitionSpec('fsdp', 'tensor', None)


@pytest.mark.parametrize('train', [False, True])
def test_scanned_layers_equal_unrolled_with_the_same_parameter_tree(train):
  unrolled = BertForPreTraining(CFG, rngs=nnx.Rngs(0))
  scanned = BertForPreTraining(dataclasses.replace(CFG, scan_layers=True), rngs=nnx.Rngs(0))
  params = nnx.to_pure_dict(nnx.state(unrolled))
  # Checkpoints, HF export and sharding rules see one subtree per layer either way.
  assert jax.tree.structure(nnx.to_pure_dict(nnx.state(scanned))) == jax.tree.structure(params)
  assert set(params['bert']['layers']) == {0, 1}
  ids = jnp.arange(2 * 16).reshape(2, 16) % CFG.vocab_size
  positions = jnp.array([[1, 3, 5], [2, 4, 0]])

  def loss(model):
    rngs = nnx.Rngs(dropout=7) if train else None  # same dropout masks in both
    mlm, nsp = model(ids, jnp.zeros_like(ids), jnp.ones_like(ids), positions, rngs=rngs)
    return (mlm ** 2).mean() + (nsp ** 2).mean(), mlm

  (want, want_mlm), want_grads = jax.jit(nnx.value_and_grad(loss, has_aux=True))(unrolled)
  (got, got_mlm), got_grads = jax.jit(nnx.value_and_grad(loss, has_aux=True))(scanned)
  np.testing.assert_allclose(got_mlm, want_mlm, atol=1e-5)
  np.testing.assert_allclose(got, want, atol=1e-5)
  for (path, a), (_, b) in zip(nnx.to_flat_state(want_grads), nnx.to_flat_state(got_grads)):
    np.testing.assert_allclose(b[...], a[...], atol=1e-5, err_msg=str(path))


def test_dropout_mask_rate_determinism_and_odd_shapes():
  key = jax.random.key(3)
  mask = layers.keep_mask(key, 0.1, (16, 8, 128, 128))
  assert mask.dtype == jnp.bool_ and abs(float(mask.mean()) - 0.9) < 1e-3
  np.testing.assert_array_equal(mask, layers.keep_mask(key, 0.1, (16, 8, 128, 128)))
  assert float((mask != layers.keep_mask(jax.random.key(4), 0.1, mask.shape)).mean()) > 0.1
  # Rows and the two 16-bit draws of a hash are not copies of each other.
  assert float((mask[0] != mask[1]).mean()) > 0.1
  assert float((mask[..., :64] != mask[..., 64:]).mean()) > 0.1
  odd = layers.keep_mask(key, 0.5, (3, 7))
  assert odd.shape == (3, 7) and 0 < float(odd.mean()) < 1
  x = jnp.ones((64, 512))
  y = layers.dropout(x, 0.25, nnx.Rngs(dropout=0))
  np.testing.assert_allclose(np.unique(np.asarray(y)), [0.0, 1 / 0.75], rtol=1e-6)
