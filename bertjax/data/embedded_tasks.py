"""Downstream tasks in the embedded corpus's invented world, written as real files.

`task.train = 'embedded'` makes fine-tuning write these into WORKDIR/data and read
them through the ordinary TSV / CoNLL / SQuAD-JSON readers, so the quickstart and
the masking sweep have a downstream task with no download:
- classify (`task.embedded`, 'country' unless set):
  - country: the country of the city a sentence mentions. The eval sentences name
    cities no training sentence does (one held out per country), so only an encoder
    that learned which city lies where (from pre-training) can score above chance.
    Tiny encoders pre-trained for a few hundred steps have not learned that map (an
    MLM probe ranks the right country first no more often than chance), so they
    stay at chance here however they were masked. And the eval names 8 cities only:
    its accuracy moves in steps of about 1/8, too coarse to rank encoders.
  - word_order: is a corpus-style sentence as written, or were two neighbouring
    words swapped? Which order is right is what MLM pre-training teaches, so a
    pre-trained tiny encoder learns it faster than a random one: an embedded
    classification task whose score depends on the encoder, in ~150 steps of 32.
- tag: PER / LOC / ORG entities (IOB2) in biography-style sentences.
- qa: SQuAD-style questions on generated biographies (home town, job, pet's name).

The task readers open local files only, so for a workdir on a URL (`gs://`) the files
are written to a local directory named after that URL and the seed instead: they are
a function of both, so every host and every resumed run writes the same files and
the config records the same path.
"""
from __future__ import annotations

import hashlib
import json
import os
import random

from bertjax import storage
from bertjax.data import embedded
from bertjax.errors import UserError

_SURNAMES = ('berg', 'costa', 'dietrich', 'ferrari', 'garcia', 'hansen', 'keller', 'lopez',
             'moreau', 'novak', 'olsen', 'petit', 'rossi', 'silva', 'weber')
_COMPANIES = (('north', 'bank'), ('blue', 'river', 'mills'), ('acme',), ('star', 'press'),
              ('green', 'farms'), ('city', 'theatre'))
_CLASSIFY_TEMPLATES = (
    '{name} moved to {city} last year .',
    'the {job} lives in {city} with a {animal} .',
    'every {day} {name} takes the train to {city} .',
    '{name} and {other} met in {city} .',
    'in {city} the {job} opened a small {place} .',
)


def _held_out_cities() -> set[str]:
  """One city per country, kept for evaluation only."""
  seen, held = set(), set()
  for city, country in sorted(embedded.CITY_COUNTRY.items()):
    if country not in seen:
      seen.add(country)
      held.add(city)
  return held


def _write(path: str, text: str) -> None:
  storage.write_atomic(path, text)  # processes of one host may write the same file


def _name(rng: random.Random) -> str:
  return rng.choice(embedded.MEN + embedded.WOMEN)


def write_classify(directory: str, *, train_rows: int = 2000, eval_rows: int = 400,
                   seed: int = 0) -> tuple[str, str]:
  rng = random.Random(seed)
  held = _held_out_cities()
  paths = []
  for split, n in (('train', train_rows), ('dev', eval_rows)):
    cities = sorted(c for c in embedded.CITY_COUNTRY if (c in held) == (split == 'dev'))
    lines = ['sentence\tlabel']
    for _ in range(n):
      city = rng.choice(cities)
      sentence = rng.choice(_CLASSIFY_TEMPLATES).format(
          name=_name(rng), other=_name(rng), city=city, job=rng.choice(embedded.JOBS),
          animal=rng.choice(sorted(embedded.ANIMAL_HABIT)), day=rng.choice(embedded.DAYS),
          place=rng.choice(embedded.PLACES))
      lines.append(f'{sentence}\t{embedded.CITY_COUNTRY[city]}')
    paths.append(os.path.join(directory, f'{split}.tsv'))
    _write(paths[-1], '\n'.join(lines) + '\n')
  return paths[0], paths[1]


def _swap_neighbours(sentence: str, rng: random.Random) -> str:
  """Two neighbouring words swapped, the final '.' left in place."""
  words = sentence.split()
  i = rng.randrange(len(words) - 2)
  words[i], words[i + 1] = words[i + 1], words[i]
  return ' '.join(words)


def write_word_order(directory: str, *, train_rows: int = 2000, eval_rows: int = 400,
                     seed: int = 0) -> tuple[str, str]:
  # Sentences from their own generator stream, not the pre-training corpus's (seed 0
  # there), and half of them with two neighbours swapped.
  paths = []
  for split, n in (('train', train_rows), ('dev', eval_rows)):
    rng = random.Random(f'word_order|{seed}|{split}')
    lines = ['sentence\tlabel']
    while len(lines) <= n:
      for sentence in embedded._biography(rng)[:n + 1 - len(lines)]:
        swapped = _swap_neighbours(sentence, rng) if rng.random() < 0.5 else sentence
        lines.append(f'{swapped}\t{"real" if swapped == sentence else "swapped"}')
    paths.append(os.path.join(directory, f'{split}.tsv'))
    _write(paths[-1], '\n'.join(lines) + '\n')
  return paths[0], paths[1]


def _tagged_sentence(rng: random.Random) -> list[tuple[str, str]]:
  person = [(_name(rng), 'B-PER')] + ([(rng.choice(_SURNAMES), 'I-PER')]
                                      if rng.random() < 0.5 else [])
  city = [(rng.choice(sorted(embedded.CITY_COUNTRY)), 'B-LOC')]
  company = rng.choice(_COMPANIES)
  org = [(w, 'B-ORG' if i == 0 else 'I-ORG') for i, w in enumerate(company)]
  words = lambda text: [(w, 'O') for w in text.split()]  # noqa: E731
  return rng.choice([
      person + words('works for') + org + words('in') + city + words('.'),
      words('in') + city + words(',') + person + words('met a') + [
          (rng.choice(embedded.JOBS), 'O')] + words('.'),
      org + words('opened an office in') + city + words('last') + [
          (rng.choice(embedded.DAYS), 'O')] + words('.'),
      person + words('was born in') + city + words(', a city in') + [
          (embedded.CITY_COUNTRY[city[0][0]], 'B-LOC')] + words('.'),
  ])


def write_tag(directory: str, *, train_rows: int = 1000, eval_rows: int = 200,
              seed: int = 0) -> tuple[str, str]:
  rng = random.Random(seed)
  paths = []
  for split, n in (('train', train_rows), ('dev', eval_rows)):
    blocks = ['-DOCSTART- -X- -X- O\n']
    for _ in range(n):
      blocks.append(''.join(f'{w} {t}\n' for w, t in _tagged_sentence(rng)))
    paths.append(os.path.join(directory, f'{split}.conll'))
    _write(paths[-1], '\n'.join(blocks))
  return paths[0], paths[1]


def _qa_paragraph(rng: random.Random, index: int) -> dict:
  name = _name(rng)
  home = rng.choice(sorted(embedded.CITY_COUNTRY))
  job = rng.choice(embedded.JOBS)
  pet, animal = rng.choice(embedded.PET_NAMES), rng.choice(sorted(embedded.ANIMAL_HABIT))
  sentences = [f'{name} was born in {home} , a city in {embedded.CITY_COUNTRY[home]} .',
               f'{name} works as a {job} .', f'{name} has a {animal} called {pet} .',
               f'every morning {name} drinks {rng.choice(embedded.DRINKS)} .']
  rng.shuffle(sentences)
  context = ' '.join(sentences)
  qas = []
  for q, (question, answer, anchor) in enumerate((
      (f'where was {name} born ?', home, f'born in {home}'),
      (f'what does {name} work as ?', job, f'a {job} .'),
      (f'what is the name of the {animal} ?', pet, f'called {pet}'))):
    start = context.index(anchor) + anchor.index(answer)
    qas.append(dict(id=f'{index}-{q}', question=question,
                    answers=[dict(text=answer, answer_start=start)]))
  return dict(context=context, qas=qas)


def write_qa(directory: str, *, train_rows: int = 600, eval_rows: int = 100,
             seed: int = 0) -> tuple[str, str]:
  rng = random.Random(seed)
  paths = []
  for split, n in (('train', train_rows), ('dev', eval_rows)):
    data = dict(version='1.1', data=[dict(title='embedded', paragraphs=[
        _qa_paragraph(rng, i) for i in range(n)])])
    paths.append(os.path.join(directory, f'{split}.json'))
    _write(paths[-1], json.dumps(data))
  return paths[0], paths[1]


WRITERS = {'classify': write_classify, 'tag': write_tag, 'qa': write_qa}
# The classification tasks by `task.embedded`.
CLASSIFY_WRITERS = {'country': write_classify, 'word_order': write_word_order}


def materialize(task_cfg, directory: str, seed: int) -> None:
  """Writes the embedded task of `task_cfg.kind` into `directory` (a local stand-in
  for a URL, see above) and points task.train / task.eval at the files."""
  if storage.is_url(directory):
    name = task_cfg.kind + ('' if task_cfg.get('embedded', 'country') == 'country'
                            else f'/{task_cfg.embedded}')
    key = hashlib.sha256(f'{directory}|{name}|{seed}'.encode()).hexdigest()[:16]
    directory = os.path.join(storage.default_cache_dir(), 'embedded_tasks', key)
  os.makedirs(directory, exist_ok=True)
  train, dev = _writer(task_cfg)(directory, seed=seed)
  task_cfg.train, task_cfg.eval = train, dev


def _writer(task_cfg):
  if task_cfg.kind != 'classify':
    return WRITERS[task_cfg.kind]
  name = task_cfg.get('embedded', 'country')
  if name not in CLASSIFY_WRITERS:
    raise UserError(f'task.embedded={name!r} is not an embedded classification task; '
                    f'choose one of {", ".join(CLASSIFY_WRITERS)}')
  return CLASSIFY_WRITERS[name]
