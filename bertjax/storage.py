"""Paths that may be local or URLs (`gs://...`), through `etils.epath`.

Every path a user gives (workdir, corpus, init, export) goes through `as_path`, so
`gs://bucket/run` stays a URL instead of becoming `/cwd/gs:/bucket/run`. epath reads
gs:// through fsspec/gcsfs (or tf.io.gfile where TensorFlow is installed); orbax
writes array data through tensorstore, which reads the same credentials.

The few things that differ on object storage live here: a write is atomic per object
(`write_atomic`), a directory is moved object by object (`move`), a directory built
on local disk is uploaded with the file that marks it whole last (`upload_tree`),
files some readers open only from local disk are staged (`local_copy`), globs match
URLs too (`glob`), and a command checks first that it can write where it was told,
ending with one line on how to fix it (`check_writable`).
"""
from __future__ import annotations

import glob as glob_lib
import hashlib
import importlib.util
import json
import os
import re
import shutil
import socket
import urllib.parse
import uuid

from etils import epath

from bertjax.errors import UserError

try:
  import fsspec
except ImportError:  # only gs:// needs it (the gcs extra); local paths do not
  pass
else:
  # A workdir is shared by hosts and by the runs that resume it: a listing gcsfs cached
  # would hide what another process wrote since (a checkpoint, a log segment).
  fsspec.config.conf.setdefault('gcs', {}).setdefault('use_listings_cache', False)

_GCS_ENDPOINT = 'https://storage.googleapis.com'
_WILDCARD = re.compile(r'[*?[]')


def is_url(path: str | os.PathLike) -> bool:
  """True for `scheme://...` paths (gs://, s3://, ...), False for local ones."""
  return '://' in os.fspath(path)


def as_path(path: str | os.PathLike) -> epath.Path:
  """An epath.Path: URLs unchanged, local paths made absolute."""
  path = os.fspath(path)
  return epath.Path(path if is_url(path) else os.path.abspath(os.path.expanduser(path)))


def write_atomic(path: str | os.PathLike, data: str | bytes) -> None:
  """Writes a whole file so that readers see the old content or the new, never part.

  A GCS object upload is atomic already, so URLs are written directly; a local file
  is written beside its target and renamed over it.
  """
  payload = data.encode('utf-8') if isinstance(data, str) else data
  target = as_path(path)
  if is_url(path):
    target.write_bytes(payload)
    return
  tmp = f'{target}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}'
  try:
    with open(tmp, 'wb') as f:
      f.write(payload)
      f.flush()
      os.fsync(f.fileno())
    os.replace(tmp, target)
  except OSError as e:
    raise UserError(f'cannot write {target}: {e.strerror or e}; what was there is kept '
                    'unchanged') from None
  finally:
    if os.path.exists(tmp):
      os.remove(tmp)


def move(src: str | os.PathLike, dst: str | os.PathLike) -> None:
  """Moves a file or directory to `dst` (whose parent is made if missing).

  On object storage a "directory" exists only while it holds objects, which epath's
  rename insists on for the destination's parent; fsspec moves the objects one by one
  (copy, then delete), so a crash mid-move leaves both halves, nothing lost.
  """
  src, dst = os.fspath(src), os.fspath(dst)
  if is_url(src):
    fs, src_path = fsspec.core.url_to_fs(src)
    fs.mv(src_path, fsspec.core.url_to_fs(dst)[1], recursive=True)
    return
  os.makedirs(os.path.dirname(os.path.abspath(dst)), exist_ok=True)
  shutil.move(src, dst)


def glob(pattern: str | os.PathLike) -> list[str]:
  """The paths matching `pattern`, sorted: a local glob (`~` expanded), or a URL whose
  wildcards start after the bucket (`gs://bucket/corpus/*.txt`).

  epath globs a URL from a base directory, so the pattern is split at its first
  component with a wildcard; a URL without wildcards matches itself if it exists.
  """
  pattern = os.fspath(pattern)
  if not is_url(pattern):
    return sorted(glob_lib.glob(os.path.expanduser(pattern)))
  scheme, rest = pattern.split('://', 1)
  parts = rest.split('/')
  first = next((i for i, part in enumerate(parts) if _WILDCARD.search(part)), None)
  if first is None:
    return [pattern] if as_path(pattern).exists() else []
  if first == 0 or any('**' in part for part in parts):
    raise UserError(f'{pattern}: a URL glob takes wildcards after the bucket, one directory '
                    'level each (no "**"), e.g. gs://bucket/corpus/*.txt')
  base = as_path(f'{scheme}://' + '/'.join(parts[:first]))
  try:
    return sorted(os.fspath(p) for p in base.glob('/'.join(parts[first:])))
  except OSError as e:  # a missing bucket, no credentials, no access: one line
    raise UserError(_explain(pattern, scheme, e, action='read')) from None


def upload_tree(local_dir: str | os.PathLike, dst: str | os.PathLike,
                last: tuple[str, ...] = ()) -> None:
  """Copies the files under `local_dir` to `dst` (local or a URL), those named in
  `last` (paths relative to `local_dir`) after all others.

  Object storage has no atomic rename of a directory: a reader that takes a
  directory as whole once its marker file (a manifest) exists must see that file
  only after everything it lists, so a cut-off upload is never taken as whole.
  """
  local_dir, root = os.fspath(local_dir), as_path(dst)
  files = sorted(os.path.relpath(os.path.join(d, f), local_dir)
                 for d, _, names in os.walk(local_dir) for f in names)
  for rel in [f for f in files if f not in last] + [f for f in last if f in files]:
    target = root / rel
    target.parent.mkdir(parents=True, exist_ok=True)
    epath.Path(os.path.join(local_dir, rel)).copy(target, overwrite=True)


def default_cache_dir() -> str:
  base = os.environ.get('XDG_CACHE_HOME') or os.path.join(os.path.expanduser('~'), '.cache')
  return os.path.join(base, 'bertjax', 'staged')


def local_copy(path: str | os.PathLike, cache_dir: str | None = None) -> str:
  """A local path holding `path`'s content: `path` itself when local, else a copy.

  For readers that take only local files (SentencePiece models, array_record
  shards). A file or a whole directory is copied once into
  `cache_dir/KEY/NAME`, where KEY hashes the URL and each object's size and
  generation: a changed object is fetched again, an unchanged one is not. The copy
  is made under a temporary name and renamed, so processes of one host staging the
  same path at once never read a half-written file.
  """
  path = os.fspath(path)
  if not is_url(path):
    return os.fspath(as_path(path))
  fs, root = fsspec.core.url_to_fs(path)
  try:
    info = fs.info(root)
  except FileNotFoundError:
    raise UserError(f'{path} does not exist: check the path') from None
  if info['type'] == 'directory':
    files = fs.find(root, detail=True)
  else:
    files = {root: info}
  signature = sorted((os.path.relpath(name, root), meta.get('size'), _version(meta))
                     for name, meta in files.items())
  key = hashlib.sha256(json.dumps([path, signature]).encode()).hexdigest()[:16]
  cache_dir = cache_dir or default_cache_dir()
  name = os.path.basename(root.rstrip('/')) or 'root'
  staged = os.path.join(cache_dir, key)
  if not os.path.isdir(staged):
    tmp = f'{staged}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}'
    try:
      for remote in files:
        rel = os.path.relpath(remote, root)
        local = os.path.join(tmp, name) if rel == '.' else os.path.join(tmp, name, rel)
        os.makedirs(os.path.dirname(local), exist_ok=True)
        fs.get_file(remote, local)
      if info['type'] == 'directory':
        os.makedirs(os.path.join(tmp, name), exist_ok=True)  # an empty directory
      try:
        os.rename(tmp, staged)
      except OSError:  # another process staged it first: theirs is the same content
        if not os.path.isdir(staged):
          raise
    finally:
      shutil.rmtree(tmp, ignore_errors=True)
  return os.path.join(staged, name)


def _version(meta: dict) -> str | None:
  """The object's version as its store names it (GCS: generation; S3: ETag)."""
  for field in ('generation', 'ETag', 'etag', 'mtime', 'updated'):
    if meta.get(field) is not None:
      return str(meta[field])
  return None


def check_writable(path: str | os.PathLike) -> None:
  """Raises UserError naming the problem and the fix unless `path` can be written.

  Called by a command before it starts work, so a wrong bucket or missing
  credentials end in one line instead of a traceback from a background thread after
  minutes of compilation. Writes and removes one small probe object; nothing that
  was there before is touched.
  """
  path = os.fspath(path)
  target = as_path(path)
  scheme = urllib.parse.urlsplit(path).scheme if is_url(path) else ''
  if scheme in ('gs', 'gcs'):
    _check_gcs_client(path)
    _check_reachable(path, os.environ.get('STORAGE_EMULATOR_HOST') or _GCS_ENDPOINT)
  probe = target / f'.bertjax-write-check-{uuid.uuid4().hex}'
  try:
    target.mkdir(parents=True, exist_ok=True)
    probe.write_bytes(b'')
    probe.unlink()
  except Exception as e:  # pylint: disable=broad-except
    raise UserError(_explain(path, scheme, e)) from None


def _check_gcs_client(path: str) -> None:
  """epath opens gs:// with tf.io.gfile where TensorFlow is installed, else gcsfs."""
  if importlib.util.find_spec('gcsfs') is None and importlib.util.find_spec('tensorflow') is None:
    raise UserError(f'{path}: reading and writing gs:// needs gcsfs: '
                    "pip install 'bertjax[gcs]'")


def _check_reachable(path: str, endpoint: str, timeout: float = 10.0) -> None:
  """One TCP connection to the storage endpoint: gcsfs would retry an unreachable
  one for about 30 s before failing, and then say only 'Cannot connect'."""
  url = urllib.parse.urlsplit(endpoint if '://' in endpoint else f'http://{endpoint}')
  port = url.port or (443 if url.scheme == 'https' else 80)
  try:
    socket.create_connection((url.hostname, port), timeout=timeout).close()
  except OSError as e:
    via = ' (set by STORAGE_EMULATOR_HOST)' if os.environ.get('STORAGE_EMULATOR_HOST') else ''
    raise UserError(f'{path}: cannot reach the storage endpoint {url.hostname}:{port}{via}: '
                    f'{e.strerror or e}; check the network'
                    f'{", or unset STORAGE_EMULATOR_HOST / start the emulator" if via else ""}'
                    ) from None


def _explain(path: str, scheme: str, e: Exception, action: str = 'write') -> str:
  """The one line for an exception the storage libraries raised on `path` (`action`
  names what was tried: 'write' or 'read').

  gcsfs raises FileNotFoundError when the bucket does not exist (an upload answered
  404), its HttpError with code 401 when no credentials were found (it then falls
  back to anonymous access), OSError('Forbidden: ...') on 403, and google-auth's
  DefaultCredentialsError / RefreshError when credentials exist but do not work.
  """
  bucket = urllib.parse.urlsplit(path).netloc if scheme else ''
  code = getattr(e, 'code', None)
  lines = str(e).strip().splitlines() or [type(e).__name__]
  # gcsfs's 403 reads 'Forbidden: URL' then GCS's reason: who lacks which permission
  text = lines[-1] if lines[0].startswith('Forbidden') else lines[0]
  auth_fix = ('run `gcloud auth application-default login` or set '
              'GOOGLE_APPLICATION_CREDENTIALS to a service-account key file; on a TPU/GCE VM '
              "give the VM's service account access to the bucket")
  if scheme in ('gs', 'gcs'):
    if isinstance(e, FileNotFoundError):
      return (f'{path}: bucket gs://{bucket} does not exist: create it '
              f'(gcloud storage buckets create gs://{bucket}) or fix the path')
    if code in (401, '401') or type(e).__name__ in ('DefaultCredentialsError', 'RefreshError'):
      return f'{path}: no usable Google Cloud credentials ({text}): {auth_fix}'
    if code in (403, '403') or lines[0].startswith('Forbidden'):
      return (f'{path}: the credentials in use may not {action} '
              f'{"to" if action == "write" else "from"} gs://{bucket} ({text}): '
              f'grant them roles/storage.objectAdmin on the bucket, or {auth_fix}')
  if isinstance(e, PermissionError):
    return f'{path}: permission denied ({text}): choose a directory you can write to'
  if isinstance(e, ImportError):
    return f'{path}: {text}: install the filesystem package this URL scheme needs'
  return f'{path}: cannot {action} there ({type(e).__name__}: {text}): check the path'
