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
from jax.experimental import mesh_utils
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
LOGICAL_AXES = tuple(name for name, _ in DEFAULT_RULES)


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
  """The mesh of `mesh_cfg`; with `slices` > 1 (TPU multi-slice) the data axis spans
  the slices (data parallelism over the slow links between them) while fsdp, tensor
  and the rest of data stay within each slice."""
  shape = mesh_shape(mesh_cfg, jax.device_count())
  slices = int(mesh_cfg.get('slices', 1))
  if slices > 1:
    return _multi_slice_mesh(shape, slices)
  if math.prod(shape) < jax.device_count():
    logging.warning('mesh %s uses %d of the %d devices', dict(zip(MESH_AXES, shape)),
                    math.prod(shape), jax.device_count())
  return jax.make_mesh(shape, MESH_AXES, devices=jax.devices()[:math.prod(shape)],
                       axis_types=(jax.sharding.AxisType.Auto,) * len(MESH_AXES))


def _multi_slice_mesh(shape: tuple[int, ...], slices: int) -> jax.sharding.Mesh:
  devices = jax.devices()
  named = dict(zip(MESH_AXES, shape))
  if shape[0] % slices:
    raise UserError(f'mesh.data={shape[0]} does not divide into mesh.slices={slices} (data '
                    f'parallelism spans the slices); use a multiple of {slices}')
  if math.prod(shape) != len(devices):
    raise UserError(f'mesh {named} over {slices} slices must use all {len(devices)} devices; '
                    'set --config.mesh.data=-1')
  if not all(hasattr(d, 'slice_index') for d in devices):
    raise UserError(f'mesh.slices={slices} needs devices that know their slice (TPU '
                    f'multi-slice); these {devices[0].platform} devices do not: set '
                    '--config.mesh.slices=1')
  found = len({d.slice_index for d in devices})
  if found != slices:
    raise UserError(f'mesh.slices={slices}, but the devices are in {found} slice(s); set '
                    f'--config.mesh.slices={found}')
  per_slice = (shape[0] // slices, *shape[1:])
  grid = mesh_utils.create_hybrid_device_mesh(per_slice, (slices, 1, 1), devices)
  return jax.sharding.Mesh(grid, MESH_AXES,
                           axis_types=(jax.sharding.AxisType.Auto,) * len(MESH_AXES))


def rules_from_config(mesh_cfg) -> tuple:
  """`mesh.rules` (tried first) followed by the defaults for the logical axes it does
  not name. A rule is a pair (logical, mesh axis or axes or None) or a string
  'logical:axis' ('embed:fsdp', 'mlp:none', 'batch:data+fsdp')."""
  given = tuple(_rule(r) for r in (mesh_cfg.get('rules', None) or ()))
  named = {name for name, _ in given}
  return given + tuple(r for r in DEFAULT_RULES if r[0] not in named)


def _rule(rule) -> tuple:
  if isinstance(rule, str):
    name, colon, axes = rule.partition(':')
    if not colon:
      raise UserError(f'mesh.rules entry {rule!r} is not logical:axis; write e.g. '
                      '--config.mesh.rules=embed:fsdp,mlp:tensor')
    parts = tuple(a.strip() for a in axes.split('+'))
    rule = (name.strip(), None if parts in (('none',), ('None',), ('',)) else
            parts[0] if len(parts) == 1 else parts)
  if not isinstance(rule, (tuple, list)) or len(rule) != 2:
    raise UserError(f'mesh.rules entry {rule!r} is not a (logical axis, mesh axis) pair; '
                    'write e.g. --config.mesh.rules=embed:fsdp,mlp:tensor')
  name, axes = rule
  axes = tuple(axes) if isinstance(axes, list) else axes
  if name not in LOGICAL_AXES:
    raise UserError(f'mesh.rules names the logical axis {name!r}; the model has '
                    f'{", ".join(LOGICAL_AXES)}')
  for axis in (() if axes is None else (axes,) if isinstance(axes, str) else axes):
    if axis not in MESH_AXES:
      raise UserError(f'mesh.rules maps {name!r} to {axis!r}, which is not a mesh axis; '
                      f'use {", ".join(MESH_AXES)} or none')
  return name, axes


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
  return math.prod(mesh.shape[a] for a in batch_axes(mesh, rules))


def batch_axes(mesh, rules) -> tuple[str, ...]:
  """The mesh axes the batch dimension is split over."""
  axes = logical_to_spec(('batch',), rules)[0] or ()
  return (axes,) if isinstance(axes, str) else tuple(axes)


def only_axes(spec: PartitionSpec, keep) -> PartitionSpec:
  """`spec` with every mesh axis not in `keep` dropped."""
  return PartitionSpec(*(_kept(axes, lambda a: a in keep) for axes in spec))


def without_axes(rules, drop) -> tuple:
  """`rules` with the mesh axes in `drop` taken out (inside a shard_map that makes
  them manual, activations may name only the others)."""
  return tuple((name, _kept(axes, lambda a: a not in drop)) for name, axes in rules)


def _kept(axes, keep):
  """The mesh axes (None, one or a tuple) of `axes` that `keep` accepts, in that form."""
  kept = tuple(a for a in ((axes,) if isinstance(axes, str) else axes or ()) if keep(a))
  return None if not kept else kept[0] if len(kept) == 1 else kept


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
