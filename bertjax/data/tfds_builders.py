"""tensorflow-datasets builders for local data, written as array_record.

Building a corpus once as a tfds dataset gives it a catalog entry (features,
splits, sizes) and random access through `tfds.data_source`, with no TensorFlow at
build or read time. `LocalText` turns text files into documents (one a file, a
blank-line block or a line; sentences joined by '\\n'); `LocalTsv` turns TSV files
into labelled examples (text_a, text_b, label) for fine-tuning tasks.

`bertjax data tfds` runs them. Read a built dataset back with
`tfds.data_source('local_text/NAME', data_dir=DIR)` (or corpus 'tfds:local_text/NAME'
with TFDS_DATA_DIR=DIR); reading needs only the files, not this module.
"""
from __future__ import annotations

import dataclasses

import tensorflow_datasets as tfds

from bertjax.data import tsv
from bertjax.data.splits import split_indices
from bertjax.data.text_files import iter_text_documents
from bertjax.errors import UserError

class _LocalBuilder(tfds.core.GeneratorBasedBuilder):
  """A builder of local files: nothing to download, so no checksums beside the code.

  Saying so (`code_path` None) also avoids tfds 4.9.10 importing `importlib_resources`
  to locate the code of a builder defined in a package, a module it does not install
  on Python >= 3.9.
  """
  VERSION = tfds.core.Version('1.0.0')

  @tfds.core.utils.classproperty
  @classmethod
  def code_path(cls):
    return None


@dataclasses.dataclass(eq=False)
class LocalTextConfig(tfds.core.BuilderConfig):
  pattern: str = ''
  doc_mode: str = 'blank_line'
  eval_fraction: float = 0.0
  seed: int = 0


class LocalText(_LocalBuilder):
  """Documents from local UTF-8 text files; splits 'train' and (optionally) 'eval'."""
  # Builds of 1.0.0 sampled 'eval' another way; they stay readable as stored.
  VERSION = tfds.core.Version('1.1.0')
  RELEASE_NOTES = {'1.1.0': 'eval holds out the documents the pre-training pipeline '
                            'would (splits.split_indices).'}

  def _info(self) -> tfds.core.DatasetInfo:
    cfg = self.builder_config
    return tfds.core.DatasetInfo(
        builder=self, features=tfds.features.FeaturesDict({'text': tfds.features.Text()}),
        description=(f'Documents ({cfg.doc_mode}) from {cfg.pattern}, sentences joined by '
                     f'newlines; eval_fraction={cfg.eval_fraction}, seed={cfg.seed}.'),
        # Keep file order: documents stay comparable with the text files.
        disable_shuffling=True)

  def _split_generators(self, dl_manager):
    cfg = self.builder_config
    count = sum(1 for _ in iter_text_documents(cfg.pattern, cfg.doc_mode))
    if not count:
      raise UserError(f'corpus {cfg.pattern!r} holds no text; point it at non-empty '
                      'UTF-8 files')
    held_out = set(split_indices(count, cfg.eval_fraction, cfg.seed)[1]
                   if cfg.eval_fraction else ())
    splits = {'train': self._generate_examples(held_out, eval_split=False)}
    if held_out:
      splits['eval'] = self._generate_examples(held_out, eval_split=True)
    return splits

  def _generate_examples(self, held_out: set[int], eval_split: bool):
    cfg = self.builder_config
    for i, doc in enumerate(iter_text_documents(cfg.pattern, cfg.doc_mode)):
      if (i in held_out) == eval_split:
        yield i, {'text': '\n'.join(doc)}


def build_text_dataset(pattern: str, data_dir: str, *, name: str,
                       doc_mode: str = 'blank_line', eval_fraction: float = 0.0,
                       seed: int = 0) -> tfds.core.DatasetBuilder:
  """Builds `local_text/NAME` under `data_dir` (array_record); returns its builder."""
  config = LocalTextConfig(name=name, pattern=pattern, doc_mode=doc_mode,
                           eval_fraction=eval_fraction, seed=seed)
  return _build(LocalText(data_dir=data_dir, config=config, file_format='array_record'))


@dataclasses.dataclass(eq=False)
class LocalTsvConfig(tfds.core.BuilderConfig):
  """`files` maps split -> TSV path or glob. Columns are header names, or 0-based
  indices (as ints) when `header` is False; `text_b` is optional."""
  files: dict[str, str] = dataclasses.field(default_factory=dict)
  text_a: str | int = 0
  text_b: str | int | None = None
  label: str | int = 1
  header: bool = True


class LocalTsv(_LocalBuilder):
  """Labelled text pairs from TSV files; labels become a ClassLabel (sorted names)."""

  def _info(self) -> tfds.core.DatasetInfo:
    cfg = self.builder_config
    labels = sorted({row[2] for split in cfg.files for row in self._rows(split)})
    return tfds.core.DatasetInfo(
        builder=self,
        features=tfds.features.FeaturesDict({
            'text_a': tfds.features.Text(), 'text_b': tfds.features.Text(),
            'label': tfds.features.ClassLabel(names=labels)}),
        description=f'TSV task from {cfg.files}: text_a={cfg.text_a!r}, '
                    f'text_b={cfg.text_b!r}, label={cfg.label!r}.',
        disable_shuffling=True)

  def _split_generators(self, dl_manager):
    return {split: self._generate_examples(split) for split in self.builder_config.files}

  def _generate_examples(self, split: str):
    for i, (a, b, label) in enumerate(self._rows(split)):
      yield i, {'text_a': a, 'text_b': b, 'label': label}

  def _rows(self, split: str):
    """(text_a, text_b, label) per data row (see `tsv.read_rows` for the errors)."""
    cfg = self.builder_config
    columns = {'text_a': cfg.text_a, 'label': cfg.label}
    if cfg.text_b is not None:
      columns['text_b'] = cfg.text_b
    for _, _, row in tsv.read_rows(cfg.files[split], columns, header=cfg.header):
      yield row['text_a'], row.get('text_b', ''), row['label']


def build_tsv_dataset(files: dict[str, str], data_dir: str, *, name: str, text_a: str | int,
                      label: str | int, text_b: str | int | None = None,
                      header: bool = True) -> tfds.core.DatasetBuilder:
  """Builds `local_tsv/NAME` under `data_dir` (array_record); returns its builder."""
  config = LocalTsvConfig(name=name, files=dict(files), text_a=text_a, text_b=text_b,
                          label=label, header=header)
  return _build(LocalTsv(data_dir=data_dir, config=config, file_format='array_record'))


def _build(builder: tfds.core.GeneratorBasedBuilder) -> tfds.core.DatasetBuilder:
  """Generates the dataset, replacing an earlier build: the files may have changed."""
  builder.download_and_prepare(download_config=tfds.download.DownloadConfig(
      download_mode=tfds.download.GenerateMode.REUSE_CACHE_IF_EXISTS))
  return builder
