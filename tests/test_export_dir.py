"""Exports never delete what they did not write, and a cut-off one is never taken
for a whole one."""
import json
import os
import stat

import pytest
from etils import epath

from bertjax import export_dir
from bertjax.errors import UserError

FILES = {'config.json': b'{}', 'model.safetensors': b'weights'}


def test_writes_a_new_directory_with_normal_permissions(tmp_path):
  old = os.umask(0o022)
  try:
    out = export_dir.write(tmp_path / 'new' / 'export', FILES)
  finally:
    os.umask(old)
  names = sorted(os.listdir(out))
  assert names == ['bertjax_export.json', 'config.json', 'model.safetensors']
  assert stat.S_IMODE(os.stat(out).st_mode) == 0o755
  assert stat.S_IMODE(os.stat(os.path.join(out, 'model.safetensors')).st_mode) == 0o644
  assert json.load(open(os.path.join(out, 'bertjax_export.json')))['complete'] is True
  assert not [n for n in os.listdir(tmp_path / 'new') if n.startswith('.')]  # no staging left


@pytest.mark.parametrize('existing', [{'notes.txt': 'mine'}, {'run/config.json': '{}'}])
def test_refuses_a_directory_with_other_files(tmp_path, existing):
  for name, text in existing.items():
    (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
    (tmp_path / name).write_text(text)
  with pytest.raises(UserError, match='already holds other files'):
    export_dir.write(tmp_path, FILES)
  for name, text in existing.items():
    assert (tmp_path / name).read_text() == text


def test_refuses_the_workdir_and_its_parents(tmp_path):
  workdir = tmp_path / 'runs' / 'a'
  workdir.mkdir(parents=True)
  with pytest.raises(UserError, match='is the workdir itself'):
    export_dir.check_target(workdir, workdir=workdir)
  with pytest.raises(UserError, match='is a parent of the workdir'):
    export_dir.check_target(tmp_path / 'runs', workdir=workdir)
  with pytest.raises(UserError, match='parent of the workdir'):
    export_dir.check_target(tmp_path, workdir=workdir)
  export_dir.check_target(workdir / 'export', workdir=workdir)  # inside it is fine
  export_dir.check_target(tmp_path / 'runs' / 'ab', workdir=workdir)  # a sibling too


def test_over_an_earlier_export_replaces_only_its_own_files(tmp_path):
  export_dir.write(tmp_path, {**FILES, 'README.md': b'card', 'vocab.txt': b'a'})
  (tmp_path / 'NOTES.md').write_text('kept')
  export_dir.write(tmp_path, {**FILES, 'model.safetensors': b'new', 'spiece.model': b's'})
  assert (tmp_path / 'model.safetensors').read_bytes() == b'new'
  assert (tmp_path / 'NOTES.md').read_text() == 'kept'
  # Files the earlier export wrote and this one does not are gone, so the two don't mix.
  assert not (tmp_path / 'vocab.txt').exists() and not (tmp_path / 'README.md').exists()


def test_over_a_hugging_face_directory_keeps_its_other_files(tmp_path):
  (tmp_path / 'config.json').write_text('{"old": 1}')
  (tmp_path / 'model.safetensors').write_bytes(b'old')
  (tmp_path / 'training_args.bin').write_bytes(b'theirs')
  export_dir.write(tmp_path, FILES)
  assert (tmp_path / 'model.safetensors').read_bytes() == b'weights'
  assert (tmp_path / 'training_args.bin').read_bytes() == b'theirs'


def test_a_cut_off_export_is_marked_incomplete(tmp_path, monkeypatch):
  moved = []
  path_class = type(epath.Path(tmp_path))
  real_replace = path_class.replace

  def failing_replace(self, target):
    if moved:
      raise OSError(28, 'No space left on device')
    moved.append(target)
    return real_replace(self, target)

  monkeypatch.setattr(path_class, 'replace', failing_replace)
  with pytest.raises(UserError, match='No space left on device; fix that and run the same'):
    export_dir.write(tmp_path / 'out', FILES)
  with pytest.raises(UserError, match='cut off mid-write'):
    export_dir.check_complete(tmp_path / 'out')
  monkeypatch.setattr(path_class, 'replace', real_replace)
  export_dir.write(tmp_path / 'out', FILES)  # the same command finishes it
  export_dir.check_complete(tmp_path / 'out')
  assert not [n for n in os.listdir(tmp_path) if n.startswith('.')]
