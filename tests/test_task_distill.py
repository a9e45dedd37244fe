"""Task distillation: a teacher fine-tuned on a task teaches a smaller student its
temperature-softened task logits (classification, tagging, QA) beside the task loss."""
import dataclasses
import json
import math
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bertjax import (checkpoint, config_checks, config_lib, distill, finetune, sharding, steps,
                     train, weights)
from bertjax.cli import main
from bertjax.errors import UserError
from bertjax.tasks import classify, common, qa, tag

from conftest import ROOT

QUICKSTART = os.path.join(ROOT, 'experiments', 'quickstart.py') + ':local'
GLUE = os.path.join(ROOT, 'experiments', 'glue.py')
T = 2.0


def softmax(x):
  e = np.exp(x - x.max(-1, keepdims=True))
  return e / e.sum(-1, keepdims=True)


def hand_kl(student, teacher, temperature):
  """T² · Σ p log(p / q) of one pair of logit vectors, in float64."""
  p = softmax(np.asarray(teacher, np.float64) / temperature)
  q = softmax(np.asarray(student, np.float64) / temperature)
  return temperature ** 2 * float((p * np.log(p / q)).sum())


def task_sum(task, batch, student, teacher, temperature=T):
  return float(distill.soft_target_sum(task.soft_targets(batch, student),
                                       task.soft_targets(batch, teacher), temperature))


def test_classification_soft_targets_match_a_hand_computation():
  s = np.array([[1.0, 2.0, 0.5], [0.0, -1.0, 3.0]], np.float32)
  t = np.array([[2.0, 0.0, 1.0], [1.0, 1.5, -1.0]], np.float32)
  batch = {}
  want = hand_kl(s[0], t[0], T) + hand_kl(s[1], t[1], T)
  assert task_sum(classify, batch, jnp.asarray(s), jnp.asarray(t)) == pytest.approx(want,
                                                                                    rel=1e-5)
  assert task_sum(classify, batch, jnp.asarray(t), jnp.asarray(t)) == pytest.approx(0, abs=1e-6)
  # Regression rows have no distribution: the squared difference to the teacher's value.
  assert task_sum(classify, batch, jnp.asarray([[1.0], [3.0]]),
                  jnp.asarray([[0.5], [1.0]])) == pytest.approx(0.25 + 4.0)


def test_tagging_soft_targets_count_the_labelled_pieces_only():
  rng = np.random.default_rng(0)
  s, t = rng.normal(size=(2, 2, 4, 3)).astype(np.float32)
  batch = {'labels': np.array([[common.IGNORE, 2, 0, common.IGNORE],
                               [common.IGNORE, common.IGNORE, 1, common.IGNORE]])}
  want = sum(hand_kl(s[b, i], t[b, i], T) for b, i in ((0, 1), (0, 2), (1, 2)))
  assert task_sum(tag, batch, jnp.asarray(s), jnp.asarray(t)) == pytest.approx(want, rel=1e-5)
  # Unlabelled pieces may disagree as much as they like.
  loud = t.copy()
  loud[:, 0] += 100.0
  assert task_sum(tag, batch, jnp.asarray(s), jnp.asarray(loud)) == pytest.approx(want, rel=1e-5)
  assert task_sum(tag, batch, jnp.asarray(t), jnp.asarray(t)) == pytest.approx(0, abs=1e-6)


def test_qa_soft_targets_average_start_and_end_over_the_tokens():
  rng = np.random.default_rng(1)
  s_start, s_end, t_start, t_end = rng.normal(size=(4, 2, 5)).astype(np.float32)
  # Row 0 has 3 tokens; row 1 is batch padding (no tokens) and counts nothing.
  batch = {'attention_mask': np.array([[1, 1, 1, 0, 0], [0, 0, 0, 0, 0]])}
  want = (hand_kl(s_start[0, :3], t_start[0, :3], T) + hand_kl(s_end[0, :3], t_end[0, :3], T)) / 2
  got = task_sum(qa, batch, (jnp.asarray(s_start), jnp.asarray(s_end)),
                 (jnp.asarray(t_start), jnp.asarray(t_end)))
  assert got == pytest.approx(want, rel=1e-4)
  same = (jnp.asarray(t_start), jnp.asarray(t_end))
  assert task_sum(qa, batch, same, same) == pytest.approx(0, abs=1e-6)


def test_the_loss_weighs_task_and_soft_target_terms_by_the_alphas():
  cfg = config_lib.ConfigDict(dict(teacher='t', alpha_ce=0.3, alpha_task=2.0, temperature=T))
  base = steps.Objective(build_model=None, batch_sums=None, batch_counts=None,
                         loss_from_sums=lambda sums, c: sums['loss_sum'] / c['count'],
                         metrics_from_sums=lambda sums: dict(loss=sums['loss_sum'] / sums['count']),
                         evaluate=None)
  objective = distill.finetuning(cfg, base, classify, distill.Teacher('t', None, None, 'p'))
  sums = dict(loss_sum=jnp.float32(8.0), kl_sum=jnp.float32(4.0), count=jnp.float32(4.0))
  assert float(objective.loss_from_sums(sums, dict(count=4.0))) == pytest.approx(
      2.0 * 2.0 + 0.3 * 1.0)
  metrics = objective.metrics_from_sums(sums)
  assert (float(metrics['task_loss']), float(metrics['kl_loss'])) == (2.0, 1.0)
  assert objective.extra_inputs == 'p'


def glue(init, **overrides):
  c = config_lib.load_config(f'{GLUE}:local,init={init}')
  return config_lib.apply_overrides(c, [f'{k}={v}' for k, v in overrides.items()])


def write_sentiment(path: str, rows: int, seed: int) -> None:
  """A task any encoder learns in a few steps: 'pos' rows say good, 'neg' rows bad."""
  rng = np.random.default_rng(seed)
  words = ('the', 'city', 'river', 'train', 'was', 'very', 'quite', 'today')
  lines = ['sentence\tlabel']
  for i in range(rows):
    label = ('neg', 'pos')[i % 2]
    text = list(rng.choice(words, 4)) + [('bad', 'good')[i % 2]]
    rng.shuffle(text)
    lines.append(f'{" ".join(text)}\t{label}')
  with open(path, 'w', encoding='utf-8') as f:
    f.write('\n'.join(lines) + '\n')


@pytest.fixture(scope='module')
def runs(tmp_path_factory):
  """A 2-layer pre-trained encoder fine-tuned into a teacher on a 2-label task, and a
  1-layer pre-trained student encoder with the same tokenizer (the embedded corpus,
  the same settings)."""
  root = tmp_path_factory.mktemp('task_distill')
  pretrained, student, teacher = (str(root / n) for n in ('pretrained', 'student', 'teacher'))
  task = {'task.train': str(root / 'train.tsv'), 'task.eval': str(root / 'dev.tsv'),
          'task.seq_len': 16, 'train.batch_size': 16, 'optim.learning_rate': 5e-3,
          'train.eval_every': 16}
  write_sentiment(task['task.train'], 64, 0)
  write_sentiment(task['task.eval'], 32, 1)
  quick = ['train.steps=2', 'train.checkpoint_every=2', 'train.eval_batches=1']
  train.train_and_evaluate(config_lib.apply_overrides(config_lib.load_config(QUICKSTART),
                                                      quick), pretrained)
  train.train_and_evaluate(config_lib.apply_overrides(config_lib.load_config(QUICKSTART),
                                                      [*quick, 'model.num_layers=1']), student)
  finetune.finetune_and_evaluate(glue(pretrained, **task, **{'train.steps': 16}), teacher)
  return dict(pretrained=pretrained, student=student, teacher=teacher, task=task)


def test_a_student_distilled_on_the_task_learns_and_saves_itself_alone(runs, tmp_path):
  workdir = str(tmp_path / 'distilled')
  n = 16  # a 1-layer student fits this task in about 12 steps
  config = glue(runs['student'], **runs['task'], **{
      'distill.teacher': runs['teacher'], 'train.steps': n, 'train.log_every': 1,
      'train.checkpoint_every': n})
  results = finetune.finetune_and_evaluate(config, workdir)
  assert 0.0 <= results['accuracy'] <= 1.0
  records = [json.loads(line) for line in open(os.path.join(workdir, 'metrics.jsonl'))]
  logged = [r for r in records if 'kl_loss' in r]
  assert len(logged) == n and all(math.isfinite(r['loss']) for r in logged)
  first, last = logged[:4], logged[-4:]
  for key in ('loss', 'kl_loss'):
    assert np.mean([r[key] for r in last]) < 0.5 * np.mean([r[key] for r in first])
  # The checkpoint holds the 1-layer student's params alone, none of the 2-layer teacher's.
  student_cfg = weights.source_model_config(workdir)
  assert student_cfg.num_layers == 1
  want = weights.abstract_params('sequence_classification', student_cfg, 2)
  mngr = checkpoint.manager(workdir, keep=1)
  saved = mngr.item_metadata(n)['state']
  assert set(saved) == {'step', 'params', 'opt_state'}
  count = lambda tree: sum(math.prod(x.shape) for x in jax.tree.leaves(
      tree, is_leaf=lambda x: hasattr(x, 'shape')))
  assert count(saved['params']) == count(want)
  assert set(saved['params']['bert']['layers']) == {'0'}


def student_cfg(runs):
  return weights.source_model_config(runs['student'])


def open_teacher(runs, path, kind='sequence_classification', names=None, labels=2, cfg=None,
                 seq_len=16):
  mesh = sharding.make_mesh(config_lib.mesh_defaults())
  rules = sharding.rules_from_config(config_lib.mesh_defaults())
  names = names if names is not None else weights.open_weights(runs['teacher']).label_names
  return distill.open_task_teacher(path, kind, names, labels, cfg or student_cfg(runs), seq_len,
                                   mesh, rules)


def test_the_fine_tuned_teacher_opens_sharded_with_its_head(runs, tmp_path):
  teacher = open_teacher(runs, runs['teacher'])
  assert teacher.model_cfg.num_layers == 2
  assert teacher.params['classifier']['kernel'].shape[-1] == 2
  assert all(isinstance(x.sharding, jax.sharding.NamedSharding)
             for x in jax.tree.leaves(teacher.params))
  # Its Hugging Face export (a BertForSequenceClassification) is the same teacher.
  out = str(tmp_path / 'hf')
  assert main(['export', '--workdir', runs['teacher'], '--format', 'hf', '--out', out]) == 0
  exported = open_teacher(runs, out)
  jax.tree.map(np.testing.assert_array_equal, jax.device_get(exported.params),
               jax.device_get(teacher.params))


def test_teachers_that_cannot_teach_the_task_are_one_line(runs):
  with pytest.raises(UserError, match='is a pre-trained model with no task head'):
    open_teacher(runs, runs['pretrained'])
  with pytest.raises(UserError, match='has 2 labels but the task has 3'):
    open_teacher(runs, runs['teacher'], names=('a', 'b', 'c'), labels=3)
  names = weights.open_weights(runs['teacher']).label_names
  with pytest.raises(UserError, match=r'give the task the teacher\'s order: '
                                      r'--config.task.labels='):
    open_teacher(runs, runs['teacher'], names=tuple(reversed(names)))
  with pytest.raises(UserError, match='is a sequence_classification model but this task '
                                      'trains a token_classification one'):
    open_teacher(runs, runs['teacher'], kind='token_classification')
  with pytest.raises(UserError, match=r'reads at most \d+ positions but task.seq_len is 4096'):
    open_teacher(runs, runs['teacher'], seq_len=4096)
  other_vocab = dataclasses.replace(student_cfg(runs), vocab_size=600)
  with pytest.raises(UserError, match="-token vocabulary but the student's has 600"):
    open_teacher(runs, runs['teacher'], cfg=other_vocab)


def test_distill_weights_are_checked_in_fine_tuning_configs():
  config = glue('/some/init', **{'distill.teacher': '/t', 'distill.alpha_ce': 0.0,
                                 'distill.alpha_task': 0.0})
  with pytest.raises(UserError, match=r'distill.alpha_ce, alpha_task are all 0'):
    config_checks.validate(config)
  with pytest.raises(UserError, match=r'distill.temperature=0.0 must be positive'):
    config_checks.validate(glue('/some/init', **{'distill.temperature': 0.0}))
