import os
import re

import pytest

from bertjax import config_lib
from bertjax.cli import main
from bertjax.errors import UserError

from conftest import ROOT

QUICKSTART = os.path.join(ROOT, 'experiments', 'quickstart.py')


def test_quickstart_config_is_locked_and_local_variant_shrinks_it():
  full = config_lib.load_config(QUICKSTART)
  local = config_lib.load_config(QUICKSTART + ':local')
  assert local.train.steps < full.train.steps
  assert local.data.embedded_documents < full.data.embedded_documents
  with pytest.raises(AttributeError):
    full.train.new_key = 1  # locked: no new keys


def test_overrides_coerce_types():
  c = config_lib.load_config(QUICKSTART)
  config_lib.apply_overrides(c, ['train.steps=7', 'optim.learning_rate=2e-3',
                                 'data.masking.kind=token', 'optim.weight_decay=0'])
  assert c.train.steps == 7 and isinstance(c.train.steps, int)
  assert c.optim.learning_rate == 2e-3
  assert c.optim.weight_decay == 0.0 and isinstance(c.optim.weight_decay, float)


@pytest.mark.parametrize('override, message', [
    ('train.stepz=3', "train has no 'stepz' (did you mean 'steps'?)"),
    ('trian.steps=3', "the config has no 'trian' (did you mean 'train'?)"),
    ('train.steps=abc', "'train.steps' is int; got 'abc'"),
    ('train.steps=1.5', "'train.steps' is int; got '1.5'"),
    ('train=3', "'train' is a group"),
])
def test_bad_overrides_name_the_key(override, message):
  c = config_lib.load_config(QUICKSTART)
  with pytest.raises(UserError, match=re.escape(message)):
    config_lib.apply_overrides(c, [override])


def test_unknown_config_arg_is_an_error():
  with pytest.raises(UserError, match="unknown config argument 'locl'"):
    config_lib.load_config(QUICKSTART + ':locl')


def test_cli_reports_bad_input_in_one_line(capsys, tmp_path):
  code = main(['train', '--config', QUICKSTART, '--workdir', str(tmp_path),
               '--config.train.stepz=3'])
  err = capsys.readouterr().err
  assert code == 2
  assert err.startswith('bertjax: error: unknown config key') and 'Traceback' not in err
  code = main(['train', '--config', 'experiments/missing.py', '--workdir', str(tmp_path)])
  assert code == 2 and 'not found' in capsys.readouterr().err
