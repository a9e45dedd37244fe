"""Distillation (DistilBERT): a frozen teacher's soft targets train a smaller student.

A pre-training config with `distill.teacher` (a bertjax workdir or a Hugging Face
directory with an MLM head) trains its own model, the student, on

  alpha_ce  * T² * KL(softmax(teacher / T) ‖ softmax(student / T))  at masked positions
  + alpha_mlm * the hard pre-training loss (MLM, plus NSP/SOP where the data has it)
  + alpha_cos * (1 - cos(student, teacher)) of the last hidden states, over real tokens,
    where the two are equally wide (else that term is left out, and the run says so).

A fine-tuning config with `distill.teacher` (a teacher fine-tuned on the same task:
a bertjax workdir or a Hugging Face directory of the task's class) trains its student
on the task with

  alpha_ce   * T² * KL(softmax(teacher / T) ‖ softmax(student / T)) of the task logits:
               per row (classification), per labelled piece (tagging), of the start
               and of the end positions (QA; a regression row: the squared difference)
  + alpha_task * the task's own loss.

The teacher runs in the same jitted step: its params are the step's third argument
(`steps.Objective.extra_inputs`), sharded by the same logical-axis rules as the
student's, never differentiated and never part of the state, so checkpoints hold the
student alone; a resumed run opens the teacher again from `distill.teacher`.
"""
from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from bertjax import reporting, sharding, steps, weights
from bertjax.errors import UserError
from bertjax.models import heads
from bertjax.models.bert import BertConfig
from bertjax.tasks import pretrain


@dataclasses.dataclass(frozen=True)
class Teacher:
  source: str
  model_cfg: BertConfig
  graphdef: Any   # of a BertForPreTraining, or of the task's model
  params: Any     # device arrays, sharded like a student's params of the same shapes


def check_vocabulary(source: str, teacher_vocab: int, student_vocab: int) -> None:
  if teacher_vocab != student_vocab:
    raise UserError(f'distill.teacher={source!r} has a {teacher_vocab}-token vocabulary but '
                    f'the student\'s has {student_vocab}; a student learns from its teacher\'s '
                    'logits token for token: drop init (the student then takes the '
                    'teacher\'s tokenizer) or pick a teacher with the same tokenizer')


def open_teacher(path: str, student_cfg: BertConfig, mesh, rules) -> Teacher:
  """The teacher's params on the devices, sharded like the student's; it runs at the
  student's compute dtype and attention implementation."""
  source = weights.open_weights(path)
  check_vocabulary(path, source.model_cfg.vocab_size, student_cfg.vocab_size)
  cfg = dataclasses.replace(source.model_cfg, dtype=student_cfg.dtype,
                            attention=student_cfg.attention, remat='none')
  fresh = weights.initial_params('pretraining', cfg)
  params, initialised = weights.transplant(source, fresh, 'pretraining')
  if any(name.startswith('cls.predictions.') for name in initialised):
    raise UserError(f'distill.teacher={path!r} has no masked-LM head, so it has no soft '
                    'targets to teach; point distill.teacher at a pre-trained workdir or a '
                    'BertForPreTraining / BertForMaskedLM directory')
  return _on_devices(path, 'pretraining', cfg, params, mesh, rules)


def _on_devices(path: str, kind: str, cfg: BertConfig, params, mesh, rules,
                num_labels: int = 2) -> Teacher:
  """A Teacher of head `kind` whose host `params` are placed like a student's."""
  with sharding.activate(mesh, rules):
    abstract = nnx.eval_shape(lambda: heads.build(kind, cfg, num_labels=num_labels,
                                                  rngs=nnx.Rngs(0)))
    shardings = nnx.to_pure_dict(sharding.param_shardings(nnx.state(abstract), mesh, rules))
    params = jax.jit(lambda p: p, out_shardings=shardings)(params)
  return Teacher(path, cfg, nnx.graphdef(abstract), params)


def soft_target_kl(student_logits, teacher_logits, temperature: float, vocab_size: int):
  """KL(teacher ‖ student) per position over the real vocabulary columns, of the
  logits softened by `temperature`, times temperature² (Hinton et al.): the padded
  columns are cut off here, so they contribute nothing whatever their logits."""
  s = student_logits[..., :vocab_size] / temperature
  t = teacher_logits[..., :vocab_size] / temperature
  log_p_s = jax.nn.log_softmax(s, axis=-1)
  log_p_t = jax.nn.log_softmax(t, axis=-1)
  return (jnp.exp(log_p_t) * (log_p_t - log_p_s)).sum(-1) * temperature ** 2


def cosine_distance(a_BLD, b_BLD):
  """1 - cos(a, b) per token (DistilBERT's cosine embedding loss with target 1)."""
  a, b = a_BLD.astype(jnp.float32), b_BLD.astype(jnp.float32)
  dot = (a * b).sum(-1)
  norms = jnp.linalg.norm(a, axis=-1) * jnp.linalg.norm(b, axis=-1)
  return 1.0 - dot / jnp.maximum(norms, 1e-8)


def pretraining(distill_cfg, model_cfg: BertConfig, teacher: Teacher) -> steps.Objective:
  """Pre-training's objective with the teacher's soft targets added (as sums)."""
  base = steps.pretraining(model_cfg)
  temperature = distill_cfg.temperature
  use_cos = distill_cfg.alpha_cos > 0 and teacher.model_cfg.hidden_size == model_cfg.hidden_size
  if distill_cfg.alpha_cos > 0 and not use_cos:
    reporting.log(f'distill.alpha_cos is left out: the student is {model_cfg.hidden_size} wide, '
                  f'the teacher {teacher.model_cfg.hidden_size}')

  def batch_sums(model, batch, rngs, teacher_params):
    inputs = (batch['input_ids'], batch['token_type_ids'], batch['attention_mask'],
              batch['position_ids'])
    x_BLD, pooled_BD = model.bert(*inputs, rngs=rngs)
    logits = model.head(x_BLD, pooled_BD, batch['mlm_positions'])
    sums = pretrain.sums_from_outputs(model, batch, x_BLD, logits)
    frozen = nnx.merge(teacher.graphdef, jax.lax.stop_gradient(teacher_params))
    t_BLD, t_pooled_BD = frozen.bert(*inputs)  # no rngs: no dropout
    teacher_logits_BPV, _ = frozen.head(t_BLD, t_pooled_BD, batch['mlm_positions'])
    kl_BP = soft_target_kl(logits[0], teacher_logits_BPV, temperature, model_cfg.vocab_size)
    sums['kl_sum'] = (kl_BP * batch['mlm_weights']).sum()
    if use_cos:
      real_BL = (batch['attention_mask'] > 0).astype(jnp.float32)
      sums['cos_sum'] = (cosine_distance(x_BLD, t_BLD) * real_BL).sum()
    return sums

  def batch_counts(batch):
    return dict(base.batch_counts(batch),
                token_count=(batch['attention_mask'] > 0).sum().astype(jnp.float32))

  def loss_from_sums(sums, counts):
    loss = (distill_cfg.alpha_mlm * base.loss_from_sums(sums, counts)
            + distill_cfg.alpha_ce * sums['kl_sum'] / jnp.maximum(counts['mlm_count'], 1.0))
    if use_cos:
      loss += distill_cfg.alpha_cos * sums['cos_sum'] / jnp.maximum(counts['token_count'], 1.0)
    return loss

  def metrics_from_sums(sums):
    metrics = base.metrics_from_sums(sums)
    metrics['kl_loss'] = sums['kl_sum'] / jnp.maximum(sums['mlm_count'], 1.0)
    counts = dict(mlm_count=sums['mlm_count'], nsp_count=sums['nsp_count'],
                  token_count=sums['tokens'])
    if use_cos:
      metrics['cos_loss'] = sums['cos_sum'] / jnp.maximum(sums['tokens'], 1.0)
    metrics['loss'] = loss_from_sums(sums, counts)
    return metrics

  return dataclasses.replace(base, batch_sums=batch_sums, batch_counts=batch_counts,
                             loss_from_sums=loss_from_sums, metrics_from_sums=metrics_from_sums,
                             extra_inputs=teacher.params)


# The head kinds of fine-tuned models; a teacher of another kind has no task logits.
TASK_KINDS = ('sequence_classification', 'token_classification', 'question_answering')


def check_task_head(path: str, teacher: weights.Weights, model_kind: str,
                    label_names: tuple[str, ...], num_labels: int) -> None:
  """Refuses a teacher whose logits do not line up with the student's task head."""
  if teacher.kind not in TASK_KINDS:
    raise UserError(f'distill.teacher={path!r} is a pre-trained model with no task head, so '
                    'it has no task logits to teach; fine-tune it on this task first '
                    f'(--config.init={path}) and point distill.teacher at that workdir')
  if teacher.kind != model_kind:
    raise UserError(f'distill.teacher={path!r} is a {teacher.kind} model but this task trains '
                    f'a {model_kind} one; point distill.teacher at a teacher fine-tuned on '
                    'this task')
  if model_kind == 'question_answering':
    return
  if teacher.num_labels != num_labels:
    raise UserError(f'distill.teacher={path!r} has {teacher.num_labels} labels but the task '
                    f'has {num_labels}; a student learns its teacher\'s logits label for '
                    'label: point distill.teacher at a teacher fine-tuned on this task')
  # Hugging Face's placeholder names (LABEL_0, ...) say nothing about the order.
  named = teacher.label_names != tuple(f'LABEL_{i}' for i in range(len(teacher.label_names)))
  if named and teacher.label_names and label_names and teacher.label_names != label_names:
    raise UserError(f'distill.teacher={path!r} has the labels {list(teacher.label_names)} but '
                    f'the task {list(label_names)}; give the task the teacher\'s order: '
                    f'--config.task.labels={",".join(teacher.label_names)}')


def open_task_teacher(path: str, model_kind: str, label_names: tuple[str, ...],
                      num_labels: int, student_cfg: BertConfig, seq_len: int, mesh,
                      rules) -> Teacher:
  """A teacher fine-tuned on the student's task (a fine-tuned bertjax workdir, whose
  best weights it takes, or a Hugging Face directory of the task's class), on the
  devices like `open_teacher`'s."""
  source = weights.open_weights(path)
  check_vocabulary(path, source.model_cfg.vocab_size, student_cfg.vocab_size)
  check_task_head(path, source, model_kind, label_names, num_labels)
  if source.model_cfg.max_position_embeddings < seq_len:
    raise UserError(f'distill.teacher={path!r} reads at most '
                    f'{source.model_cfg.max_position_embeddings} positions but task.seq_len is '
                    f'{seq_len}; pass --config.task.seq_len='
                    f'{source.model_cfg.max_position_embeddings}')
  cfg = dataclasses.replace(source.model_cfg, dtype=student_cfg.dtype,
                            attention=student_cfg.attention, remat='none')
  fresh = weights.initial_params(model_kind, cfg, num_labels)
  params, _ = weights.transplant(source, fresh, model_kind, num_labels)
  return _on_devices(path, model_kind, cfg, params, mesh, rules, num_labels)


def soft_target_sum(student, teacher, temperature: float):
  """The soft-target loss summed over a batch: `student` and `teacher` are a task's
  `soft_targets` (distributions, weights); per distribution the T²-scaled KL of
  `soft_target_kl` (a regression value: the squared difference, nothing to soften),
  times its weight, averaged over the task's heads (QA: start and end, as its loss)."""
  (student_logits, weights_X), (teacher_logits, _) = student, teacher
  total = 0.0
  for s, t in zip(student_logits, teacher_logits):
    s, t = s.astype(jnp.float32), t.astype(jnp.float32)
    if s.shape[-1] == 1:
      per_X = ((s - t) ** 2)[..., 0]
    else:
      per_X = soft_target_kl(s, t, temperature, s.shape[-1])
    total += (per_X * weights_X).sum()
  return total / len(student_logits)


def finetuning(distill_cfg, base: steps.Objective, task, teacher: Teacher) -> steps.Objective:
  """Fine-tuning objective `base` of `task` (a tasks/ module) with the teacher's soft
  targets added: alpha_task × the task loss + alpha_ce × the soft-target loss, both
  averaged over what the task loss counts (rows, labelled pieces)."""
  temperature = distill_cfg.temperature

  def batch_sums(model, batch, rngs, teacher_params):
    logits = task.logits(model, batch, rngs)
    sums = task.sums_from_logits(batch, logits)
    frozen = nnx.merge(teacher.graphdef, jax.lax.stop_gradient(teacher_params))
    teacher_logits = task.logits(frozen, batch)  # no rngs: no dropout
    sums['kl_sum'] = soft_target_sum(task.soft_targets(batch, logits),
                                     task.soft_targets(batch, teacher_logits), temperature)
    return sums

  def loss_from_sums(sums, counts):
    return (distill_cfg.alpha_task * base.loss_from_sums(sums, counts)
            + distill_cfg.alpha_ce * sums['kl_sum'] / jnp.maximum(counts['count'], 1.0))

  def metrics_from_sums(sums):
    metrics = base.metrics_from_sums(sums)
    metrics['task_loss'] = metrics['loss']
    metrics['kl_loss'] = sums['kl_sum'] / jnp.maximum(sums['count'], 1.0)
    metrics['loss'] = loss_from_sums(sums, dict(count=sums['count']))
    return metrics

  return dataclasses.replace(base, batch_sums=batch_sums, loss_from_sums=loss_from_sums,
                             metrics_from_sums=metrics_from_sums, extra_inputs=teacher.params)


def teacher_layers(teacher_layers: int, student_layers: int) -> list[int]:
  """The teacher layers a student starts from, spread from first to last: DistilBERT's
  0, 2, 4, 7, 9, 11 for 12 -> 6."""
  return [int(i) for i in np.linspace(0, teacher_layers - 1, student_layers).round()]


def student_from_teacher(teacher: Teacher, fresh):
  """The student's first params: the teacher's embeddings, heads and pooler, and the
  teacher layers `teacher_layers` names (`distill.init_from_teacher`). `fresh` gives
  the student's shapes only. Copied on the devices from the teacher's sharded params,
  each into its leaf's sharding (the student's: same rules, same shapes), so no
  weight passes through a host and a run across processes starts the same way."""
  student_layers = sorted(fresh['bert']['layers'], key=int)
  teacher_keys = sorted(teacher.params['bert']['layers'], key=int)
  if len(student_layers) > len(teacher_keys):
    raise UserError(f'distill.init_from_teacher: the student has {len(student_layers)} layers, '
                    f'the teacher only {len(teacher_keys)}; use a shallower student or drop '
                    'init_from_teacher')
  picked = teacher_layers(len(teacher_keys), len(student_layers))
  taught = teacher.params
  layers = {s: taught['bert']['layers'][teacher_keys[t]] for s, t in zip(student_layers, picked)}
  chosen = dict(taught, bert=dict(taught['bert'], layers=layers))
  if jax.tree.map(np.shape, chosen) != jax.tree.map(np.shape, fresh):
    raise UserError('distill.init_from_teacher needs a student as wide as its teacher '
                    f'(hidden_size {teacher.model_cfg.hidden_size}, intermediate_size '
                    f'{teacher.model_cfg.intermediate_size}, {teacher.model_cfg.num_heads} '
                    'heads); set the student\'s model sizes to those, or drop init_from_teacher')
  # Copies, not the teacher's buffers: the train step donates the student's state.
  params = jax.jit(lambda tree: jax.tree.map(jnp.copy, tree),
                   out_shardings=jax.tree.map(lambda x: x.sharding, chosen))(chosen)
  reporting.log(f'student initialised from {teacher.source}: its layers {picked}')
  return params
