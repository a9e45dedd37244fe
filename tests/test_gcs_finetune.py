"""Pre-training and fine-tuning with every path on gs://, against the GCS emulator
(see gcs_emulator.py): pre-training reads a text-file glob on gs:// into a gs://
workdir; fine-tuning takes `init=` that workdir and its TSV task files from gs://,
writes its own workdir there, is exported to gs://, and `from_pretrained` loads the
export with the head and label names it was trained with."""
from __future__ import annotations

# First: it keeps google-auth off the GCE metadata server, which it reads on import.
from gcs_emulator import gcs_bucket  # noqa: F401  pylint: disable=unused-import

import json
import os
import uuid

import numpy as np
import pytest
from etils import epath

import bertjax
from bertjax import weights, workdir as workdir_lib
from bertjax.cli import main
from bertjax.data import embedded, embedded_tasks

from conftest import ROOT

QUICKSTART = os.path.join(ROOT, 'experiments', 'quickstart.py') + ':local'
GLUE = os.path.join(ROOT, 'experiments', 'glue.py')


@pytest.fixture
def root(gcs_bucket):  # noqa: F811  pylint: disable=redefined-outer-name
  return f'{gcs_bucket}/{uuid.uuid4().hex[:8]}'


def test_pretrain_on_a_gcs_corpus_then_finetune_export_and_load_on_gcs(root):
  documents = embedded.embedded_documents(300, seed=0)
  corpus = epath.Path(f'{root}/corpus')
  corpus.mkdir(parents=True, exist_ok=True)
  for name, part in (('a.txt', documents[:150]), ('b.txt', documents[150:])):
    (corpus / name).write_text('\n\n'.join('\n'.join(d) for d in part))
  (corpus / 'notes.md').write_text('not matched by the glob')

  pre = f'{root}/pre'
  assert main(['train', '--config', QUICKSTART, '--workdir', pre,
               f'--config.data.corpus={root}/corpus/*.txt', '--config.train.steps=4',
               '--config.train.checkpoint_every=4', '--config.train.eval_batches=1']) == 0
  # The tokenizer was trained on the gs:// corpus, and the run checkpointed there.
  derived = json.loads((epath.Path(pre) / 'tokenizer' / 'derived_from.json').read_text())
  assert derived['data.corpus'] == f'{root}/corpus/*.txt'
  assert weights.open_weights(pre).step == 4

  train_tsv, dev_tsv = embedded_tasks.write_classify(f'{root}/tasks', train_rows=64,
                                                     eval_rows=32, seed=1)
  assert train_tsv.startswith('gs://') and epath.Path(train_tsv).is_file()
  finetuned = f'{root}/ft'
  assert main(['train', '--config', f'{GLUE}:local,init={pre}', '--workdir', finetuned,
               f'--config.task.train={train_tsv}', f'--config.task.eval={dev_tsv}',
               '--config.train.steps=4', '--config.train.eval_every=4',
               '--config.train.checkpoint_every=4']) == 0
  assert workdir_lib.is_workdir(finetuned)
  labels = sorted({line.split('\t')[-1]
                   for line in epath.Path(train_tsv).read_text().splitlines()[1:]})

  export = f'{root}/ft_export'
  assert main(['export', '--workdir', finetuned, '--out', export]) == 0
  assert (epath.Path(export) / 'model.safetensors').is_file()
  model, tokenizer = bertjax.from_pretrained(export)
  assert model.kind == 'sequence_classification'
  assert sorted(model.label_names) == labels
  ours = weights.open_weights(finetuned)
  exported = weights.open_weights(export)
  assert exported.tensors.keys() == ours.tensors.keys()
  for name, value in ours.tensors.items():
    np.testing.assert_array_equal(exported.tensors[name], value, err_msg=name)
  out = model(**tokenizer(['the city lies in a country .']))
  assert out.logits.shape == (1, len(labels))
