"""Corpora as lists of documents, each a list of sentences.

`embedded_documents` generates the default corpus, so the quickstart needs no
download: short biographies in a small invented world whose facts hold across
documents (each city lies in one country, each animal has its own habit, weekdays
follow each other, counting goes up by one) and whose people stay consistent
within a document (name, pronoun, home town). A masked-LM must learn those facts
and read the context to fill the blanks, and next-sentence prediction must notice
when segment B talks about somebody else.

`text_file_documents` reads local text files, a document a file, a blank-line
separated block or a line (`doc_mode`); sentences are lines, split again after
terminal punctuation. `load_documents` also reads `tfds:NAME[/CONFIG][:SPLIT]`, a
tensorflow-datasets dataset prepared as array_record under TFDS_DATA_DIR (read with
`tfds.data_source`, so no TensorFlow), and a directory written by `bertjax data
prepare`.
"""
from __future__ import annotations

import glob
import os
import random
import re
from typing import Iterator

from bertjax.errors import UserError

MEN = ('adam', 'boris', 'carlos', 'david', 'emil', 'felix', 'georg', 'hugo', 'ivan',
        'jonas', 'karl', 'leon', 'marco', 'nils', 'oscar', 'pablo', 'rafael', 'simon',
        'tomas', 'viktor')
WOMEN = ('anna', 'bella', 'clara', 'dora', 'elena', 'frida', 'greta', 'hanna', 'ida',
          'julia', 'karin', 'lena', 'maria', 'nora', 'olga', 'paula', 'rosa', 'sofia',
          'tina', 'vera')
CITY_COUNTRY = {
    'paris': 'france', 'lyon': 'france', 'nice': 'france',
    'berlin': 'germany', 'munich': 'germany', 'hamburg': 'germany',
    'rome': 'italy', 'milan': 'italy', 'naples': 'italy',
    'madrid': 'spain', 'seville': 'spain', 'valencia': 'spain',
    'oslo': 'norway', 'bergen': 'norway',
    'lisbon': 'portugal', 'porto': 'portugal',
    'vienna': 'austria', 'salzburg': 'austria',
    'athens': 'greece', 'sparta': 'greece',
}
JOBS = ('baker', 'teacher', 'doctor', 'farmer', 'painter', 'pilot', 'singer', 'tailor',
         'sailor', 'writer', 'nurse', 'carpenter', 'gardener', 'lawyer', 'miller')
_JOB_PLACE = {
    'baker': 'bakery', 'teacher': 'school', 'doctor': 'hospital', 'farmer': 'farm',
    'painter': 'studio', 'pilot': 'airport', 'singer': 'theatre', 'tailor': 'shop',
    'sailor': 'harbour', 'writer': 'library', 'nurse': 'hospital', 'carpenter': 'workshop',
    'gardener': 'park', 'lawyer': 'court', 'miller': 'mill',
}
ANIMAL_HABIT = {
    'dog': 'barks at the postman', 'cat': 'sleeps on the sofa',
    'bird': 'sings in the morning', 'horse': 'runs in the field',
    'fish': 'swims in a bowl', 'rabbit': 'eats carrots', 'parrot': 'repeats every word',
    'goat': 'climbs the rocks',
}
_COLOURS = ('red', 'green', 'blue', 'black', 'white', 'brown', 'grey', 'yellow')
PET_NAMES = ('max', 'bella', 'rocky', 'luna', 'pip', 'coco', 'tiger', 'snow', 'lucky',
              'spot')
_FOODS = ('bread', 'rice', 'soup', 'eggs', 'cheese', 'apples', 'porridge', 'fish')
DRINKS = ('tea', 'coffee', 'milk', 'juice', 'water', 'cocoa')
DAYS = ('monday', 'tuesday', 'wednesday', 'thursday', 'friday', 'saturday', 'sunday')
PLACES = ('market', 'river', 'church', 'museum', 'forest', 'beach', 'station', 'garden')
_NUMBERS = ('one', 'two', 'three', 'four', 'five', 'six', 'seven', 'eight', 'nine', 'ten',
            'eleven', 'twelve')
_HOBBIES = ('chess', 'football', 'music', 'swimming', 'cooking', 'dancing', 'fishing',
            'reading')


def _biography(rng: random.Random) -> list[str]:
  female = rng.random() < 0.5
  name = rng.choice(WOMEN if female else MEN)
  he, his = ('she', 'her') if female else ('he', 'his')
  home, work_city = rng.sample(sorted(CITY_COUNTRY), 2)
  job = rng.choice(JOBS)
  animal = rng.choice(sorted(ANIMAL_HABIT))
  pet = rng.choice(PET_NAMES)
  day = rng.randrange(7)
  start = rng.randrange(len(_NUMBERS) - 4)
  count = _NUMBERS[start:start + rng.randint(3, 5)]
  sibling = rng.choice(MEN if rng.random() < 0.5 else WOMEN)
  middle = [
      f'{he} works as a {job} in {work_city} .',
      f'every day {he} goes to the {_JOB_PLACE[job]} where the {job} works .',
      f'{work_city} is a city in {CITY_COUNTRY[work_city]} .',
      f'{name} has a {rng.choice(_COLOURS)} {animal} called {pet} .',
      f'{pet} the {animal} {ANIMAL_HABIT[animal]} .',
      f'every morning {name} eats {rng.choice(_FOODS)} and drinks {rng.choice(DRINKS)} .',
      f'on {DAYS[day]} {he} goes to the {rng.choice(PLACES)} , and on '
      f'{DAYS[(day + 1) % 7]} {he} goes to the {rng.choice(PLACES)} .',
      f'{name} likes to count : {" ".join(count)} .',
      f'{his} favourite hobby is {rng.choice(_HOBBIES)} .',
      f'{name} has a sibling called {sibling} who also lives in {home} .',
  ]
  rng.shuffle(middle)
  return ([f'{name} was born in {home} , a city in {CITY_COUNTRY[home]} .']
          + middle[:rng.randint(6, len(middle))]
          + [f'{name} is happy to live in {CITY_COUNTRY[home]} .'])


def embedded_documents(num_documents: int, seed: int = 0) -> list[list[str]]:
  """The generated default corpus: `num_documents` biographies, reproducible by seed."""
  rng = random.Random(seed)
  return [_biography(rng) for _ in range(num_documents)]


_SENTENCE_END = re.compile(r'(?<=[.!?])\s+')
DOC_MODES = ('file', 'blank_line', 'line')


def split_sentences(text: str) -> list[str]:
  """The sentences of a block of text: its lines, split after terminal punctuation."""
  return [s.strip() for line in text.splitlines() for s in _SENTENCE_END.split(line)
          if s.strip()]


def text_paths(pattern: str) -> list[str]:
  paths = sorted(p for p in glob.glob(os.path.expanduser(pattern)) if os.path.isfile(p))
  if not paths and os.path.isdir(os.path.expanduser(pattern)):
    glob_hint = os.path.join(pattern, '*.txt')
    raise UserError(f'corpus {pattern!r} is a directory but not one `bertjax data prepare` '
                    f'wrote; for its text files use a glob, e.g. {glob_hint!r}')
  if not paths:
    raise UserError(f'corpus {pattern!r} matches no file; point the corpus (--corpus or '
                    '--config.data.corpus) at a text file or glob, "tfds:NAME", or '
                    '"embedded" for the built-in corpus')
  return paths


def read_text(path: str) -> str:
  try:
    with open(path, encoding='utf-8') as f:
      return f.read()
  except UnicodeDecodeError as e:
    raise UserError(f'{path} is not UTF-8 text (byte {e.start}); convert it, e.g. '
                    f'iconv -f latin1 -t utf-8') from None


def iter_text_documents(pattern: str, doc_mode: str = 'blank_line') -> Iterator[list[str]]:
  """Documents one at a time, in file then text order, so builders can stream them."""
  if doc_mode not in DOC_MODES:
    raise UserError(f'doc_mode {doc_mode!r} is not one of {DOC_MODES}')
  for path in text_paths(pattern):
    text = read_text(path)
    if doc_mode == 'file':
      blocks = [text]
    elif doc_mode == 'blank_line':
      blocks = re.split(r'\n\s*\n', text)
    else:
      blocks = text.splitlines()
    for block in blocks:
      sentences = split_sentences(block)
      if sentences:
        yield sentences


def text_file_documents(pattern: str, doc_mode: str = 'blank_line') -> list[list[str]]:
  """Reads UTF-8 text files; `doc_mode` says what a document is (default: blank lines
  separate documents)."""
  documents = list(iter_text_documents(pattern, doc_mode))
  if not documents:
    raise UserError(f'corpus {pattern!r} holds no text; point the corpus at non-empty '
                    'UTF-8 files')
  return documents


def eval_indices(num_documents: int, eval_fraction: float, seed: int) -> set[int]:
  """The documents held out for evaluation: a seeded sample, at least one when the
  fraction is positive, so every builder of the same corpus holds out the same ones."""
  if not 0 <= eval_fraction < 1:
    raise UserError(f'eval_fraction {eval_fraction} must be in [0, 1)')
  if not eval_fraction:
    return set()
  n_eval = max(1, int(num_documents * eval_fraction))
  if num_documents - n_eval < 1:
    raise UserError(f'the corpus has {num_documents} document(s); it needs at least two '
                    'to hold one out for evaluation')
  return set(random.Random(seed).sample(range(num_documents), n_eval))


def _text_feature(features, name: str) -> str:
  from tensorflow_datasets import features as tfds_features
  texts = sorted(k for k, f in features.items() if isinstance(f, tfds_features.Text))
  for preferred in ('text', 'content'):
    if preferred in texts:
      return preferred
  if not texts:
    raise UserError(f'tfds dataset {name} has no Text feature (it has {sorted(features)}); '
                    'a corpus needs text')
  return texts[0]


def open_tfds(spec: str, default_split: str = 'train'):
  """(source, features, name, split) for `NAME[/CONFIG][:SPLIT]` prepared as
  array_record under TFDS_DATA_DIR, opened as `tfds.data_source` opens it (builder,
  then `as_data_source`) but never downloading: no TensorFlow, random access."""
  import tensorflow_datasets as tfds
  name, _, split = spec.partition(':')
  split = split or default_split
  data_dir = os.environ.get('TFDS_DATA_DIR') or None
  where = data_dir or '~/tensorflow_datasets (set TFDS_DATA_DIR to look elsewhere)'
  how = (f'prepare it first, e.g. `tfds build {name} --data_dir DIR '
         '--file_format=array_record` on a machine with its dependencies, then set '
         'TFDS_DATA_DIR=DIR; or use local files')
  try:
    builder = tfds.builder(name, data_dir=data_dir)
  except tfds.core.registered.DatasetNotFoundError:
    raise UserError(f'tfds dataset {name!r} is not prepared in {where}; {how}') from None
  except Exception as e:  # tfds wraps a missing config or a builder's failure
    detail = str(e).strip().splitlines()[0][:200]
    raise UserError(f'tfds dataset {name!r} cannot be opened from {where} ({detail}); '
                    f'{how}') from None
  if not builder.is_prepared():
    raise UserError(f'tfds dataset {name!r} is not prepared in {where}; {how}')
  if builder.info.file_format != tfds.core.FileFormat.ARRAY_RECORD:
    raise UserError(f'tfds dataset {name!r} in {builder.data_dir} is stored as '
                    f'{builder.info.file_format.value}; tfds.data_source reads array_record '
                    f'only: rebuild it with --file_format=array_record')
  if split.split('[')[0] not in builder.info.splits:
    raise UserError(f'tfds dataset {name!r} has no split {split!r}; it has '
                    f'{sorted(builder.info.splits)}')
  return builder.as_data_source(split=split), builder.info.features, name, split


def tfds_examples(spec: str, default_split: str = 'train') -> Iterator[dict]:
  """The examples of a prepared tfds split, in order, with a progress bar; text
  features come as bytes (decode them)."""
  import tqdm
  source, _, name, split = open_tfds(spec, default_split)
  chunk = 1024
  with tqdm.tqdm(total=len(source), desc=f'reading {name}:{split}', unit='ex',
                 disable=None) as bar:
    for start in range(0, len(source), chunk):
      examples = source.__getitems__(range(start, min(start + chunk, len(source))))
      yield from examples
      bar.update(len(examples))


def tfds_documents(spec: str) -> list[list[str]]:
  """A prepared tfds dataset's text feature as documents (see `open_tfds`)."""
  _, features, name, split = open_tfds(spec)
  field = _text_feature(features, name)
  documents = []
  for example in tfds_examples(spec):
    text = example[field]
    sentences = split_sentences(text.decode('utf-8') if isinstance(text, bytes) else text)
    if sentences:
      documents.append(sentences)
  if not documents:
    raise UserError(f'tfds dataset {name!r} split {split!r} holds no text')
  return documents


def load_documents(corpus: str, *, num_embedded: int, seed: int,
                   doc_mode: str = 'blank_line') -> list[list[str]]:
  """The corpus named by `data.corpus`: 'embedded', 'tfds:NAME[/CONFIG][:SPLIT]', a
  directory from `bertjax data prepare` (its documents decoded, all splits), or a
  text-file glob read with `doc_mode`."""
  if not corpus:
    raise UserError('no corpus is set: pass --config.data.corpus=\'/path/*.txt\' (UTF-8 '
                    'text, documents separated by blank lines), "tfds:NAME" or "embedded"')
  if corpus == 'embedded':
    return embedded_documents(num_embedded, seed)
  if corpus.startswith('tfds:'):
    return tfds_documents(corpus[len('tfds:'):])
  from bertjax.data import prepare
  if prepare.is_prepared(corpus):
    return prepare.decoded_documents(corpus)
  return text_file_documents(corpus, doc_mode)
