"""Writing an export directory without losing what is there.

An export goes into a new or empty directory, or over an earlier export (one that
holds bertjax's manifest, or a Hugging Face model directory), replacing only the files
it writes; anything else (a folder with other files, the workdir it came from, a
parent of that workdir) is refused. The files are staged in a sibling directory and
moved into place one by one; the manifest, written first as incomplete and last as
complete, tells a cut-off export from a whole one. Files get the user's normal
permissions (umask), so others can read a shared model.
"""
from __future__ import annotations

import json
import os
import time
import uuid

from etils import epath

from bertjax import storage
from bertjax.errors import UserError

MANIFEST = 'bertjax_export.json'
# What makes a directory a Hugging Face model directory that an export may replace.
_HF_MARKERS = ('config.json',)
_HF_WEIGHTS = ('model.safetensors', 'pytorch_model.bin')


def _inside(child: epath.Path, parent: epath.Path) -> bool:
  c, p = os.fspath(child).rstrip('/'), os.fspath(parent).rstrip('/')
  return c == p or c.startswith(p + '/')


def read_manifest(directory) -> dict | None:
  path = epath.Path(directory) / MANIFEST
  if not path.exists():
    return None
  try:
    return json.loads(path.read_text())
  except json.JSONDecodeError:
    return {'complete': False, 'files': []}


def check_complete(directory) -> None:
  """Refuses a directory whose export was cut off mid-write."""
  manifest = read_manifest(directory)
  if manifest is not None and not manifest.get('complete'):
    raise UserError(f'{directory} holds an export that was cut off mid-write; export it '
                    'again (the same `bertjax export` command replaces it)')


def check_target(out, *, workdir=None) -> epath.Path:
  """The export target, if writing there loses nothing; else one line saying why."""
  target = storage.as_path(out)
  if workdir is not None:
    source = storage.as_path(workdir)
    if _inside(source, target):
      what = 'the workdir itself' if os.fspath(source) == os.fspath(target) else (
          f'a parent of the workdir {workdir}')
      raise UserError(f'--out {out} is {what}; exporting there would mix the export with '
                      'the run\'s files: choose a new directory, e.g. --out '
                      f'{os.fspath(target).rstrip("/")}-export')
  if not target.exists():
    return target
  if not target.is_dir():
    raise UserError(f'--out {out} is a file; choose a directory')
  names = sorted(p.name for p in target.iterdir())
  is_export = MANIFEST in names or (all(m in names for m in _HF_MARKERS)
                                    and any(w in names for w in _HF_WEIGHTS))
  if names and not is_export:
    shown = ', '.join(names[:5]) + (f' and {len(names) - 5} more' if len(names) > 5 else '')
    raise UserError(f'--out {out} already holds other files ({shown}); an export goes into '
                    'a new or empty directory or over an earlier export: choose another --out')
  return target


def write(out, files: dict[str, bytes], *, workdir=None, about: dict | None = None) -> str:
  """Writes `files` (name -> content) into `out` as described above; returns `out`."""
  target = check_target(out, workdir=workdir)
  previous = read_manifest(target) if target.exists() else None
  stage = target.parent / f'.{target.name}.export-{uuid.uuid4().hex[:8]}'
  try:
    target.parent.mkdir(parents=True, exist_ok=True)
    stage.mkdir()
    for name, content in files.items():
      (stage / name).write_bytes(content)
    target.mkdir(exist_ok=True)
    manifest = dict(format='bertjax-export', files=sorted(files), written=time.time(),
                    **(about or {}))
    storage.write_atomic(target / MANIFEST, json.dumps({**manifest, 'complete': False}))
    for name in files:
      (stage / name).replace(target / name)
    for name in (previous or {}).get('files', ()):
      if name not in files and (target / name).exists():
        (target / name).unlink()  # written by the earlier export, not part of this one
    storage.write_atomic(target / MANIFEST,
                           json.dumps({**manifest, 'complete': True}, indent=2))
  except OSError as e:
    raise UserError(f'cannot write the export to {out}: {e.strerror or e}; fix that and '
                    'run the same command again (files other than the export\'s own '
                    'are untouched)') from None
  finally:
    if stage.exists():
      stage.rmtree()
  return os.fspath(target)
