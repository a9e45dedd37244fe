"""The `transformers` 4.x Flax BERT peer of `bertjax bench --peers`, in a subprocess.

`transformers` 5 dropped its Flax models, so this peer runs 4.x's
FlaxBertForPreTraining from a separate directory put first on the subprocess's
sys.path (the main process keeps its own `transformers`). Install it once:

    python -m pip install --target ~/.cache/bertjax/transformers4 --no-deps \\
        'transformers<5' 'huggingface-hub<1' 'tokenizers<0.23'

(`BERTJAX_TRANSFORMERS4` names another directory.) `--no-deps` keeps numpy and the
other shared packages the environment's own. The subprocess builds the same model
shape, trains on the same batch with dropout on, full MLM logits (as `transformers`
computes them), MLM + NSP loss, and the same clipped AdamW as the PyTorch peers,
then runs steps when the parent asks, so rounds interleave with the other systems.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile

import numpy as np

import bertjax

DIR_ENV = 'BERTJAX_TRANSFORMERS4'


class Unavailable(Exception):
  """The peer cannot run here; the message says why, for the table."""


def transformers4_dir() -> str:
  return os.environ.get(DIR_ENV) or os.path.expanduser('~/.cache/bertjax/transformers4')


def installed() -> bool:
  return os.path.isdir(os.path.join(transformers4_dir(), 'transformers'))


def install_command(directory: str) -> str:
  return (f"python -m pip install --target {directory} --no-deps 'transformers<5' "
          "'huggingface-hub<1' 'tokenizers<0.23'")


def start(spec: dict, batch: dict[str, np.ndarray]):
  """Starts the subprocess (it compiles and warms up) and returns run(steps)."""
  directory = transformers4_dir()
  if not installed():
    raise Unavailable(f'transformers 4.x not installed in {directory}; once: '
                      f'{install_command(directory)}')
  work = tempfile.mkdtemp(prefix='bertjax-flax-peer-')
  np.savez(os.path.join(work, 'batch.npz'), **batch)
  with open(os.path.join(work, 'spec.json'), 'w', encoding='utf-8') as f:
    json.dump(spec, f)
  repo = os.path.dirname(os.path.dirname(os.path.abspath(bertjax.__file__)))
  env = dict(os.environ, PYTHONPATH=os.pathsep.join(
      [directory, repo] + [p for p in [os.environ.get('PYTHONPATH')] if p]))
  # The parent already holds its accelerator memory; take only what is needed.
  env['XLA_PYTHON_CLIENT_PREALLOCATE'] = 'false'
  stderr = open(os.path.join(work, 'stderr.txt'), 'w+', encoding='utf-8')
  child = subprocess.Popen([sys.executable, '-m', 'bertjax.bench.flax_peer', work], env=env,
                           stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=stderr,
                           text=True)

  def close():
    child.stdin.close()
    child.wait()
    stderr.close()
    shutil.rmtree(work, ignore_errors=True)

  def reply():
    line = child.stdout.readline().strip()
    if line == 'ok':
      return
    child.wait()
    stderr.seek(0)
    lines = [l for l in stderr.read().splitlines() if l.strip()]
    close()
    raise Unavailable(line.partition(' ')[2] if line.startswith('error') else
                      (lines[-1] if lines else f'exited with status {child.returncode}'))

  reply()  # compiled and warmed up

  def run(n):
    child.stdin.write(f'{n}\n')
    child.stdin.flush()
    reply()
  run.close = close
  return run


def _serve(work: str):
  """The subprocess: train-step loop driven by step counts on stdin."""
  import functools

  import jax
  import jax.numpy as jnp
  import optax
  import transformers
  if not transformers.__version__.startswith('4.'):
    raise Unavailable(f'found transformers {transformers.__version__} first on sys.path, '
                      'not 4.x')
  with open(os.path.join(work, 'spec.json'), encoding='utf-8') as f:
    spec = json.load(f)
  batch = {k: jnp.asarray(v) for k, v in np.load(os.path.join(work, 'batch.npz')).items()}
  model = transformers.FlaxBertForPreTraining(
      transformers.BertConfig(**spec['bert_config']), seed=0,
      input_shape=batch['input_ids'].shape, dtype=jnp.dtype(spec['dtype']))
  o = spec['optim']
  optimizer = optax.chain(optax.clip_by_global_norm(o['clip_norm']),
                          optax.adamw(o['learning_rate'], o['b1'], o['b2'], o['eps'],
                                      weight_decay=o['weight_decay']))

  def loss_fn(params, dropout_rng):
    out = model(batch['input_ids'], batch['attention_mask'], batch['token_type_ids'],
                params=params, dropout_rng=dropout_rng, train=True)
    labels = batch['labels']
    mlm = optax.softmax_cross_entropy_with_integer_labels(
        out.prediction_logits.astype(jnp.float32), jnp.maximum(labels, 0))
    mlm_loss = jnp.sum(mlm * (labels >= 0)) / jnp.sum(labels >= 0)
    nsp = optax.softmax_cross_entropy_with_integer_labels(
        out.seq_relationship_logits.astype(jnp.float32), batch['next_sentence_label'])
    return mlm_loss + nsp.mean()

  @functools.partial(jax.jit, donate_argnums=(0, 1))
  def train_step(params, opt_state, step):
    loss, grads = jax.value_and_grad(loss_fn)(
        params, jax.random.fold_in(jax.random.PRNGKey(0), step))
    updates, opt_state = optimizer.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss

  params = model.params
  state = [params, optimizer.init(params), 0]

  def run(n):
    for _ in range(n):
      state[0], state[1], loss = train_step(state[0], state[1], state[2])
      state[2] += 1
    jax.block_until_ready(loss)

  run(2)  # compile, warm up
  print('ok', flush=True)
  for line in sys.stdin:
    run(int(line))
    print('ok', flush=True)


if __name__ == '__main__':
  try:
    _serve(sys.argv[1])
  except Exception as e:  # reported to the parent as this peer's row
    print(f'error {type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ""}',
          flush=True)
    raise
