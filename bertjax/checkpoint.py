"""orbax checkpoints of the train state together with the data iterator's position.

One CheckpointManager under `WORKDIR/checkpoints`; each step holds two items:
`state` (step, params, optimizer state) and `data` (the grain iterator state), so a
restored run continues with the very next batch. Fine-tuning, whose data order is a
function of the step, saves `state` alone, and its best weights under `WORKDIR/best`.
A checkpoint written by `bertjax import` holds a third kind of item alone, `params`:
weights to start from. orbax writes each step into a temporary directory and
renames it when complete, so a crash mid-save leaves the previous checkpoint as the
latest.
"""
from __future__ import annotations

import logging
import os

import grain
import jax
import orbax.checkpoint as ocp

from bertjax.errors import UserError


def manager(workdir: str, *, keep: int, subdir: str = 'checkpoints') -> ocp.CheckpointManager:
  return ocp.CheckpointManager(
      os.path.join(os.path.abspath(workdir), subdir),
      options=ocp.CheckpointManagerOptions(max_to_keep=keep, create=True),
      item_handlers=dict(state=ocp.StandardCheckpointHandler(),
                         params=ocp.StandardCheckpointHandler(),
                         data=grain.checkpoint.CheckpointHandler()))


def save(mngr: ocp.CheckpointManager, step: int, state, data_iterator=None) -> None:
  """Saves the state and, where the data order is not a function of the step alone
  (pre-training's grain iterator), the iterator's position."""
  items = dict(state=ocp.args.StandardSave(state))
  if data_iterator is not None:
    items['data'] = grain.checkpoint.CheckpointSave(data_iterator)
  mngr.save(step, args=ocp.args.Composite(**items))


def save_params(workdir: str, step: int, params, *, subdir: str = 'checkpoints') -> None:
  """A params-only checkpoint: what `bertjax import` leaves for training to start
  from, and fine-tuning's best weights (`subdir='best'`, replacing the previous)."""
  with manager(workdir, keep=1, subdir=subdir) as mngr:
    if step in mngr.all_steps():  # re-saving after a resume: same step, same weights
      return
    mngr.save(step, args=ocp.args.Composite(params=ocp.args.StandardSave(params)))
    mngr.wait_until_finished()


def _partial_saves(mngr: ocp.CheckpointManager) -> list[str]:
  """Step directories a crash left behind mid-save (orbax writes to a temporary name
  and renames on completion, so these are never taken for checkpoints)."""
  directory = str(mngr.directory)
  return sorted(os.path.join(directory, d) for d in os.listdir(directory)
                if '.orbax-checkpoint-tmp' in d)


def _items(mngr: ocp.CheckpointManager, step: int) -> set[str]:
  return set(os.listdir(os.path.join(str(mngr.directory), str(step))))


def restore_params(workdir: str, abstract_params, step: int | None = None, *,
                   subdir: str = 'checkpoints'):
  """(step, params) from a workdir's checkpoint, full or params-only."""
  with manager(workdir, keep=1 << 30, subdir=subdir) as mngr:
    step = mngr.latest_step() if step is None else step
    if step is None or step not in mngr.all_steps():
      raise UserError(f'{workdir} has no checkpoint{"" if step is None else f" at step {step}"}'
                      f'; steps there: {list(mngr.all_steps()) or "none"}')
    if 'params' in _items(mngr, step):
      return step, mngr.restore(step, args=ocp.args.Composite(
          params=ocp.args.StandardRestore(abstract_params)))['params']
    # A full train state: restore it whole onto one device, as saved, and keep the
    # params; the optimizer config that shaped the rest is not needed for that.
    device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    target = jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=device),
                          mngr.item_metadata(step)['state'])
    state = mngr.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(target)))['state']
    return step, _match(abstract_params, state['params'])


def _match(reference, tree):
  """Re-keys `tree` like `reference` (orbax metadata turns int keys into strings)."""
  if isinstance(reference, dict):
    return {k: _match(v, tree[k] if k in tree else tree[str(k)]) for k, v in reference.items()}
  return tree


def restore(mngr: ocp.CheckpointManager, abstract_state, data_iterator=None, step=None):
  """Restores `state` onto `abstract_state`'s shardings and rewinds the iterator.

  Returns the state; None when the workdir holds no checkpoint yet; for a
  params-only checkpoint, a state holding just `params` (optimizer starts fresh).
  """
  step = mngr.latest_step() if step is None else step
  for partial in _partial_saves(mngr):
    logging.warning('skipping the partly written checkpoint %s (a save was interrupted); '
                    'resuming from step %s', partial, step)
  if step is None:
    return None
  if 'params' in _items(mngr, step):
    return mngr.restore(step, args=ocp.args.Composite(
        params=ocp.args.StandardRestore(abstract_state['params'])))
  items = dict(state=ocp.args.StandardRestore(abstract_state))
  if data_iterator is not None:
    items['data'] = grain.checkpoint.CheckpointRestore(data_iterator)
  return mngr.restore(step, args=ocp.args.Composite(**items))['state']
