"""Device mesh from config, logical-axis rules, and the shardings jit places by.

The model names logical axes ('vocab', 'embed', 'heads', 'kv', 'mlp' on weights;
'batch', 'length' on activations); `config.mesh.rules` maps each to a mesh axis
('data', 'fsdp', 'tensor') or to None (replicated). This is the only module that
knows both vocabularies.
"""
from __future__ import annotations

import contextlib
import logging
import math

import jax
import numpy as np
from flax import nnx
from flax.core import spmd as core_spmd
from jax.sharding import NamedSharding, PartitionSpec

from bertjax.errors import UserError

MESH_AXES = ('data', 'fsdp', 'tensor')

# Batch over data and fsdp (FSDP is data parallelism that also shards weights);
# weights' 'embed' over fsdp, the wide axes (vocab, heads, mlp) over tensor.
DEFAULT_RULES = (
    ('batch', ('data', 'fsdp')),
    ('length', None),
    ('vocab', 'tensor'),
    ('embed', 'fsdp'),
    ('heads', 'tensor'),
    ('kv', None),
    ('mlp', 'tensor'),
)


def mesh_shape(mesh_cfg, num_devices: int) -> tuple[int, ...]:
  """Resolves the axis sizes in `mesh_cfg` (-1 takes the devices left over).

  Explicit sizes may use fewer devices than there are (e.g. a 1-device reference run
  on an 8-device host); `make_mesh` then takes the first ones and says so.
  """
  sizes = [int(mesh_cfg[a]) for a in MESH_AXES]
  fixed = math.prod(s for s in sizes if s != -1)
  if sizes.count(-1) > 1 or any(s == 0 or s < -1 for s in sizes):
    raise UserError('mesh axes are positive sizes, at most one of them -1 (fill the rest); '
                    f'got {dict(zip(MESH_AXES, sizes))}')
  if -1 in sizes:
    if num_devices % fixed:
      raise UserError(f'{num_devices} devices do not divide by the fixed mesh axes '
                      f'{dict(zip(MESH_AXES, sizes))}')
    sizes[sizes.index(-1)] = num_devices // fixed
  if math.prod(sizes) > num_devices:
    raise UserError(f'mesh {dict(zip(MESH_AXES, sizes))} needs {math.prod(sizes)} devices, '
                    f'but {num_devices} are available; set --config.mesh.data=-1')
  return tuple(sizes)


def make_mesh(mesh_cfg) -> jax.sharding.Mesh:
  shape = mesh_shape(mesh_cfg, jax.device_count())
  if math.prod(shape) < jax.device_count():
    logging.warning('mesh %s uses %d of the %d devices', dict(zip(MESH_AXES, shape)),
                    math.prod(shape), jax.device_count())
  return jax.make_mesh(shape, MESH_AXES, devices=jax.devices()[:math.prod(shape)],
                       axis_types=(jax.sharding.AxisType.Auto,) * len(MESH_AXES))


def rules_from_config(mesh_cfg) -> tuple:
  rules = mesh_cfg.get('rules', None) or DEFAULT_RULES
  return tuple((name, tuple(axis) if isinstance(axis, list) else axis) for name, axis in rules)


def logical_to_spec(logical_axes, rules) -> PartitionSpec:
  """Maps logical names to mesh axes, using each mesh axis at most once.

  Rules are tried in order; a rule whose mesh axis an earlier dimension already took
  is skipped, so activations ('batch', 'length', 'embed') put 'batch' on data+fsdp
  and leave 'embed' replicated, while weights put 'embed' on fsdp.
  """
  used, spec = set(), []
  for name in logical_axes:
    chosen = None
    for rule_name, mesh_axes in rules:
      if rule_name != name or mesh_axes is None:
        continue
      axes = (mesh_axes,) if isinstance(mesh_axes, str) else tuple(mesh_axes)
      if not used.intersection(axes):
        chosen = mesh_axes
        used.update(axes)
        break
    spec.append(chosen)
  return PartitionSpec(*spec)


def param_shardings(abstract_params: nnx.State, mesh, rules):
  """NamedShardings for an nnx.State of Params from their logical axis metadata."""
  def one(variable):
    axes = variable.get_metadata().get('out_sharding') or (None,) * variable[...].ndim
    return variable.replace(NamedSharding(mesh, logical_to_spec(axes, rules)))
  return jax.tree.map(one, abstract_params, is_leaf=lambda x: isinstance(x, nnx.Variable))


def batch_sharding(mesh, rules) -> NamedSharding:
  return NamedSharding(mesh, logical_to_spec(('batch',), rules))


def num_batch_shards(mesh, rules) -> int:
  """How many ways the batch dimension is split (the global batch must divide by it)."""
  axes = logical_to_spec(('batch',), rules)[0] or ()
  return math.prod(mesh.shape[a] for a in ((axes,) if isinstance(axes, str) else axes))


@contextlib.contextmanager
def activate(mesh, rules):
  """Sets the mesh and rules that `layers.constrain` reads while tracing."""
  with jax.set_mesh(mesh), core_spmd.logical_axis_rules(rules):
    yield


def global_batch(local_batch: dict[str, np.ndarray], sharding: NamedSharding):
  """This process's rows of each array -> global jax.Arrays sharded over the batch."""
  return {k: jax.make_array_from_process_local_data(sharding, v)
          for k, v in local_batch.items()}


def process_rows(features: dict[str, np.ndarray], rows: np.ndarray) -> dict[str, np.ndarray]:
  """This process's share of the global batch made of `rows` of `features`."""
  per_process = len(rows) // jax.process_count()
  start = jax.process_index() * per_process
  return {k: v[rows[start:start + per_process]] for k, v in features.items()}
