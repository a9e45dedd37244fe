"""The workdir contract: creating it, and which configs may go on in it."""
import json

import pytest
from etils import epath

from bertjax import config_lib, workdir
from bertjax.errors import UserError


def test_a_file_given_as_workdir_is_one_line(tmp_path):
  (tmp_path / 'notes.txt').write_text('mine')
  with pytest.raises(UserError, match='is a file, not a directory'):
    workdir.create(tmp_path / 'notes.txt')
  assert (tmp_path / 'notes.txt').read_text() == 'mine'


def test_a_workdir_that_cannot_be_written_is_one_line(tmp_path, monkeypatch):
  path_class = type(epath.Path(tmp_path))

  def read_only(self, *args, **kwargs):
    raise OSError(30, 'Read-only file system')

  monkeypatch.setattr(path_class, 'write_text', read_only)
  with pytest.raises(UserError, match='cannot write to --workdir .*: Read-only file system'):
    workdir.create(tmp_path / 'run')


def test_a_pretraining_config_on_a_finetuned_workdir_is_refused(tmp_path):
  (tmp_path / 'config.json').write_text(json.dumps({'task': {'kind': 'classify'}, 'init': 'x'}))
  config = config_lib.pretrain_defaults('tiny')
  with pytest.raises(UserError, match='is a fine-tuning workdir but the config is a '
                                      'pre-training one'):
    workdir.check_config(config, tmp_path, ())
