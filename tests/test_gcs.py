"""gs:// workdirs against a real GCS emulator (fake-gcs-server, see gcs_emulator.py):
epath, orbax + grain checkpoints, the JAX compilation cache, TensorBoard events,
staged files, the metrics log, atomic writes, and the one-line errors for a storage
that cannot be written."""
from __future__ import annotations

# First: it keeps google-auth off the GCE metadata server, which it reads on import.
from gcs_emulator import gcs_bucket  # noqa: F401  pylint: disable=unused-import

import http.server
import json
import os
import socket
import struct
import subprocess
import sys
import threading
import uuid

import grain
import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest
from etils import epath

from bertjax import jsonl_log, storage
from bertjax.errors import UserError
from bertjax.tensorboard_sink import TensorBoardSink


@pytest.fixture
def root(gcs_bucket):  # noqa: F811  pylint: disable=redefined-outer-name
  """A fresh prefix in the emulator's bucket for each test."""
  return f'{gcs_bucket}/{uuid.uuid4().hex[:8]}'


def test_epath_reads_writes_lists_globs_renames_deletes(root):
  base = epath.Path(root)
  (base / 'd').mkdir(parents=True, exist_ok=True)
  (base / 'd' / 'a.txt').write_text('alpha')
  (base / 'd' / 'b.bin').write_bytes(b'\x00\x01')
  assert (base / 'd' / 'a.txt').read_text() == 'alpha'
  assert sorted(p.name for p in (base / 'd').iterdir()) == ['a.txt', 'b.bin']
  assert [p.name for p in base.glob('d/*.txt')] == ['a.txt']
  (base / 'd' / 'a.txt').rename(base / 'd' / 'c.txt')
  assert sorted(p.name for p in (base / 'd').iterdir()) == ['b.bin', 'c.txt']
  assert (base / 'd' / 'c.txt').read_text() == 'alpha'
  (base / 'd' / 'c.txt').unlink()
  assert not (base / 'd' / 'c.txt').exists()
  (base / 'd').rmtree()
  assert not (base / 'd').exists()


_CHILD = """
import sys
import jax.numpy as jnp
import orbax.checkpoint as ocp
from etils import epath
epath.Path(sys.argv[1] + '/second').write_text('2')
with ocp.CheckpointManager(sys.argv[1] + '/ckpt',
                           options=ocp.CheckpointManagerOptions(create=True)) as m:
  m.save(5, args=ocp.args.StandardSave({'w': jnp.arange(3.0)}))
"""


def test_a_subprocess_reaches_the_emulator_and_this_process_sees_its_writes(root):
  """What a resumed run, or another host, does: gcsfs and tensorstore in a child
  process find the emulator through the inherited variables, and a listing made
  here before the child wrote does not hide what it wrote."""
  base = storage.as_path(root)
  (base / 'first').write_text('1')
  assert [p.name for p in base.iterdir()] == ['first']
  subprocess.run([sys.executable, '-c', _CHILD, root], check=True, timeout=300)
  assert sorted(p.name for p in base.iterdir()) == ['ckpt', 'first', 'second']
  with ocp.CheckpointManager(f'{root}/ckpt') as m:
    assert m.latest_step() == 5
    restored = m.restore(5, args=ocp.args.StandardRestore(
        {'w': jax.ShapeDtypeStruct((3,), jnp.float32)}))
  np.testing.assert_array_equal(restored['w'], [0.0, 1.0, 2.0])


_COMPILE = """
import sys
import jax
import jax.numpy as jnp
jax.config.update('jax_compilation_cache_dir', sys.argv[1])
jax.config.update('jax_persistent_cache_min_compile_time_secs', 0)
jax.config.update('jax_persistent_cache_min_entry_size_bytes', 0)
jax.jit(lambda x: x * 2 + 1)(jnp.arange(3.0)).block_until_ready()
"""


def test_jax_compilation_cache_writes_to_gcs(root):
  """JAX opens a non-local cache directory through epath: no staging needed."""
  subprocess.run([sys.executable, '-c', _COMPILE, f'{root}/compile_cache'], check=True,
                 timeout=300)
  assert any(p.name.startswith('jit__lambda-') and p.name.endswith('-cache')
             for p in epath.Path(f'{root}/compile_cache').iterdir())


def test_orbax_saves_and_restores_state_and_grain_iterator(root):
  handlers = dict(state=ocp.StandardCheckpointHandler(),
                  data=grain.checkpoint.CheckpointHandler())
  dataset = grain.MapDataset.range(10).to_iter_dataset()
  iterator = iter(dataset)
  assert [next(iterator), next(iterator)] == [0, 1]
  state = {'w': jnp.arange(6.0).reshape(2, 3), 'step': jnp.int32(7)}
  with ocp.CheckpointManager(f'{root}/ckpt', item_handlers=handlers,
                             options=ocp.CheckpointManagerOptions(max_to_keep=2, create=True)) as m:
    for step in (1, 2, 3):
      m.save(step, args=ocp.args.Composite(
          state=ocp.args.StandardSave(jax.tree.map(lambda x: x + step, state)),
          data=grain.checkpoint.CheckpointSave(iterator)))
    m.wait_until_finished()
  assert sorted(p.name for p in epath.Path(f'{root}/ckpt').iterdir()) == ['2', '3']

  resumed = iter(dataset)
  with ocp.CheckpointManager(f'{root}/ckpt', item_handlers=handlers) as m:
    assert m.latest_step() == 3 and list(m.all_steps()) == [2, 3]
    restored = m.restore(3, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(jax.tree.map(ocp.utils.to_shape_dtype_struct, state)),
        data=grain.checkpoint.CheckpointRestore(resumed)))
  np.testing.assert_array_equal(restored['state']['w'], state['w'] + 3)
  assert int(restored['state']['step']) == 10
  assert next(resumed) == 2  # the data iterator continues where it was saved


def test_orbax_ignores_then_replaces_a_step_a_kill_left_half_written(root):
  """On GCS orbax writes no temporary directory to rename (objects cannot be renamed
  atomically): a step counts once its commit_success.txt exists."""
  with ocp.CheckpointManager(f'{root}/ckpt',
                             options=ocp.CheckpointManagerOptions(create=True)) as m:
    m.save(1, args=ocp.args.StandardSave({'w': jnp.ones(2)}))
  epath.Path(f'{root}/ckpt/2/default/_METADATA').write_text('{}')  # killed mid-save
  with ocp.CheckpointManager(f'{root}/ckpt') as m:
    assert m.latest_step() == 1
    m.save(2, args=ocp.args.StandardSave({'w': jnp.full(2, 5.0)}))
    m.wait_until_finished()
    restored = m.restore(2, args=ocp.args.StandardRestore({'w': jnp.zeros(2)}))
  np.testing.assert_array_equal(restored['w'], [5.0, 5.0])
  assert (epath.Path(f'{root}/ckpt/2') / 'commit_success.txt').exists()


def _events(data: bytes) -> list[tuple[str, int, float]]:
  """(tag, step, value) of the scalar records of a TensorBoard event file."""
  from tensorboardX.proto import event_pb2  # pylint: disable=import-outside-toplevel
  out, offset = [], 0
  while offset < len(data):
    (length,) = struct.unpack('<Q', data[offset:offset + 8])
    event = event_pb2.Event.FromString(data[offset + 12:offset + 12 + length])
    offset += 12 + length + 4
    out += [(v.tag, event.step, v.simple_value) for v in event.summary.value]
  return out


def test_tensorboard_sink_uploads_events_at_each_flush(root):
  logdir = f'{root}/tensorboard'
  sink = TensorBoardSink(logdir, flush_secs=3600)
  sink.write(1, {'loss': 2.5})
  assert list(epath.Path(logdir).glob('events.out.tfevents.*')) == []  # rate-limited
  sink.flush()
  (first,) = epath.Path(logdir).glob('events.out.tfevents.*')
  assert _events(first.read_bytes()) == [('loss', 1, 2.5)]
  sink.write(2, {'loss': 1.5, 'lr': 0.25})
  sink.close()
  assert _events(first.read_bytes()) == [('loss', 1, 2.5), ('loss', 2, 1.5), ('lr', 2, 0.25)]

  with TensorBoardSink(logdir) as resumed:  # a resumed run: a new file beside the old
    resumed.write(3, {'loss': 1.0})
  files = list(epath.Path(logdir).glob('events.out.tfevents.*'))
  assert len(files) == 2
  assert sorted(e for f in files for e in _events(f.read_bytes())) == [
      ('loss', 1, 2.5), ('loss', 2, 1.5), ('loss', 3, 1.0), ('lr', 2, 0.25)]


def test_tensorboard_sink_writes_local_directories(tmp_path):
  with TensorBoardSink(tmp_path / 'tb') as sink:
    sink.write(5, {'loss': 0.5})
  (events,) = (tmp_path / 'tb').glob('events.out.tfevents.*')
  assert _events(events.read_bytes()) == [('loss', 5, 0.5)]


def test_local_copy_stages_sentencepiece_model_and_refetches_when_changed(root, tmp_path):
  import sentencepiece as spm  # pylint: disable=import-outside-toplevel
  text = tmp_path / 'text.txt'
  text.write_text('\n'.join(['the quick brown fox jumps over the lazy dog'] * 50
                            + ['a b c d e f g h i j k l m n o p'] * 50))
  spm.SentencePieceTrainer.train(input=str(text), model_prefix=str(tmp_path / 'spm'),
                                 vocab_size=30, minloglevel=2)
  model = epath.Path(f'{root}/tokenizer/spm.model')
  model.write_bytes((tmp_path / 'spm.model').read_bytes())

  cache = str(tmp_path / 'cache')
  staged = storage.local_copy(str(model), cache_dir=cache)
  assert staged.startswith(cache) and os.path.basename(staged) == 'spm.model'
  pieces = spm.SentencePieceProcessor(model_file=staged).encode('the lazy fox')
  assert pieces == spm.SentencePieceProcessor(
      model_file=str(tmp_path / 'spm.model')).encode('the lazy fox')
  assert storage.local_copy(str(model), cache_dir=cache) == staged  # unchanged: reused

  model.write_bytes(b'changed')
  restaged = storage.local_copy(str(model), cache_dir=cache)
  assert restaged != staged and open(restaged, 'rb').read() == b'changed'
  assert storage.local_copy(str(tmp_path / 'spm.model')) == str(tmp_path / 'spm.model')


def test_local_copy_stages_directories(root, tmp_path):
  shards = epath.Path(f'{root}/corpus')
  (shards / 'sub').mkdir(parents=True, exist_ok=True)
  (shards / 'train-00000.array_record').write_bytes(b'one')
  (shards / 'sub' / 'manifest.json').write_text('{}')
  staged = storage.local_copy(str(shards), cache_dir=str(tmp_path))
  assert os.path.basename(staged) == 'corpus'
  assert sorted(os.path.relpath(os.path.join(d, f), staged)
                for d, _, fs in os.walk(staged) for f in fs) == [
                    'sub/manifest.json', 'train-00000.array_record']
  with pytest.raises(UserError, match='does not exist'):
    storage.local_copy(f'{root}/missing', cache_dir=str(tmp_path))


def test_glob_matches_urls_as_locally(root, tmp_path):
  for base in (root, str(tmp_path)):
    for name in ('corpus/a.txt', 'corpus/b.txt', 'corpus/c.md', 'more/x/d.txt'):
      path = storage.as_path(f'{base}/{name}')
      path.parent.mkdir(parents=True, exist_ok=True)
      path.write_text(name)
    assert storage.glob(f'{base}/corpus/*.txt') == [f'{base}/corpus/a.txt',
                                                    f'{base}/corpus/b.txt']
    assert storage.glob(f'{base}/*/?/d.txt') == [f'{base}/more/x/d.txt']
    assert storage.glob(f'{base}/corpus/c.md') == [f'{base}/corpus/c.md']
    assert storage.glob(f'{base}/corpus/*.json') == storage.glob(f'{base}/nothing.txt') == []
  with pytest.raises(UserError, match='wildcards after the bucket'):
    storage.glob(f'{root}/**/*.txt')


def test_a_text_corpus_on_gcs_reads_as_the_same_files_locally(root, tmp_path):
  from bertjax.data import corpus, embedded  # pylint: disable=import-outside-toplevel
  documents = embedded.embedded_documents(40, seed=2)
  for base in (root, str(tmp_path)):
    for name, part in (('a.txt', documents[:25]), ('b.txt', documents[25:])):
      path = storage.as_path(f'{base}/corpus/{name}')
      path.parent.mkdir(parents=True, exist_ok=True)
      path.write_text('\r\n\r\n'.join('\r\n'.join(d) for d in part))  # Windows line ends
  ours = corpus.load_documents(f'{root}/corpus/*.txt', num_embedded=0, seed=0)
  assert ours == corpus.load_documents(f'{tmp_path}/corpus/*.txt', num_embedded=0, seed=0)
  assert ours == documents
  assert corpus.load_documents(f'{root}/corpus/a.txt', num_embedded=0, seed=0,
                               doc_mode='file') == [[s for d in documents[:25] for s in d]]
  with pytest.raises(UserError, match=r'is a directory .* e\.g\. .*corpus/\*\.txt'):
    corpus.load_documents(f'{root}/corpus', num_embedded=0, seed=0)
  with pytest.raises(UserError, match='matches no file'):
    corpus.load_documents(f'{root}/corpus/*.text', num_embedded=0, seed=0)
  storage.as_path(f'{root}/corpus/latin1.txt').write_bytes('caf\xe9'.encode('latin-1'))
  with pytest.raises(UserError, match=r'latin1\.txt is not UTF-8 text'):
    corpus.load_documents(f'{root}/corpus/latin1.txt', num_embedded=0, seed=0)


@pytest.mark.parametrize('kind', ['classify', 'tag', 'qa'])
def test_task_files_on_gcs_read_as_the_same_files_locally(root, tmp_path, kind):
  """TSV (a glob too), CoNLL and SQuAD JSON task files on gs://: the task reads the
  same rows from them as from local copies."""
  from bertjax.data import embedded, embedded_tasks  # pylint: disable=import-outside-toplevel
  from bertjax.data import tokenizer as tokenizer_lib  # pylint: disable=import-outside-toplevel
  from bertjax.tasks import registry  # pylint: disable=import-outside-toplevel
  tok = tokenizer_lib.train_sentencepiece(
      (s for d in embedded.embedded_documents(100, seed=0) for s in d),
      str(tmp_path / 'spm.model'), vocab_size=150)
  task = registry.task_module(kind)
  splits = {}
  for base in (f'{root}/{kind}', str(tmp_path / kind)):
    cfg = task.task_config()
    storage.as_path(base).mkdir(parents=True, exist_ok=True)
    train, dev = embedded_tasks.WRITERS[kind](base, train_rows=60, eval_rows=5, seed=4)
    cfg.train, cfg.eval = (train.replace('train.tsv', 'tr*.tsv') if kind == 'classify'
                           else train), dev
    first = task.load_split(cfg, 'train', tok, 96)
    splits[base] = (first, task.load_split(cfg, 'eval', tok, 96, first.label_names))
  (ours_train, ours_eval), (theirs_train, theirs_eval) = splits.values()
  for ours, theirs in ((ours_train, theirs_train), (ours_eval, theirs_eval)):
    assert ours.features.keys() == theirs.features.keys() and len(ours.features)
    for name, value in theirs.features.items():
      np.testing.assert_array_equal(ours.features[name], value, err_msg=name)
    assert ours.label_names == theirs.label_names


def test_a_pmi_vocabulary_is_built_from_a_gcs_corpus_into_gcs_and_read_back(root, tmp_path):
  from bertjax.cli import main  # pylint: disable=import-outside-toplevel
  from bertjax.data import embedded, pmi  # pylint: disable=import-outside-toplevel
  from bertjax.data import tokenizer as tokenizer_lib  # pylint: disable=import-outside-toplevel
  documents = embedded.embedded_documents(200, seed=3)
  storage.as_path(f'{root}/corpus/a.txt').write_text('\n\n'.join('\n'.join(d)
                                                                   for d in documents))
  tok = tokenizer_lib.train_sentencepiece((s for d in documents for s in d),
                                          str(tmp_path / 'tok' / 'spm.model'), vocab_size=150)
  vocab = f'{root}/pmi/vocab.json'
  assert main(['data', 'pmi', '--corpus', f'{root}/corpus/*.txt', '--tokenizer',
               str(tmp_path / 'tok'), '--out', vocab, '--min_count', '3']) == 0
  record = json.loads(storage.as_path(vocab).read_text())
  assert record['corpus'] == f'{root}/corpus/*.txt' and record['ngrams']
  assert len(pmi.load(vocab, tok).ngrams) == len(record['ngrams'])


def test_jsonl_log_writes_segments_on_gcs_and_reads_them_in_order(root):
  records = [{'step': i, 'loss': 1.0 / (i + 1)} for i in range(10)]
  with jsonl_log.JsonlLog(root, flush_secs=3600, max_segment_bytes=100) as log:
    for r in records[:6]:
      log.write(r)
    log.flush()
    assert list(jsonl_log.read(root)) == records[:6]
  with jsonl_log.JsonlLog(root, flush_secs=0) as log:  # a resumed run
    for r in records[6:]:
      log.write(r)
  names = sorted(p.name for p in epath.Path(f'{root}/metrics').iterdir())
  assert len(names) > 2 and names[0] == '000000.jsonl'
  assert list(jsonl_log.read(root)) == records


def test_jsonl_log_reads_the_old_single_file_then_segments(root):
  old = [{'step': 1, 'loss': 3.0}, {'step': 2, 'loss': 2.0}]
  epath.Path(f'{root}/metrics.jsonl').write_text(
      ''.join(json.dumps(r) + '\n' for r in old) + '{"step": 3, "lo')  # torn by a kill
  with jsonl_log.JsonlLog(root) as log:
    log.write({'step': 3, 'loss': 1.0})
  assert list(jsonl_log.read(root)) == old + [{'step': 3, 'loss': 1.0}]


def test_jsonl_log_appends_locally_and_rejects_a_damaged_line(tmp_path):
  with jsonl_log.JsonlLog(tmp_path) as log:
    log.write({'step': 1})
  with jsonl_log.JsonlLog(tmp_path) as log:
    log.write({'step': 2})
  assert (tmp_path / 'metrics.jsonl').read_text() == '{"step": 1}\n{"step": 2}\n'
  assert list(jsonl_log.read(tmp_path)) == [{'step': 1}, {'step': 2}]
  (tmp_path / 'metrics.jsonl').write_text('{"step": 1}\nnot json\n{"step": 2}\n')
  with pytest.raises(UserError, match=r'metrics.jsonl:2: not a JSON line'):
    list(jsonl_log.read(tmp_path))


def test_write_atomic_on_gcs_and_locally(root, tmp_path):
  storage.write_atomic(f'{root}/config.json', '{"a": 1}')
  storage.write_atomic(f'{root}/config.json', '{"a": 2}')
  assert epath.Path(f'{root}/config.json').read_text() == '{"a": 2}'
  storage.write_atomic(tmp_path / 'config.json', b'{"a": 3}')
  storage.write_atomic(tmp_path / 'config.json', '{"a": 4}')
  assert os.listdir(tmp_path) == ['config.json']  # no temporary left behind
  assert (tmp_path / 'config.json').read_text() == '{"a": 4}'


def test_check_writable_accepts_a_bucket_and_leaves_nothing(root, tmp_path):
  storage.check_writable(f'{root}/run')
  storage.check_writable(tmp_path / 'run')
  assert not epath.Path(f'{root}/run').exists()  # no directories on GCS: nothing left
  assert os.listdir(tmp_path / 'run') == []


def test_check_writable_names_a_missing_bucket(gcs_bucket):  # noqa: F811
  missing = f'gs://no-such-{uuid.uuid4().hex[:8]}/run'
  with pytest.raises(UserError, match=r'does not exist: create it \(gcloud storage buckets '):
    storage.check_writable(missing)


def _closed_port() -> int:
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


def test_check_writable_names_an_unreachable_endpoint(gcs_bucket, monkeypatch):  # noqa: F811
  monkeypatch.setenv('STORAGE_EMULATOR_HOST', f'http://127.0.0.1:{_closed_port()}')
  with pytest.raises(UserError, match=r'cannot reach the storage endpoint 127\.0\.0\.1:\d+ '
                                      r'\(set by STORAGE_EMULATOR_HOST\)'):
    storage.check_writable(f'{gcs_bucket}/run')


def _denying_server(status: int, message: str) -> http.server.ThreadingHTTPServer:
  """A local endpoint that answers every request as GCS answers a caller it refuses:
  401 to an anonymous one (what gcsfs falls back to when it finds no credentials),
  403 to one whose credentials lack access."""
  body = json.dumps({'error': {'code': status, 'message': message}}).encode()

  class Handler(http.server.BaseHTTPRequestHandler):
    def _deny(self):
      self.send_response(status)
      self.send_header('Content-Type', 'application/json')
      self.send_header('Content-Length', str(len(body)))
      self.end_headers()
      self.wfile.write(body)

    do_GET = do_POST = do_PUT = do_DELETE = _deny

    def log_message(self, *args):
      pass

  server = http.server.ThreadingHTTPServer(('127.0.0.1', 0), Handler)
  threading.Thread(target=server.serve_forever, daemon=True).start()
  return server


@pytest.mark.parametrize('status, message, expected', [
    (401, 'Anonymous caller does not have storage.objects.create access to the Google '
          'Cloud Storage object.',
     r'no usable Google Cloud credentials .*gcloud auth application-default login'),
    (403, 'sa@p.iam.gserviceaccount.com does not have storage.objects.create access.',
     r'the credentials in use may not write to gs://some-bucket .*roles/storage.objectAdmin'),
])
def test_check_writable_names_missing_credentials_and_access(monkeypatch, status, message,
                                                             expected):
  server = _denying_server(status, message)
  try:
    monkeypatch.setenv('STORAGE_EMULATOR_HOST', f'http://127.0.0.1:{server.server_port}')
    import fsspec.config  # pylint: disable=import-outside-toplevel
    monkeypatch.setitem(fsspec.config.conf.setdefault('gcs', {}), 'token', 'anon')
    with pytest.raises(UserError, match=expected):
      storage.check_writable('gs://some-bucket/run')
  finally:
    server.shutdown()
    server.server_close()


def test_check_writable_says_to_install_gcsfs(monkeypatch):
  real_find_spec = storage.importlib.util.find_spec
  monkeypatch.setattr(storage.importlib.util, 'find_spec', lambda name, *a: (
      None if name in ('gcsfs', 'tensorflow') else real_find_spec(name, *a)))
  with pytest.raises(UserError, match=r"gs:// needs gcsfs: pip install 'bertjax\[gcs\]'"):
    storage.check_writable('gs://some-bucket/run')


def test_check_writable_names_a_local_path_it_cannot_create(tmp_path):
  (tmp_path / 'file').write_text('x')
  with pytest.raises(UserError, match=r'cannot write there \(.*Error'):
    storage.check_writable(tmp_path / 'file' / 'run')
  assert (tmp_path / 'file').read_text() == 'x'


def test_a_missing_bucket_is_one_line_before_any_work(gcs_bucket, tmp_path, monkeypatch,  # noqa: F811
                                                     capsys):
  """Globs (text corpora, TSV task files) and the --out of `data tokenizer` / `data pmi`
  in a bucket that does not exist: one line naming it, exit 2, nothing trained or
  counted first."""
  from bertjax import data_cli  # pylint: disable=import-outside-toplevel
  from bertjax.cli import main  # pylint: disable=import-outside-toplevel
  from bertjax.data import embedded, pmi, text_files, tsv  # pylint: disable=import-outside-toplevel
  from bertjax.data import tokenizer as tokenizer_lib  # pylint: disable=import-outside-toplevel
  missing = f'gs://no-such-{uuid.uuid4().hex[:8]}'
  assert storage.glob(f'{gcs_bucket}/no-such-prefix/*.txt') == []  # a bucket that exists
  for read in (storage.glob, text_files.text_paths, tsv.paths):
    with pytest.raises(UserError, match=rf'bucket {missing} does not exist: create it'):
      read(f'{missing}/c/*.txt')

  tokenizer_lib.train_sentencepiece(
      (s for d in embedded.embedded_documents(100, seed=0) for s in d),
      str(tmp_path / 'tok' / 'spm.model'), vocab_size=150)

  def no_work(*args, **kwargs):
    raise AssertionError('work started before the --out was checked')
  for argv in (['data', 'inspect', '--corpus', f'{missing}/c/*.txt', '--tokenizer',
                str(tmp_path / 'tok')],
               ['data', 'tokenizer', '--corpus', 'embedded', '--out', f'{missing}/tok',
                '--vocab_size', '150'],
               ['data', 'pmi', '--corpus', 'embedded', '--tokenizer', str(tmp_path / 'tok'),
                '--out', f'{missing}/v.json']):
    if argv[1] != 'inspect':  # inspect reads the corpus: that is where it fails
      monkeypatch.setattr(data_cli, '_documents', no_work)
      monkeypatch.setattr(pmi, 'build', no_work)
    assert main(argv) == 2, argv
    err = capsys.readouterr().err
    assert err.startswith('bertjax: error: ') and err.count('\n') == 1, err
    assert f'bucket {missing} does not exist' in err
