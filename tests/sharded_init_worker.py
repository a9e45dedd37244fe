"""A run's start from a Hugging Face directory, as `bertjax train` makes it (fresh
state, then `init_weights.initial_params`), on an FSDP mesh of 8 devices.

test_sharded_restore runs `start` in its own process (8 devices, the reference) and
this file as two processes of 4 devices each (`python sharded_init_worker.py INIT
OUT COORDINATOR PROCESS_ID`): process 0 gathers the started params into OUT (.npz).
"""
from __future__ import annotations

import os
import sys

import jax
import numpy as np

from bertjax import config_lib, init_weights, sharding, steps, weights

QUICKSTART = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                          'experiments', 'quickstart.py')


def start(init: str):
  """(the run's first params, the step's params shardings)."""
  config = config_lib.apply_overrides(config_lib.load_config(f'{QUICKSTART}:local'),
                                      [f'init={init}', 'mesh.fsdp=8'])
  init_weights.adopt_architecture(config)
  model_cfg = config_lib.model_config(config, weights.open_tokenizer(init).vocab_size)
  mesh = sharding.make_mesh(config.mesh)
  fns = steps.build(model_cfg, config.optim, mesh, sharding.rules_from_config(config.mesh),
                    **config_lib.step_settings(config))
  fresh = fns.init(jax.random.key(config.seed))['params']
  state = fns.init_from_params(init_weights.initial_params(init, fresh, 'pretraining'))
  return state['params'], fns.state_sharding['params']


def flat(tree) -> dict[str, np.ndarray]:
  return {jax.tree_util.keystr(path): np.asarray(leaf)
          for path, leaf in jax.tree_util.tree_leaves_with_path(tree)}


def main(init: str, out: str, coordinator: str, process_id: int) -> None:
  from jax.experimental import multihost_utils
  from bertjax import distributed
  distributed.initialize(coordinator, 2, process_id)
  params, shardings = start(init)
  spanning = 0
  for leaf, want in zip(jax.tree.leaves(params), jax.tree.leaves(shardings)):
    assert leaf.sharding == want, (leaf.sharding, want)
    spanning += not leaf.is_fully_addressable
  # fsdp=8 over 2 x 4 devices: most weights are split between the processes.
  assert spanning > len(jax.tree.leaves(params)) // 2, spanning
  whole = multihost_utils.process_allgather(params, tiled=True)
  if process_id == 0:
    np.savez(out, **flat(whole))


if __name__ == '__main__':
  main(sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]))
