"""Distillation (DistilBERT): a frozen teacher's soft targets train a smaller student.

A pre-training config with `distill.teacher` (a bertjax workdir or a Hugging Face
directory with an MLM head) trains its own model, the student, on

  alpha_ce  * T² * KL(softmax(teacher / T) ‖ softmax(student / T))  at masked positions
  + alpha_mlm * the hard pre-training loss (MLM, plus NSP/SOP where the data has it)
  + alpha_cos * (1 - cos(student, teacher)) of the last hidden states, over real tokens,
    where the two are equally wide (else that term is left out, and the run says so).

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
  graphdef: Any   # of a BertForPreTraining
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
  with sharding.activate(mesh, rules):
    abstract = nnx.eval_shape(lambda: heads.build('pretraining', cfg, rngs=nnx.Rngs(0)))
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
