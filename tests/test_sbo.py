"""SpanBERT's span-boundary objective: the head, its batch keys, its loss and recipe."""
import dataclasses
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers
from flax import nnx

from bertjax import config_checks, config_lib, train
from bertjax.cli import main
from bertjax.data import masking, pipeline
from bertjax.errors import UserError
from bertjax.models import heads
from bertjax.models.bert import BertConfig
from bertjax.tasks import pretrain

from conftest import ROOT

SPAN_SBO = os.path.join(ROOT, 'experiments', 'bert_base_span.py')


def _tiny(**kw):
  return BertConfig(vocab_size=100, num_layers=1, hidden_size=32, num_heads=2,
                    intermediate_size=64, max_position_embeddings=64, dropout_rate=0.0,
                    attention_dropout_rate=0.0, sbo=True, **kw)


def _span_batch(length=64, batch=4, seed=0, rate=0.15, p=10):
  rng = np.random.default_rng(seed)
  ids = rng.integers(5, 100, (batch, length))
  ids[:, 0], ids[:, -1] = 2, 3
  special = np.isin(ids, [2, 3])
  out = masking.mask(ids, rng.random(ids.shape) < 0.7, special, kind='span', rate=rate,
                     max_predictions=p, rng=rng, vocab_size=100, mask_id=4)
  return dict(input_ids=out['input_ids'], token_type_ids=np.zeros_like(ids),
              attention_mask=np.ones_like(ids), position_ids=np.broadcast_to(
                  np.arange(length), ids.shape), mlm_positions=out['positions'],
              mlm_targets=out['targets'], mlm_weights=out['weights'],
              nsp_labels=np.full((batch,), -1), sbo_left=out['span_left'],
              sbo_right=out['span_right'], sbo_offset=out['span_offset'])


def test_head_shapes_and_padding_columns():
  cfg = _tiny()
  model = heads.BertForPreTraining(cfg, rngs=nnx.Rngs(params=0))
  batch = _span_batch()
  x_BLD, _ = model.bert(batch['input_ids'], batch['token_type_ids'], batch['attention_mask'])
  logits = model.sbo(x_BLD, batch['sbo_left'], batch['sbo_right'], batch['sbo_offset'],
                     model.bert.embeddings.word_embeddings)
  assert logits.shape == (4, 10, cfg.padded_vocab_size) and logits.dtype == jnp.float32
  assert (logits[..., cfg.vocab_size:] == heads.PADDED_LOGIT).all()
  assert model.sbo.position_embeddings.embedding.shape == (cfg.max_position_embeddings, 32)
  plain = heads.BertForPreTraining(dataclasses.replace(cfg, sbo=False), rngs=nnx.Rngs(params=0))
  assert plain.sbo is None


def test_merged_spans_fit_the_position_table():
  """Rate 1 merges every word of a row into one span: offsets reach the row's length,
  and every one of them is a row of the table (jit would clamp one past its end)."""
  batch = _span_batch(length=64, rate=1.0, p=62)
  assert batch['sbo_offset'].max() == 61
  assert batch['sbo_offset'].max() < _tiny().max_position_embeddings


def test_loss_adds_sbo_and_gradients_reach_the_head():
  model = heads.BertForPreTraining(_tiny(), rngs=nnx.Rngs(params=0))
  batch = {k: jnp.asarray(v) for k, v in _span_batch().items()}
  graphdef, params = nnx.split(model, nnx.Param)

  def loss(p):
    sums = pretrain.batch_sums(nnx.merge(graphdef, p), batch)
    return pretrain.loss_from_sums(sums, sums['mlm_count'], sums['nsp_count']), sums

  (value, sums), grads = jax.value_and_grad(loss, has_aux=True)(params)
  metrics = pretrain.metrics_from_sums(sums)
  assert value == pytest.approx(float(metrics['mlm_loss'] + metrics['sbo_loss']), rel=1e-5)
  assert 0 <= metrics['sbo_accuracy'] <= 1
  sbo_grads = jax.tree.leaves(grads['sbo'])
  assert len(sbo_grads) == 9 and all(float(jnp.abs(g).max()) > 0 for g in sbo_grads)
  # The boundary states carry gradient into the encoder through the SBO loss alone.
  def sbo_only(p):
    return pretrain.batch_sums(nnx.merge(graphdef, p), batch)['sbo_loss_sum']
  encoder = jax.tree.leaves(jax.grad(sbo_only)(params)['bert'])
  assert max(float(jnp.abs(g).max()) for g in encoder) > 0


def test_pipeline_carries_boundary_keys_for_span_only(tmp_path):
  c = config_lib.load_config(SPAN_SBO + ':local,sbo')
  data = pipeline.build(c.data, batch_size=8, eval_batches=1, seed=0, workdir=str(tmp_path))
  batch = data.eval_batches[0]
  p = c.data.masking.max_predictions
  for key in ('sbo_left', 'sbo_right', 'sbo_offset'):
    assert batch[key].shape == (8, p) and batch[key].dtype == np.int32
  w = batch['mlm_weights'] > 0
  assert (batch['sbo_left'][w] < batch['mlm_positions'][w]).all()
  assert (batch['sbo_right'][w] > batch['mlm_positions'][w]).all()
  token = config_lib.apply_overrides(config_lib.load_config(SPAN_SBO + ':local'),
                                     ['data.masking.kind=token'])
  plain = pipeline.build(token.data, batch_size=8, eval_batches=1, seed=0,
                         workdir=str(tmp_path))
  assert 'sbo_left' not in plain.eval_batches[0]


def test_sbo_without_spans_is_one_line():
  c = config_lib.apply_overrides(config_lib.load_config(SPAN_SBO + ':local,sbo'),
                                 ['data.masking.kind=whole_word'])
  with pytest.raises(UserError, match=r"^model.sbo=True .*kind='whole_word' makes no spans; "
                                      r'pass --config.data.masking.kind=span'):
    config_checks.validate(c)


def test_published_recipe_trains_and_exports_without_the_head(tmp_path):
  c = config_lib.load_config(SPAN_SBO + ':local,sbo')
  assert (c.model.sbo, c.data.masking.kind, c.data.sentence_objective) == (True, 'span', 'none')
  config_checks.validate(c)
  workdir = str(tmp_path / 'spanbert')
  results = train.train_and_evaluate(c, workdir)
  assert np.isfinite(results['sbo_loss']) and results['nsp_loss'] == 0
  logged = [json.loads(line) for line in open(os.path.join(workdir, 'metrics.jsonl'))]
  assert any('sbo_loss' in r for r in logged)
  out = str(tmp_path / 'hf')
  assert main(['export', '--workdir', workdir, '--out', out]) == 0
  reference, info = transformers.BertForPreTraining.from_pretrained(out, output_loading_info=True)
  for key in ('missing_keys', 'unexpected_keys', 'mismatched_keys'):
    assert not info.get(key), (key, info[key])
  with torch.no_grad():
    reference(torch.tensor([[2, 10, 11, 3]]))
