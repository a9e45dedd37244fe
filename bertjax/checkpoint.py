"""orbax checkpoints of the train state together with the data iterator's position.

One CheckpointManager under `WORKDIR/checkpoints`; each step holds two items:
`state` (step, params, optimizer state) and `data` (the grain iterator state), so a
restored run continues with the very next batch. orbax writes each step into a
temporary directory and renames it when complete, so a crash mid-save leaves the
previous checkpoint as the latest.
"""
from __future__ import annotations

import os

import grain
import orbax.checkpoint as ocp


def manager(workdir: str, *, keep: int) -> ocp.CheckpointManager:
  return ocp.CheckpointManager(
      os.path.join(os.path.abspath(workdir), 'checkpoints'),
      options=ocp.CheckpointManagerOptions(max_to_keep=keep, create=True),
      item_names=('state', 'data'))


def save(mngr: ocp.CheckpointManager, step: int, state, data_iterator) -> None:
  mngr.save(step, args=ocp.args.Composite(
      state=ocp.args.StandardSave(state),
      data=grain.checkpoint.CheckpointSave(data_iterator)))


def restore(mngr: ocp.CheckpointManager, abstract_state, data_iterator, step=None):
  """Restores `state` onto `abstract_state`'s shardings and rewinds the iterator.

  Returns the state, or None when the workdir holds no checkpoint yet.
  """
  step = mngr.latest_step() if step is None else step
  if step is None:
    return None
  restored = mngr.restore(step, args=ocp.args.Composite(
      state=ocp.args.StandardRestore(abstract_state),
      data=grain.checkpoint.CheckpointRestore(data_iterator)))
  return restored['state']
