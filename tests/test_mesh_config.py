"""`mesh.rules` and `mesh.slices` from the config: rules override the defaults by
logical name, bad names are one line, and a multi-slice mesh puts data parallelism
across slices (fake devices given a slice_index)."""
import os

import jax
import numpy as np
import pytest

from bertjax import config_checks, config_lib, sharding
from bertjax.errors import UserError

from conftest import ROOT

QUICKSTART = os.path.join(ROOT, 'experiments', 'quickstart.py')


def config(*overrides):
  return config_lib.apply_overrides(config_lib.load_config(QUICKSTART + ':local'), overrides)


def test_rules_from_the_command_line_come_before_the_defaults():
  c = config('mesh.rules=embed:none,mlp:fsdp,batch:data+fsdp')
  config_checks.validate(c)
  rules = sharding.rules_from_config(c.mesh)
  assert rules[:3] == (('embed', None), ('mlp', 'fsdp'), ('batch', ('data', 'fsdp')))
  assert dict(rules)['vocab'] == 'tensor'  # not named: the default
  assert sharding.logical_to_spec(('embed', 'mlp'), rules) == jax.sharding.PartitionSpec(
      None, 'fsdp')


def test_rules_as_python_pairs():
  c = config("mesh.rules=[('heads', None), ('kv', 'tensor')]")
  assert sharding.rules_from_config(c.mesh)[:2] == (('heads', None), ('kv', 'tensor'))


@pytest.mark.parametrize('rules, message', [
    ('embd:fsdp', "logical axis 'embd'"),
    ('embed:model', "'model', which is not a mesh axis"),
    ('embed', 'is not logical:axis'),
])
def test_bad_rules_are_one_line(rules, message):
  with pytest.raises(UserError, match=message):
    config_checks.validate(config(f'mesh.rules={rules}'))


@pytest.fixture
def two_slices(monkeypatch):
  """The 8 fake CPU devices as two slices of 4 (TPU devices carry slice_index)."""
  device_type = type(jax.devices()[0])
  monkeypatch.setattr(device_type, 'slice_index', property(lambda d: d.id // 4),
                      raising=False)


def test_multi_slice_mesh_is_data_parallel_across_slices(two_slices):
  mesh = sharding.make_mesh(config('mesh.slices=2', 'mesh.fsdp=2').mesh)
  assert dict(mesh.shape) == dict(data=4, fsdp=2, tensor=1)
  slice_of = np.vectorize(lambda d: d.slice_index)(mesh.devices)
  # Within a slice: fsdp and half of data; across slices: only the data axis moves.
  assert (slice_of[:2] == 0).all() and (slice_of[2:] == 1).all()


def test_slices_that_the_devices_do_not_have_are_one_line(two_slices):
  with pytest.raises(UserError, match=r'in 2 slice\(s\); set --config.mesh.slices=2'):
    sharding.make_mesh(config('mesh.slices=4').mesh)
  with pytest.raises(UserError, match='does not divide into mesh.slices'):
    sharding.make_mesh(config('mesh.slices=2', 'mesh.data=1', 'mesh.fsdp=8').mesh)


def test_slices_on_devices_without_slices_are_one_line():
  with pytest.raises(UserError, match='devices that know their slice'):
    sharding.make_mesh(config('mesh.slices=2').mesh)
