"""The train step's program depends on shapes and settings, not on the seed: runs
that differ only by seed (fine-tuning seeds, sweep variants) compile it once."""
import jax
import pytest

from bertjax import sharding

from test_grad_accum import build, fake_batch


@pytest.mark.parametrize('accum', [1, 2])
def test_seeds_share_one_program_and_still_draw_their_own_dropout(accum):
  lowered, grad_norms = [], []
  for seed in (0, 1):
    fns, mesh, rules, c = build(dict(data=8, fsdp=1), accum, seed=seed,
                                overrides=['model.dropout_rate=0.1'])
    with sharding.activate(mesh, rules):
      state = fns.init(jax.random.key(0))  # the same weights: only dropout differs
      batch = fake_batch(c, fns)
      lowered.append(fns.train_step.lower(state, batch).as_text())
      grad_norms.append(float(fns.train_step(state, batch)[1]['grad_norm']))
  assert lowered[0] == lowered[1]
  assert grad_norms[0] != grad_norms[1]  # the seed still reaches the dropout masks
