"""Corpora as lists of documents, each a list of sentences.

`embedded_documents` generates the default corpus, so the quickstart needs no
download: short biographies in a small invented world whose facts hold across
documents (each city lies in one country, each animal has its own habit, weekdays
follow each other, counting goes up by one) and whose people stay consistent
within a document (name, pronoun, home town). A masked-LM must learn those facts
and read the context to fill the blanks, and next-sentence prediction must notice
when segment B talks about somebody else.

`text_file_documents` reads local text files: documents separated by blank lines,
one sentence per line or sentences split on terminal punctuation.
"""
from __future__ import annotations

import glob
import os
import random
import re

from bertjax.errors import UserError

_MEN = ('adam', 'boris', 'carlos', 'david', 'emil', 'felix', 'georg', 'hugo', 'ivan',
        'jonas', 'karl', 'leon', 'marco', 'nils', 'oscar', 'pablo', 'rafael', 'simon',
        'tomas', 'viktor')
_WOMEN = ('anna', 'bella', 'clara', 'dora', 'elena', 'frida', 'greta', 'hanna', 'ida',
          'julia', 'karin', 'lena', 'maria', 'nora', 'olga', 'paula', 'rosa', 'sofia',
          'tina', 'vera')
_CITY_COUNTRY = {
    'paris': 'france', 'lyon': 'france', 'nice': 'france',
    'berlin': 'germany', 'munich': 'germany', 'hamburg': 'germany',
    'rome': 'italy', 'milan': 'italy', 'naples': 'italy',
    'madrid': 'spain', 'seville': 'spain', 'valencia': 'spain',
    'oslo': 'norway', 'bergen': 'norway',
    'lisbon': 'portugal', 'porto': 'portugal',
    'vienna': 'austria', 'salzburg': 'austria',
    'athens': 'greece', 'sparta': 'greece',
}
_JOBS = ('baker', 'teacher', 'doctor', 'farmer', 'painter', 'pilot', 'singer', 'tailor',
         'sailor', 'writer', 'nurse', 'carpenter', 'gardener', 'lawyer', 'miller')
_JOB_PLACE = {
    'baker': 'bakery', 'teacher': 'school', 'doctor': 'hospital', 'farmer': 'farm',
    'painter': 'studio', 'pilot': 'airport', 'singer': 'theatre', 'tailor': 'shop',
    'sailor': 'harbour', 'writer': 'library', 'nurse': 'hospital', 'carpenter': 'workshop',
    'gardener': 'park', 'lawyer': 'court', 'miller': 'mill',
}
_ANIMAL_HABIT = {
    'dog': 'barks at the postman', 'cat': 'sleeps on the sofa',
    'bird': 'sings in the morning', 'horse': 'runs in the field',
    'fish': 'swims in a bowl', 'rabbit': 'eats carrots', 'parrot': 'repeats every word',
    'goat': 'climbs the rocks',
}
_COLOURS = ('red', 'green', 'blue', 'black', 'white', 'brown', 'grey', 'yellow')
_PET_NAMES = ('max', 'bella', 'rocky', 'luna', 'pip', 'coco', 'tiger', 'snow', 'lucky',
              'spot')
_FOODS = ('bread', 'rice', 'soup', 'eggs', 'cheese', 'apples', 'porridge', 'fish')
_DRINKS = ('tea', 'coffee', 'milk', 'juice', 'water', 'cocoa')
_DAYS = ('monday', 'tuesday', 'wednesday', 'thursday', 'friday', 'saturday', 'sunday')
_PLACES = ('market', 'river', 'church', 'museum', 'forest', 'beach', 'station', 'garden')
_NUMBERS = ('one', 'two', 'three', 'four', 'five', 'six', 'seven', 'eight', 'nine', 'ten',
            'eleven', 'twelve')
_HOBBIES = ('chess', 'football', 'music', 'swimming', 'cooking', 'dancing', 'fishing',
            'reading')


def _biography(rng: random.Random) -> list[str]:
  female = rng.random() < 0.5
  name = rng.choice(_WOMEN if female else _MEN)
  he, his = ('she', 'her') if female else ('he', 'his')
  home, work_city = rng.sample(sorted(_CITY_COUNTRY), 2)
  job = rng.choice(_JOBS)
  animal = rng.choice(sorted(_ANIMAL_HABIT))
  pet = rng.choice(_PET_NAMES)
  day = rng.randrange(7)
  start = rng.randrange(len(_NUMBERS) - 4)
  count = _NUMBERS[start:start + rng.randint(3, 5)]
  sibling = rng.choice(_MEN if rng.random() < 0.5 else _WOMEN)
  middle = [
      f'{he} works as a {job} in {work_city} .',
      f'every day {he} goes to the {_JOB_PLACE[job]} where the {job} works .',
      f'{work_city} is a city in {_CITY_COUNTRY[work_city]} .',
      f'{name} has a {rng.choice(_COLOURS)} {animal} called {pet} .',
      f'{pet} the {animal} {_ANIMAL_HABIT[animal]} .',
      f'every morning {name} eats {rng.choice(_FOODS)} and drinks {rng.choice(_DRINKS)} .',
      f'on {_DAYS[day]} {he} goes to the {rng.choice(_PLACES)} , and on '
      f'{_DAYS[(day + 1) % 7]} {he} goes to the {rng.choice(_PLACES)} .',
      f'{name} likes to count : {" ".join(count)} .',
      f'{his} favourite hobby is {rng.choice(_HOBBIES)} .',
      f'{name} has a sibling called {sibling} who also lives in {home} .',
  ]
  rng.shuffle(middle)
  return ([f'{name} was born in {home} , a city in {_CITY_COUNTRY[home]} .']
          + middle[:rng.randint(6, len(middle))]
          + [f'{name} is happy to live in {_CITY_COUNTRY[home]} .'])


def embedded_documents(num_documents: int, seed: int = 0) -> list[list[str]]:
  """The generated default corpus: `num_documents` biographies, reproducible by seed."""
  rng = random.Random(seed)
  return [_biography(rng) for _ in range(num_documents)]


_SENTENCE_END = re.compile(r'(?<=[.!?])\s+')


def text_file_documents(pattern: str) -> list[list[str]]:
  """Reads UTF-8 text files; blank lines separate documents."""
  paths = sorted(glob.glob(os.path.expanduser(pattern)))
  if not paths:
    raise UserError(f'corpus {pattern!r} matches no file; set --config.data.corpus to a '
                    'text file or glob, or to "embedded" for the built-in corpus')
  documents = []
  for path in paths:
    try:
      with open(path, encoding='utf-8') as f:
        text = f.read()
    except UnicodeDecodeError as e:
      raise UserError(f'{path} is not UTF-8 text (byte {e.start}); convert it, e.g. '
                      f'iconv -f latin1 -t utf-8') from None
    for block in re.split(r'\n\s*\n', text):
      sentences = [s.strip() for line in block.splitlines()
                   for s in _SENTENCE_END.split(line) if s.strip()]
      if sentences:
        documents.append(sentences)
  if not documents:
    raise UserError(f'corpus {pattern!r} holds no text; point --config.data.corpus at '
                    'non-empty UTF-8 files')
  return documents


def load_documents(corpus: str, *, num_embedded: int, seed: int) -> list[list[str]]:
  if corpus == 'embedded':
    return embedded_documents(num_embedded, seed)
  return text_file_documents(corpus)
