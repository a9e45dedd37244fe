"""The house rules of the package's import graph: no cycles, and the lower rooms
(models, data) do not reach into each other or upwards."""
import ast
import re
import os

from conftest import ROOT

PACKAGE = os.path.join(ROOT, 'bertjax')


def import_graph() -> dict[str, set[str]]:
  """bertjax module -> the bertjax modules it imports (at any depth in the file)."""
  modules = {}
  for root, _, files in os.walk(PACKAGE):
    for name in files:
      if name.endswith('.py'):
        path = os.path.join(root, name)
        module = os.path.relpath(path[:-3], ROOT).replace(os.sep, '.')
        modules[module.removesuffix('.__init__')] = path
  graph = {}
  for module, path in modules.items():
    with open(path, encoding='utf-8') as f:
      tree = ast.parse(f.read())
    targets = set()
    for node in ast.walk(tree):
      if isinstance(node, ast.Import):
        targets.update(a.name for a in node.names)
      elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
        targets.add(node.module)
        targets.update(f'{node.module}.{a.name}' for a in node.names)
    graph[module] = {t for t in targets if t in modules and t != module
                     and not module.startswith(t + '.')}
  return graph


def find_cycle(graph):
  state = {}

  def visit(node, path):
    state[node] = 'open'
    for nxt in sorted(graph[node]):
      if state.get(nxt) == 'open':
        return path[path.index(nxt):] + [nxt]
      if nxt not in state:
        found = visit(nxt, path + [nxt])
        if found:
          return found
    state[node] = 'done'
    return None

  for start in sorted(graph):
    if start not in state:
      found = visit(start, [start])
      if found:
        return found
  return None


def test_find_cycle_finds_one():
  assert find_cycle({'a': {'b'}, 'b': {'c'}, 'c': {'a'}, 'd': set()}) == ['a', 'b', 'c', 'a']
  assert find_cycle({'a': {'b'}, 'b': set()}) is None


def test_no_import_cycles():
  cycle = find_cycle(import_graph())
  assert cycle is None, ' -> '.join(cycle)


def test_models_and_data_stay_in_their_rooms():
  graph = import_graph()
  for module, targets in graph.items():
    if module.startswith('bertjax.models'):
      assert not [t for t in targets if t.startswith(('bertjax.data', 'bertjax.tasks'))], module
    if module.startswith('bertjax.data'):
      assert not [t for t in targets if t.startswith('bertjax.models')], module


def test_the_architecture_page_lists_every_module_and_no_other():
  with open(os.path.join(ROOT, 'docs', 'ARCHITECTURE.md'), encoding='utf-8') as f:
    listed = set(re.findall(r'^\| `([\w/]+\.py)` \|', f.read(), re.MULTILINE))
  modules = {os.path.relpath(os.path.join(root, name), PACKAGE).replace(os.sep, '/')
             for root, _, files in os.walk(PACKAGE) for name in files
             if name.endswith('.py') and name not in ('__init__.py', '__main__.py')}
  assert modules - listed == set(), 'add a line to docs/ARCHITECTURE.md for each'
  assert listed - modules == set(), 'these are gone: remove their lines'
