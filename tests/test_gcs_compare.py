"""`bertjax compare --workdir gs://...` against the GCS emulator (see gcs_emulator.py):
a one-variant sweep writes its config, PMI vocabulary, variant workdirs, result and
report into the bucket (nothing into a local `gs:` directory), keeps the compilation
cache on local disk, and a second run reads the result back without training; a
bucket that does not exist ends in one line before any work."""
from __future__ import annotations

# First: it keeps google-auth off the GCE metadata server, which it reads on import.
from gcs_emulator import gcs_bucket  # noqa: F401  pylint: disable=unused-import

import csv
import io
import json
import os
import uuid

import fsspec
import jax
import pytest
from etils import epath

from bertjax.cli import main

from conftest import ROOT

SWEEP = os.path.join(ROOT, 'experiments', 'masking_sweep.py')
# pmi: the one variant that needs the shared vocabulary and the extra evaluation under
# the common masking, so every file the sweep writes is written.
SHRINK = ["variants=('pmi',)", 'downstream_seeds=(0,)', 'pretrain.train.steps=2',
          'pretrain.train.log_every=1', 'pretrain.train.checkpoint_every=2',
          'pretrain.train.eval_batches=1', 'pretrain.train.batch_size=8',
          'pretrain.data.embedded_documents=300', 'pretrain.optim.warmup_steps=1',
          'downstream.train.steps=1', 'downstream.train.log_every=1',
          'more_downstream.word_order.train.steps=1', 'more_downstream.word_order.train.log_every=1']


def _generations(url: str) -> dict[str, str]:
  """Every object under `url` with its generation (a rewritten object gets a new one)."""
  fs, path = fsspec.core.url_to_fs(url)
  found = {os.path.relpath(name, path): meta.get('generation')
           for name, meta in fs.find(path, detail=True).items()}
  assert found and None not in found.values()
  return found


@pytest.fixture
def workdir(gcs_bucket):  # noqa: F811  pylint: disable=redefined-outer-name
  return f'{gcs_bucket}/{uuid.uuid4().hex[:8]}/sweep'


def test_sweep_on_gcs_writes_the_bucket_and_resumes(workdir, tmp_path, monkeypatch, capsys,
                                                    restores_the_compile_cache_settings):
  monkeypatch.chdir(tmp_path)  # a path mistaken for local would land here, as gs:/...
  monkeypatch.setenv('XDG_CACHE_HOME', str(tmp_path / 'cache'))
  argv = ['compare', '--config', SWEEP + ':local', '--workdir', workdir,
          *(f'--config.{o}' for o in SHRINK)]
  assert main(argv) == 0
  assert 'pmi' in capsys.readouterr().out
  root = epath.Path(workdir)
  assert json.loads((root / 'config.json').read_text())['variants'] == ['pmi']
  assert (root / 'pmi_vocab.json').is_file()
  assert (root / 'pmi' / 'pretrain' / 'tokenizer' / 'spm.model').read_bytes() == (
      root / 'tokenizer' / 'spm.model').read_bytes()
  # On object storage the run logs metrics as segments, which the result was read from.
  assert list((root / 'pmi' / 'pretrain' / 'metrics').glob('*.jsonl'))
  result = json.loads((root / 'pmi' / 'result.json').read_text())
  assert [step for step, _ in result['loss_curve']] == [1, 2]
  assert result['wall_seconds'] > 0 and set(result['downstream']) == {'qa', 'word_order'}
  markdown = (root / 'report.md').read_text()
  assert '| pmi' in markdown
  rows = list(csv.DictReader(io.StringIO((root / 'report.csv').read_text())))
  assert [(r['variant'], r['downstream_task']) for r in rows] == [('pmi', 'qa'),
                                                                 ('pmi', 'word_order')]
  for name in ('loss_curves.png', 'mlm_accuracy.png', 'downstream.png'):
    assert (root / name).read_bytes()[:8] == b'\x89PNG\r\n\x1a\n'
  assert not os.path.exists(tmp_path / 'gs:')
  assert jax.config.jax_compilation_cache_dir.startswith(str(tmp_path / 'cache'))

  # Resumed: the result is read back and nothing is trained (no object but the
  # sweep's config and report is written again).
  before = _generations(workdir)
  assert main(argv) == 0
  assert 'variant 1/1 pmi: done before, read back' in capsys.readouterr().out
  after = _generations(workdir)
  rewritten = {'config.json', 'report.md', 'report.csv', 'loss_curves.png', 'mlm_accuracy.png',
               'downstream.png'}
  assert after.keys() == before.keys()
  assert {k for k in after if after[k] != before[k]} <= rewritten
  assert not os.path.exists(tmp_path / 'gs:')


@pytest.mark.usefixtures('gcs_bucket')
def test_sweep_to_a_missing_bucket_is_one_line(tmp_path, monkeypatch, capsys):
  monkeypatch.chdir(tmp_path)
  missing = f'gs://no-such-bucket-{uuid.uuid4().hex[:8]}/sweep'
  assert main(['compare', '--config', SWEEP + ':local', '--workdir', missing,
               *(f'--config.{o}' for o in SHRINK)]) == 2
  err = capsys.readouterr().err.strip().splitlines()
  assert len(err) == 1 and 'does not exist' in err[0] and missing in err[0]
  assert not os.listdir(tmp_path)
