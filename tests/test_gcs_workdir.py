"""A `gs://` workdir end to end against the GCS emulator (see gcs_emulator.py):
`bertjax train` killed with SIGKILL after its first checkpoint and resumed bitwise,
`bertjax export` to gs://, `from_pretrained` of that export; the run lock on gs://;
the one-line refusals of a missing bucket and an unreachable endpoint; `bertjax data
prepare --out gs://` (manifest last, a cut-off upload replaced) and the staged readers
(prepared corpora, embedded tasks)."""
from __future__ import annotations

# First: it keeps google-auth off the GCE metadata server, which it reads on import.
from gcs_emulator import gcs_bucket  # noqa: F401  pylint: disable=unused-import

import os
import signal
import socket
import subprocess
import sys
import time
import uuid

import numpy as np
import pytest
from etils import epath

import bertjax
from bertjax import jsonl_log, run_lock, weights
from bertjax.data import embedded_tasks, prepare, prepared
from bertjax.errors import UserError

from conftest import ROOT

QUICKSTART = os.path.join(ROOT, 'experiments', 'quickstart.py') + ':local'
# Long enough that the run is still training when it is killed after step 10.
STEPS = ['--config.train.steps=60', '--config.train.checkpoint_every=10']


@pytest.fixture
def root(gcs_bucket):  # noqa: F811  pylint: disable=redefined-outer-name
  return f'{gcs_bucket}/{uuid.uuid4().hex[:8]}'


def _bertjax(*args, env=None, timeout=600):
  return subprocess.run([sys.executable, '-m', 'bertjax', *args], capture_output=True,
                        text=True, timeout=timeout, env=env)


def _start(*args, log):
  """`bertjax ARGS` in the background, its output into the file `log`."""
  with open(log, 'w', encoding='utf-8') as f:
    return subprocess.Popen([sys.executable, '-m', 'bertjax', *args], stdout=f,
                            stderr=subprocess.STDOUT)


def _committed(checkpoints: epath.Path) -> list[int]:
  if not checkpoints.exists():
    return []
  return sorted(int(p.name) for p in checkpoints.iterdir()
                if p.name.isdigit() and (p / 'commit_success.txt').exists())


def test_train_killed_resumes_bitwise_then_exports_and_loads_from_gcs(root, tmp_path):
  # The uninterrupted reference, on local disk, alongside the run that is killed.
  reference = str(tmp_path / 'reference')
  uninterrupted = _start('train', '--config', QUICKSTART, '--workdir', reference, *STEPS,
                         log=tmp_path / 'reference.log')

  workdir = f'{root}/run'
  checkpoints = epath.Path(workdir) / 'checkpoints'
  first = _start('train', '--config', QUICKSTART, '--workdir', workdir, *STEPS,
                 log=tmp_path / 'killed.log')
  try:
    deadline = time.monotonic() + 300
    while not _committed(checkpoints):
      assert first.poll() is None, (tmp_path / 'killed.log').read_text()
      assert time.monotonic() < deadline, 'no checkpoint within 300 s'
      time.sleep(0.1)
    first.send_signal(signal.SIGKILL)
  finally:
    first.kill()
    first.wait()
  killed_at = _committed(checkpoints)
  assert killed_at and killed_at[-1] < 60, killed_at  # it was killed mid-run
  print(f'killed after step {killed_at[-1]}')
  assert epath.Path(f'{workdir}/.lock').exists()  # the dead run's lock, taken over next

  resumed = _bertjax('train', '--config', QUICKSTART, '--workdir', workdir, *STEPS)
  assert resumed.returncode == 0, resumed.stderr
  assert f'resumed from step {killed_at[-1]} in {workdir}' in resumed.stdout
  assert _committed(checkpoints)[-1] == 60
  assert not epath.Path(f'{workdir}/.lock').exists()

  assert uninterrupted.wait(timeout=600) == 0, (tmp_path / 'reference.log').read_text()
  ours, theirs = weights.open_weights(workdir), weights.open_weights(reference)
  assert ours.step == theirs.step == 60
  assert ours.tensors.keys() == theirs.tensors.keys()
  for name, value in theirs.tensors.items():
    np.testing.assert_array_equal(ours.tensors[name], value, err_msg=name)

  # Metrics: segments on GCS (it cannot append); every logged step, the resumed
  # ones again after the kill; TensorBoard events beside them.
  logged = sorted({r['step'] for r in jsonl_log.read(workdir) if 'loss' in r})
  assert logged == list(range(5, 61, 5))
  assert not epath.Path(f'{workdir}/metrics.jsonl').exists()
  assert list(epath.Path(f'{workdir}/tensorboard').glob('events.out.tfevents.*'))

  export = f'{root}/export'
  exported = _bertjax('export', '--workdir', workdir, '--out', export)
  assert exported.returncode == 0, exported.stderr
  model, tokenizer = bertjax.from_pretrained(export)
  assert model.kind == 'pretraining'
  embeddings = np.asarray(model.params['bert']['embeddings']['word_embeddings']['embedding'])
  vocab = theirs.model_cfg.vocab_size
  np.testing.assert_array_equal(embeddings[:vocab],
                                theirs.tensors['bert.embeddings.word_embeddings.weight'])
  out = model(**tokenizer(['the [MASK] lives in a city .']))
  assert out.prediction_logits.shape[-1] == vocab


def test_a_second_run_on_a_held_gcs_workdir_is_refused(root):
  workdir = f'{root}/run'
  with run_lock.RunLock(workdir, command='bertjax train --workdir first'):
    second = _bertjax('train', '--config', QUICKSTART, '--workdir', workdir)
    assert run_lock.read_holder(workdir).command == 'bertjax train --workdir first'
  assert second.returncode == 2
  line = second.stderr.strip()
  assert line.startswith(f'bertjax: error: {workdir} is in use by `bertjax train --workdir '
                         'first`') and '\n' not in line
  assert not epath.Path(f'{workdir}/.lock').exists()  # released by its holder
  assert not epath.Path(f'{workdir}/checkpoints').exists()  # the second wrote nothing


def test_gcs_lock_refuses_takes_over_stale_and_notices_being_broken(root, monkeypatch, caplog):
  workdir = f'{root}/locked'
  with run_lock.RunLock(workdir) as lock:
    with pytest.raises(UserError, match='is in use by'):
      with run_lock.RunLock(workdir):
        pass
    assert run_lock.read_holder(workdir).run_id == lock.holder.run_id
  assert run_lock.read_holder(workdir) is None

  # A holder on another host whose heartbeat expired is taken over.
  stale = run_lock.Holder('gone', 'other-host', 1, 'bertjax train', 0.0, 0.0)
  run_lock._lock_file(workdir).create(  # pylint: disable=protected-access
      run_lock.json.dumps(run_lock.dataclasses.asdict(stale)).encode())
  with run_lock.RunLock(workdir) as lock:
    assert run_lock.read_holder(workdir).run_id == lock.holder.run_id
  assert 'taking over' in caplog.text

  # The heartbeat rewrites the lock only while it is still this run's.
  monkeypatch.setattr(run_lock, 'HEARTBEAT_SECONDS', 0.05)
  with run_lock.RunLock(workdir) as lock:
    first = run_lock.read_holder(workdir).heartbeat
    deadline = time.monotonic() + 30
    while run_lock.read_holder(workdir).heartbeat == first:
      assert time.monotonic() < deadline
      time.sleep(0.05)
    assert run_lock.break_lock(workdir).run_id == lock.holder.run_id
    run_lock._lock_file(workdir).create(  # pylint: disable=protected-access
        run_lock.json.dumps(run_lock.dataclasses.asdict(stale)).encode())
    while lock._thread.is_alive():  # pylint: disable=protected-access
      time.sleep(0.05)
  assert run_lock.read_holder(workdir).run_id == 'gone'  # not overwritten, not removed
  assert 'was broken by another command' in caplog.text


def test_a_missing_bucket_is_one_line_and_exit_2(gcs_bucket):  # noqa: F811
  bucket = f'no-such-{uuid.uuid4().hex[:8]}'
  result = _bertjax('train', '--config', QUICKSTART, '--workdir', f'gs://{bucket}/run')
  assert result.returncode == 2
  line = result.stderr.strip()
  assert line == (f'bertjax: error: gs://{bucket}/run: bucket gs://{bucket} does not exist: '
                  f'create it (gcloud storage buckets create gs://{bucket}) or fix the path')


def test_an_unreachable_endpoint_is_one_line_and_exit_2(gcs_bucket):  # noqa: F811
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    port = s.getsockname()[1]
  env = dict(os.environ, STORAGE_EMULATOR_HOST=f'http://127.0.0.1:{port}')
  result = _bertjax('train', '--config', QUICKSTART, '--workdir', f'{gcs_bucket}/run', env=env)
  assert result.returncode == 2
  line = result.stderr.strip()
  assert line.startswith(f'bertjax: error: {gcs_bucket}/run: cannot reach the storage endpoint '
                         f'127.0.0.1:{port} (set by STORAGE_EMULATOR_HOST)') and '\n' not in line


def _spy_uploads(monkeypatch, fail_on: str | None = None) -> list[str]:
  """The destinations storage.upload_tree copies to, in order; copying to a file named
  `fail_on` raises instead, as a process killed mid-upload stops."""
  copied = []
  path_class = type(epath.Path('/'))
  real_copy = path_class.copy

  def copy(self, dst, overwrite=False):
    if fail_on and os.path.basename(os.fspath(dst)) == fail_on:
      raise KeyboardInterrupt('cut off')
    copied.append(os.fspath(dst))
    return real_copy(self, dst, overwrite=overwrite)

  monkeypatch.setattr(path_class, 'copy', copy)
  return copied


def test_data_prepare_writes_to_gcs_manifest_last_and_the_corpus_is_staged_and_read(
    root, tmp_path, monkeypatch):
  from bertjax.cli import main  # pylint: disable=import-outside-toplevel
  from bertjax.data import corpus  # pylint: disable=import-outside-toplevel
  text = '\n\n'.join(' '.join(d) for d in corpus.embedded_documents(60, seed=1))
  (tmp_path / 'corpus.txt').write_text(text)
  epath.Path(f'{root}/corpus/part-0.txt').write_text(text)
  tok = f'{root}/tok'
  assert main(['data', 'tokenizer', '--corpus', f'{root}/corpus/*.txt', '--out', tok,
               '--vocab_size', '200']) == 0
  flags = ['--tokenizer', tok, '--eval_fraction', '0.2', '--seq_len', '32']
  local = str(tmp_path / 'prepared')
  assert main(['data', 'prepare', '--corpus', str(tmp_path / 'corpus.txt'), '--out', local,
               *flags]) == 0

  remote = f'{root}/prepared'
  uploads = _spy_uploads(monkeypatch)
  assert main(['data', 'prepare', '--corpus', f'{root}/corpus/*.txt', '--out', remote,
               *flags]) == 0
  assert len(uploads) > 4 and uploads[-1] == f'{remote}/{prepared.MANIFEST}'
  assert not (epath.Path(remote) / prepare.UPLOADING).exists()
  assert prepared.read_manifest(remote)['corpus'] == f'{root}/corpus/*.txt'

  tok_lib = prepared.prepared_tokenizer(remote)
  for split in ('train', 'eval'):
    ours = prepared.load_prepared(remote, split, tok_lib)
    theirs = prepared.load_prepared(local, split)
    assert len(ours) == len(theirs) > 0
    assert all(np.array_equal(a, b) for x, y in zip(ours, theirs) for a, b in zip(x, y))
  settings = prepared.read_manifest(local)['instances']['settings']
  ours, theirs = prepared.stored_instances(remote, settings), prepared.stored_instances(
      local, settings)
  assert len(ours[0]) == len(theirs[0]) > 0 and ours[2] == theirs[2]


def test_a_cut_off_upload_is_no_prepared_corpus_and_a_rerun_replaces_it(root, tmp_path,
                                                                        monkeypatch):
  from bertjax.data import corpus, tokenizer  # pylint: disable=import-outside-toplevel
  text = tmp_path / 'corpus.txt'
  text.write_text('\n\n'.join(' '.join(d) for d in corpus.embedded_documents(40, seed=2)))
  tokenizer.train_sentencepiece((line for line in text.read_text().splitlines()),
                                str(tmp_path / 'tok' / 'spm.model'), vocab_size=150)
  remote = f'{root}/prepared'
  first = prepare.prepare(str(text), remote, str(tmp_path / 'tok'))

  with monkeypatch.context() as m:  # the rerun is killed before its manifest is uploaded
    _spy_uploads(m, fail_on=prepared.MANIFEST)
    with pytest.raises(KeyboardInterrupt):
      prepare.prepare(str(text), remote, str(tmp_path / 'tok'), eval_fraction=0.5)
  assert not prepared.is_prepared(remote)  # the earlier manifest went first
  assert (epath.Path(remote) / prepare.UPLOADING).exists()
  with pytest.raises(UserError, match='is not a prepared corpus'):
    prepared.load_prepared(remote)

  again = prepare.prepare(str(text), remote, str(tmp_path / 'tok'), eval_fraction=0.5)
  assert prepared.read_manifest(remote) == again
  assert again['splits']['train']['documents'] < first['splits']['train']['documents']
  assert len(prepared.load_prepared(remote, 'eval')) == again['splits']['eval']['documents']
  assert not (epath.Path(remote) / prepare.UPLOADING).exists()

  other = epath.Path(f'{root}/other')
  other.mkdir(parents=True, exist_ok=True)
  (other / 'notes.txt').write_text('mine')
  with pytest.raises(UserError, match='exists and is not a prepared corpus'):
    prepare.prepare(str(text), os.fspath(other), str(tmp_path / 'tok'))
  assert [p.name for p in other.iterdir()] == ['notes.txt']

  bucket = f'no-such-{uuid.uuid4().hex[:8]}'
  with pytest.raises(UserError, match=f'bucket gs://{bucket} does not exist'):
    prepare.prepare(str(text), f'gs://{bucket}/prepared', str(tmp_path / 'tok'))


def test_embedded_tasks_for_a_gcs_workdir_are_written_where_the_readers_can_open_them(
    root, tmp_path, monkeypatch):
  monkeypatch.setenv('XDG_CACHE_HOME', str(tmp_path / 'cache'))
  from ml_collections import ConfigDict  # pylint: disable=import-outside-toplevel
  paths = []
  for _ in range(2):  # a resumed run: the same files at the same path
    task = ConfigDict(dict(kind='classify', train='embedded', eval=''))
    embedded_tasks.materialize(task, f'{root}/run/data', seed=3)
    paths.append((task.train, task.eval))
  assert paths[0] == paths[1]
  assert paths[0][0].startswith(str(tmp_path / 'cache')) and os.path.isfile(paths[0][0])
  with open(paths[0][0], encoding='utf-8') as f:
    assert f.readline() == 'sentence\tlabel\n'


def test_a_partial_and_an_unreadable_checkpoint_on_gcs(root, caplog):
  """On GCS a step without commit_success.txt is a save a kill cut off: skipped with a
  message; a committed step that cannot be read is moved to checkpoints_unreadable/."""
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  from bertjax import checkpoint  # pylint: disable=import-outside-toplevel
  state = lambda v: {'params': {'w': jnp.full(3, v)}, 'step': jnp.int32(v)}  # noqa: E731
  with checkpoint.manager(root, keep=5) as mngr:
    for step in (1, 2):
      checkpoint.save(mngr, step, state(float(step)))
    checkpoint.wait(mngr)
  damaged = [*(epath.Path(root) / 'checkpoints' / '2' / 'state').glob('d/*'),
             *(epath.Path(root) / 'checkpoints' / '2' / 'state').glob('ocdbt.process_*/d/*')]
  assert damaged
  for data in damaged:
    data.write_bytes(b'garbage')  # the array data of step 2
  (epath.Path(root) / 'checkpoints' / '3' / 'state' / '_METADATA').write_text('{}')  # cut off

  with checkpoint.manager(root, keep=5) as mngr:
    restored = checkpoint.restore(mngr, state(0.0))
  assert int(restored['step']) == 1
  np.testing.assert_array_equal(restored['params']['w'], [1.0, 1.0, 1.0])
  assert 'skipping the partly written checkpoint' in caplog.text and '/checkpoints/3' in caplog.text
  assert _committed(epath.Path(root) / 'checkpoints') == [1]
  assert [p.name for p in (epath.Path(root) / 'checkpoints_unreadable').iterdir()] == ['2']
