"""The embedded corpus: an invented world generated on the spot, so the quickstart
needs no download.

Short biographies whose facts hold across documents (each city lies in one country,
each animal has its own habit, weekdays follow each other, counting goes up by one)
and whose people stay consistent within a document (name, pronoun, home town). A
masked-LM must learn those facts and read the context to fill the blanks, and
next-sentence prediction must notice when segment B talks about somebody else.
`embedded_tasks.py` writes downstream tasks set in the same world.
"""
from __future__ import annotations

import random

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
