"""orbax checkpoints of the train state together with the data iterator's position.

One CheckpointManager under `WORKDIR/checkpoints`; each step holds two items:
`state` (step, params, optimizer state) and `data` (the grain iterator state), so a
restored run continues with the very next batch. Fine-tuning, whose data order is a
function of the step, saves `state` alone, and its best weights under `WORKDIR/best`.
A checkpoint written by `bertjax import` holds a third kind of item alone, `params`:
weights to start from. The workdir may be local or a URL (`gs://`): paths go through
epath, and orbax writes through tensorstore. Locally orbax writes each step into a
temporary directory and renames it when complete; on GCS (no atomic directory rename)
a step counts once its `commit_success.txt` exists. Either way a crash mid-save
leaves the previous checkpoint as the latest. A checkpoint that cannot be read (damaged or missing files) is moved aside to
`WORKDIR/checkpoints_unreadable/STEP` and the one before it is used; a save that
fails (full disk, I/O error) is one line, and the checkpoints already written stay.
"""
from __future__ import annotations

import logging
import os
import re
import sys

import grain
import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from etils import epath
from jax.sharding import NamedSharding, PartitionSpec

from bertjax import hf_weights, storage
from bertjax.errors import UserError


# A failed save (full disk, I/O error) reaches bertjax as an exception from `save` or
# `wait`, reported there in one line. Before that, orbax and tensorstore print the same
# failure from their background threads: the two filters below drop exactly those copies.

# (orbax file, function) of the records logging a background failure that orbax keeps
# and re-raises from `wait_until_finished`: a thread of the save, the commit thread, and
# the wait itself.
_RERAISED_BY_ORBAX = {('future.py', 'run'), ('async_checkpointer.py', '_thread_func'),
                      ('checkpoint_manager.py', 'wait_until_finished')}


class _NoOrbaxCopiesOfRaisedErrors(logging.Filter):
  """Drops orbax's log records of a failure it re-raises to bertjax; strips the
  traceback from any other orbax record (hundreds of lines for one I/O error)."""

  def filter(self, record: logging.LogRecord) -> bool:
    if not (record.exc_info and f'{os.sep}orbax{os.sep}' in record.pathname):
      return True
    if (os.path.basename(record.pathname), record.funcName) in _RERAISED_BY_ORBAX:
      return False
    record.exc_info = record.exc_text = None
    return True


logging.getLogger('absl').addFilter(_NoOrbaxCopiesOfRaisedErrors())


def _closed_loop_callbacks_ignored(previous_hook):
  """orbax runs each save's writes on an event loop that it closes as soon as one write
  fails, while tensorstore's other writes are still in flight; as each of them ends,
  tensorstore's callback into the closed loop raises 'Event loop is closed' and prints it
  as unraisable (one traceback per array). Those are dropped; any other unraisable
  exception goes to the previous hook."""
  def hook(unraisable):
    tb = unraisable.exc_traceback
    while tb is not None and tb.tb_next is not None:
      tb = tb.tb_next
    if (unraisable.exc_type is RuntimeError and str(unraisable.exc_value) == 'Event loop is closed'
        and tb is not None and tb.tb_frame.f_code.co_name == '_check_closed'):
      return
    previous_hook(unraisable)
  return hook


sys.unraisablehook = _closed_loop_callbacks_ignored(sys.unraisablehook)


def manager(workdir: str, *, keep: int, subdir: str = 'checkpoints') -> ocp.CheckpointManager:
  return ocp.CheckpointManager(
      storage.as_path(workdir) / subdir,
      options=ocp.CheckpointManagerOptions(max_to_keep=keep, create=True),
      item_handlers=dict(state=ocp.StandardCheckpointHandler(),
                         params=ocp.StandardCheckpointHandler(),
                         data=grain.checkpoint.CheckpointHandler()))


def save(mngr: ocp.CheckpointManager, step: int, state, data_iterator=None) -> None:
  """Saves the state and, where the data order is not a function of the step alone
  (pre-training's grain iterator), the iterator's position.

  The write finishes in the background; `wait` reports its failure. A failure of an
  earlier save surfaces here too.
  """
  items = dict(state=ocp.args.StandardSave(state))
  if data_iterator is not None:
    items['data'] = grain.checkpoint.CheckpointSave(data_iterator)
  try:
    mngr.save(step, args=ocp.args.Composite(**items))
  except Exception as e:  # noqa: BLE001 - orbax/tensorstore raise many kinds for I/O
    raise _save_error(mngr, step, e) from e


def wait(mngr: ocp.CheckpointManager) -> None:
  """Waits for background saves; a failed one (full disk, I/O error) is one line."""
  try:
    mngr.wait_until_finished()
  except Exception as e:  # noqa: BLE001
    raise _save_error(mngr, None, e) from e


def _save_error(mngr: ocp.CheckpointManager, step: int | None, error: Exception) -> UserError:
  mngr.reload()
  kept = [s for s in mngr.all_steps() if s != step]
  where = f'step {step} ' if step is not None else ''
  return UserError(f'could not write checkpoint {where}to {mngr.directory}: {_first_line(error)}; '
                   f'the checkpoints already written ({", ".join(map(str, kept)) or "none"}) '
                   'are kept: free space or fix the disk, then re-run the same command to '
                   'resume from the last of them')


def _first_line(error: BaseException) -> str:
  """The useful part of a long orbax/tensorstore error: the OS error where it names
  one, else the first line of the innermost cause."""
  while error.__cause__ is not None or error.__context__ is not None:
    error = error.__cause__ or error.__context__
  text = str(error).strip()
  os_error = re.search(r"os_error_code='?(\d+)", text)
  if os_error:
    return f'OSError: {os.strerror(int(os_error.group(1)))}'
  lines = text.splitlines()
  return f'{type(error).__name__}: {lines[0] if lines else ""}'.rstrip(': ')


def save_params(workdir: str, step: int, params, *, subdir: str = 'checkpoints') -> None:
  """A params-only checkpoint: what `bertjax import` leaves for training to start
  from, and fine-tuning's best weights (`subdir='best'`, replacing the previous)."""
  with manager(workdir, keep=1, subdir=subdir) as mngr:
    if step in mngr.all_steps():  # re-saving after a resume: same step, same weights
      return
    try:
      mngr.save(step, args=ocp.args.Composite(params=ocp.args.StandardSave(params)))
      mngr.wait_until_finished()
    except Exception as e:  # noqa: BLE001 - orbax/tensorstore raise many kinds for I/O
      raise _save_error(mngr, step, e) from e


_COMMITTED = 'commit_success.txt'  # how orbax marks a finished step on object storage


def _partial_saves(mngr: ocp.CheckpointManager) -> list[str]:
  """Step directories a crash left behind mid-save, which orbax never takes for
  checkpoints: locally a temporary name (renamed on completion), on GCS a step
  directory without its commit marker."""
  directory = epath.Path(mngr.directory)
  if not directory.is_dir():  # on GCS a directory exists once it holds an object
    return []
  if storage.is_url(directory):
    found = [d for d in directory.iterdir()
             if d.name.isdigit() and not (d / _COMMITTED).exists()]
  else:
    found = [d for d in directory.iterdir() if '.orbax-checkpoint-tmp' in d.name]
  return sorted(os.fspath(d) for d in found)


def _items(mngr: ocp.CheckpointManager, step: int) -> set[str]:
  return {p.name for p in (epath.Path(mngr.directory) / str(step)).iterdir()}


def restore_params(workdir: str, abstract_params, step: int | None = None, *,
                   subdir: str = 'checkpoints'):
  """(step, params) from a workdir's checkpoint, full or params-only: the leaves of
  `abstract_params` (a subtree is enough), each onto its sharding where it has one."""
  with manager(workdir, keep=1 << 30, subdir=subdir) as mngr:
    step = mngr.latest_step() if step is None else step
    if step is None or step not in mngr.all_steps():
      raise UserError(f'{workdir} has no checkpoint{"" if step is None else f" at step {step}"}'
                      f'; steps there: {list(mngr.all_steps()) or "none"}')
    try:
      return step, _restore_params_step(mngr, step, abstract_params)
    except Exception as e:  # noqa: BLE001 - tensorstore reports damage as many kinds
      raise UserError(f'checkpoint {step} in {mngr.directory} cannot be read '
                      f'({_first_line(e)}); pick another with --step, or re-run training on '
                      f'{workdir} to set it aside') from e


def _restore_params_step(mngr, step, abstract_params):
  """Reads only the params (of a params-only checkpoint or a full train state), and of
  them only the leaves `abstract_params` holds: each onto its leaf's sharding where it
  has one (every process reads just its own shards), else onto this process's first
  device. Optimizer moments are never read."""
  item = 'params' if 'params' in _items(mngr, step) else 'state'
  saved = _as_saved(abstract_params, _saved_vocab_rows(mngr, step, item))
  device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
  saved = jax.tree.map(lambda a: a if getattr(a, 'sharding', None) is not None else
                       jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=device), saved)
  target = saved if item == 'params' else {'params': saved}
  # StandardRestore reads every leaf; the PyTree handler behind it (same format) can
  # leave out what the target omits.
  with ocp.Checkpointer(ocp.PyTreeCheckpointHandler()) as ckptr:
    restored = ckptr.restore(mngr.directory / str(step) / item, args=ocp.args.PyTreeRestore(
        item=target, restore_args=ocp.checkpoint_utils.construct_restore_args(target),
        partial_restore=True))
  params = restored if item == 'params' else restored['params']
  return _padded(_match(abstract_params, params), abstract_params)


def _match(reference, tree):
  """Re-keys `tree` like `reference` (orbax metadata turns int keys into strings)."""
  if isinstance(reference, dict):
    return {k: _match(v, tree[k] if k in tree else tree[str(k)]) for k, v in reference.items()}
  return tree


def restore(mngr: ocp.CheckpointManager, abstract_state, data_iterator=None):
  """Restores the latest readable checkpoint onto `abstract_state`'s shardings and
  rewinds the iterator.

  Returns the state; None when the workdir holds no checkpoint yet; for a
  params-only checkpoint, a state holding just `params` (optimizer starts fresh).
  An unreadable checkpoint is moved aside (one line) and the previous one tried;
  when none can be read the run stops rather than starting over.
  """
  for partial in _partial_saves(mngr):
    logging.warning('skipping the partly written checkpoint %s (a save was interrupted); '
                    'resuming from step %s', partial, mngr.latest_step())
  while (step := mngr.latest_step()) is not None:
    _check_layout(mngr, step, abstract_state)
    try:
      return _restore_step(mngr, step, abstract_state, data_iterator)
    except Exception as e:  # noqa: BLE001 - tensorstore reports damage as many kinds
      if jax.process_count() > 1:
        # Processes may fail on different shards: moving checkpoints aside needs them to
        # agree, so a multi-host run stops and says which step instead.
        raise UserError(f'checkpoint {step} in {mngr.directory} cannot be read '
                        f'({_first_line(e)}); re-run on one host to set it aside, or move '
                        'it out of checkpoints/ yourself') from e
      _set_aside(mngr, step, e)
  if _unreadable_dir(mngr).is_dir():
    raise UserError(f'no checkpoint in {mngr.directory} can be read (the unreadable ones are '
                    f'in {_unreadable_dir(mngr)}); to start over, use a new --workdir')
  return None


def _restore_step(mngr, step, abstract_state, data_iterator):
  if 'params' in _items(mngr, step):
    return {'params': _restore_params_step(mngr, step, abstract_state['params'])}
  saved = _as_saved(abstract_state, _saved_vocab_rows(mngr, step, 'state'))
  items = dict(state=ocp.args.StandardRestore(saved))
  if data_iterator is not None:
    items['data'] = grain.checkpoint.CheckpointRestore(data_iterator)
  return _padded(mngr.restore(step, args=ocp.args.Composite(**items))['state'], abstract_state)


def _params_metadata(mngr, step):
  item = 'params' if 'params' in _items(mngr, step) else 'state'
  metadata = mngr.item_metadata(step)[item]
  return metadata if item == 'params' else metadata['params']


def _saved_vocab_rows(mngr, step: int, item: str) -> int | None:
  """Rows of the saved word-embedding table (checkpoints from before the vocabulary
  was padded have fewer than the model now builds)."""
  try:
    node = _params_metadata(mngr, step)
    for key in ('bert', 'embeddings', 'word_embeddings', 'embedding'):
      node = node[key]
    return int(node.shape[0])
  except Exception:  # noqa: BLE001 - unreadable metadata: the restore itself will say so
    return None


def _as_saved(abstract, saved_rows: int | None):
  """`abstract` with its vocabulary leaves as an older, unpadded checkpoint holds them
  (replicated: `_padded` pads and places them right after)."""
  def leaf(path, a):
    if (saved_rows is None or not hf_weights.is_vocab_path(hf_weights.path_names(path))
        or a.shape[0] == saved_rows):
      return a
    sharding = getattr(a, 'sharding', None)
    if isinstance(sharding, NamedSharding):
      sharding = NamedSharding(sharding.mesh, PartitionSpec())
    return jax.ShapeDtypeStruct((saved_rows, *a.shape[1:]), a.dtype, sharding=sharding)
  return jax.tree_util.tree_map_with_path(leaf, abstract)


def _padded(tree, abstract):
  """Zero-pads restored vocabulary leaves to `abstract`'s rows, placed like it."""
  def leaf(path, x, a):
    if not hf_weights.is_vocab_path(hf_weights.path_names(path)) or x.shape == a.shape:
      return x
    x = jnp.pad(x, [(0, a.shape[0] - x.shape[0])] + [(0, 0)] * (x.ndim - 1))
    sharding = getattr(a, 'sharding', None)
    return jax.device_put(x, sharding) if sharding is not None else np.asarray(x)
  return jax.tree_util.tree_map_with_path(leaf, tree, abstract)


def _check_layout(mngr, step: int, abstract_state) -> None:
  """A checkpoint of another model (other shapes or layout, e.g. `scan_layers`
  switched) is an error to report, not damage to set aside."""
  try:
    saved = _shapes(_params_metadata(mngr, step))
  except Exception:  # noqa: BLE001 - unreadable: the restore will set it aside
    return
  wanted = _shapes(abstract_state['params'])
  differ = sorted(k for k in saved.keys() | wanted.keys()
                  if saved.get(k) != wanted.get(k)
                  and not hf_weights.is_vocab_path(k.split('/')))
  if differ:
    shown = ', '.join(f'{k}: saved {saved.get(k)}, now {wanted.get(k)}' for k in differ[:2])
    raise UserError(f'checkpoint {step} in {mngr.directory} holds a model of another shape '
                    f'or layout ({shown}); resume with the config that wrote it (e.g. the '
                    'same model sizes and scan_layers)')


def _shapes(tree) -> dict[str, tuple]:
  flat = jax.tree_util.tree_flatten_with_path(
      tree, is_leaf=lambda x: hasattr(x, 'shape'))[0]
  return {'/'.join(str(n) for n in hf_weights.path_names(p)): tuple(x.shape) for p, x in flat}


def _unreadable_dir(mngr) -> epath.Path:
  directory = epath.Path(mngr.directory)
  return directory.parent / f'{directory.name}_unreadable'


def _set_aside(mngr, step: int, error: Exception) -> None:
  """Moves an unreadable checkpoint out of orbax's sight (kept, not deleted), so that
  the run continues from the one before and later saves of this step can happen.
  Single-process runs only (see `restore`)."""
  dest = _unreadable_dir(mngr) / str(step)
  if dest.exists():  # set aside before: keep both
    dest = dest.parent / f'{step}.{len(list(_unreadable_dir(mngr).iterdir()))}'
  storage.move(epath.Path(mngr.directory) / str(step), dest)
  mngr.reload()
  previous = mngr.latest_step()
  logging.warning('checkpoint %s cannot be read (%s); moved it to %s and %s', step,
                  _first_line(error), dest,
                  f'using step {previous}' if previous is not None else 'no checkpoint is left')
