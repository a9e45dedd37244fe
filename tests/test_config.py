import os
import re

import pytest

import bertjax
from bertjax import config_checks, config_lib
from bertjax.cli import main
from bertjax.errors import UserError

from conftest import ROOT

QUICKSTART = os.path.join(ROOT, 'experiments', 'quickstart.py')


def test_quickstart_config_is_locked_and_local_variant_shrinks_it():
  full = config_lib.load_config(QUICKSTART)
  local = config_lib.load_config(QUICKSTART + ':local')
  assert local.train.steps < full.train.steps
  assert local.data.embedded_documents < full.data.embedded_documents
  with pytest.raises(AttributeError):
    full.train.new_key = 1  # locked: no new keys


def test_overrides_coerce_types():
  c = config_lib.load_config(QUICKSTART)
  config_lib.apply_overrides(c, ['train.steps=7', 'optim.learning_rate=2e-3',
                                 'data.masking.kind=token', 'optim.weight_decay=0'])
  assert c.train.steps == 7 and isinstance(c.train.steps, int)
  assert c.optim.learning_rate == 2e-3
  assert c.optim.weight_decay == 0.0 and isinstance(c.optim.weight_decay, float)


@pytest.mark.parametrize('override, message', [
    ('train.stepz=3', "train has no 'stepz' (did you mean 'steps'?)"),
    ('trian.steps=3', "the config has no 'trian' (did you mean 'train'?)"),
    ('train.steps=abc', "'train.steps' is int; got 'abc'"),
    ('train.steps=1.5', "'train.steps' is int; got '1.5'"),
    ('train=3', "'train' is a group"),
])
def test_bad_overrides_name_the_key(override, message):
  c = config_lib.load_config(QUICKSTART)
  with pytest.raises(UserError, match=re.escape(message)):
    config_lib.apply_overrides(c, [override])


def test_unknown_config_arg_is_an_error():
  with pytest.raises(UserError, match="unknown config argument 'locl'"):
    config_lib.load_config(QUICKSTART + ':locl')


def test_cli_reports_bad_input_in_one_line(capsys, tmp_path):
  code = main(['train', '--config', QUICKSTART, '--workdir', str(tmp_path),
               '--config.train.stepz=3'])
  err = capsys.readouterr().err
  assert code == 2
  assert err.startswith('bertjax: error: unknown config key') and 'Traceback' not in err
  code = main(['train', '--config', 'experiments/missing.py', '--workdir', str(tmp_path)])
  assert code == 2 and 'not found' in capsys.readouterr().err


def validated(spec, overrides=()):
  config = config_lib.apply_overrides(config_lib.load_config(spec), list(overrides))
  config_checks.validate(config)
  return config


def test_unknown_preset_fails_naming_the_choices():
  with pytest.raises(UserError, match=r"model.preset='huge' is not a preset; choose one of "
                     r'tiny, mini, small, medium, base, large'):
    validated(QUICKSTART, ['model.preset=huge'])


def test_preset_on_the_command_line_sets_the_architecture():
  c = validated(QUICKSTART, ['model.preset=base'])
  sizes = [c.model[k] for k in config_lib.PRESET_KEYS]
  assert (c.model.preset, sizes) == ('base', [12, 768, 12, 3072])
  # Sizes given explicitly win, and the preset no longer names the model.
  c = validated(QUICKSTART, ['model.num_layers=6', 'model.preset=base'])
  assert (c.model.preset, c.model.num_layers, c.model.hidden_size) == ('custom', 6, 768)


def test_preset_is_refused_where_the_weights_fix_the_architecture(tmp_path):
  with pytest.raises(UserError, match='the architecture comes from init'):
    validated(os.path.join(ROOT, 'experiments', 'glue.py') + f':local,init={tmp_path}',
              ['model.preset=large'])


@pytest.mark.parametrize('override, message', [
    ('train.steps=-5', 'train.steps=-5 must be at least 1'),
    ('train.batch_size=0', 'train.batch_size=0 must be at least 1'),
    ('train.keep_checkpoints=0', 'train.keep_checkpoints=0 must be at least 1'),
    ('data.masking.max_predictions=0', 'data.masking.max_predictions=0 must be at least 1'),
    ('optim.learning_rate=-1e-3', 'optim.learning_rate=-0.001 must be positive'),
    ('optim.warmup_steps=-1', 'optim.warmup_steps=-1 must be at least 0'),
    ('data.seq_len=0', 'data.seq_len=0 must be at least 5'),
    ('data.seq_len=4', 'data.seq_len=4 must be at least 5'),
    ('data.masking.max_predictions=65', 'data.masking.max_predictions=65 exceeds data.seq_len'),
    ('data.seq_len=100000000', 'data.seq_len=100000000 exceeds model.max_position_embeddings'),
    ('model.dtype=float8', "model.dtype='float8' is not one of float32, bfloat16, float16"),
    ('model.attention=flash', "model.attention='flash' is not one of xla, cudnn, splash"),
    ('data.masking.kind=words', "data.masking.kind='words' is not one of token, whole_word"),
    ('optim.decay=step', "optim.decay='step' is not one of linear, cosine, constant"),
    ('optim.name=sgd', "optim.name='sgd' is not one of adamw, lamb"),
])
def test_bad_values_fail_naming_key_value_and_fix(override, message):
  key = override.partition('=')[0]
  with pytest.raises(UserError, match=re.escape(message) + f'.*pass --config.{key}='):
    validated(QUICKSTART, [override])


def test_shortest_seq_len_is_what_the_instance_builder_needs():
  # seq_len 9 passes the pair minimum, but pack_documents would loop forever on it.
  with pytest.raises(UserError, match='data.seq_len=9 must be at least 10'):
    validated(QUICKSTART, ['data.packing=true', 'data.seq_len=9'])
  assert validated(QUICKSTART, ['data.packing=true', 'data.seq_len=10']).data.seq_len == 10
  one_segment = ['data.sentence_objective=none', 'data.masking.max_predictions=1']
  assert validated(QUICKSTART, one_segment + ['data.seq_len=4']).data.seq_len == 4
  with pytest.raises(UserError, match='data.seq_len=3 must be at least 4'):
    validated(QUICKSTART, one_segment + ['data.seq_len=3'])


def test_finished_workdir_refuses_another_preset(tmp_path, capsys):
  workdir = tmp_path / 'run'
  run = ['train', '--config', QUICKSTART + ':local', '--workdir', str(workdir),
         '--config.train.steps=1', '--config.train.eval_batches=1']
  assert main(run) == 0
  written = (workdir / 'config.json').read_text()
  capsys.readouterr()
  assert main(run + ['--config.model.preset=mini']) == 2
  assert 'was trained with model.num_layers=2' in capsys.readouterr().err
  assert (workdir / 'config.json').read_text() == written


@pytest.mark.skipif(config_checks._nvidia_gpu(), reason='cudnn runs here')
def test_cudnn_without_an_nvidia_gpu_names_the_fix():
  with pytest.raises(UserError, match="attention='cudnn' needs an NVIDIA GPU, but JAX runs on "
                     r'.*; pass --config.model.attention=xla'):
    validated(QUICKSTART, ['model.attention=cudnn', 'model.attention_dropout_rate=0'])


def test_fine_tuning_and_sweep_configs_are_validated(tmp_path):
  glue = os.path.join(ROOT, 'experiments', 'glue.py') + f':local,init={tmp_path}'
  with pytest.raises(UserError, match='task.seq_len=100000 exceeds'):
    validated(glue, ['task.seq_len=100000'])
  with pytest.raises(UserError, match='train.keep_checkpoints=0 must be at least 1'):
    validated(glue, ['train.keep_checkpoints=0'])
  sweep = os.path.join(ROOT, 'experiments', 'masking_sweep.py:local')
  with pytest.raises(UserError, match='pass --config.pretrain.data.masking.max_predictions='):
    validated(sweep, ['pretrain.data.masking.max_predictions=0'])
  with pytest.raises(UserError, match='pass --config.downstream.optim.learning_rate='):
    validated(sweep, ['downstream.optim.learning_rate=0'])


def test_tuple_override_takes_one_or_more_names():
  glue = os.path.join(ROOT, 'experiments', 'glue.py:local')
  c = config_lib.apply_overrides(config_lib.load_config(glue), ['task.text_columns=sentence'])
  assert c.task.text_columns == ('sentence',)
  c = config_lib.apply_overrides(config_lib.load_config(glue),
                                 ['task.text_columns=question, sentence'])
  assert c.task.text_columns == ('question', 'sentence')
  agnews = config_lib.load_config(os.path.join(ROOT, 'experiments', 'agnews.py'))
  assert config_lib.apply_overrides(agnews, ['task.text_columns=1']).task.text_columns == ('1',)
  message = "'task.text_columns' is a tuple of strings; got '(1, 2)'"
  with pytest.raises(UserError, match=re.escape(message)):
    config_lib.apply_overrides(agnews, ['task.text_columns=(1, 2)'])


def test_get_config_without_a_default_asks_for_the_argument(tmp_path):
  path = tmp_path / 'needs_arg.py'
  path.write_text('def get_config(arg):\n  return arg.split(",")\n')
  with pytest.raises(UserError, match=re.escape(f'pass --config {path}:ARG')):
    config_lib.load_config(str(path))
  own_default = tmp_path / 'own_default.py'
  own_default.write_text('from bertjax import config_lib\n'
                         'def get_config(arg="7"):\n'
                         '  return config_lib.ConfigDict(dict(steps=int(arg)))\n')
  assert config_lib.load_config(str(own_default)).steps == 7  # its default, not None


def test_config_file_must_be_python(tmp_path):
  path = tmp_path / 'quickstart.txt'
  path.write_text('c = 1\n')
  with pytest.raises(UserError, match='is not a Python file'):
    config_lib.load_config(str(path))


def test_missing_relative_experiment_names_where_it_looked(tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)
  with pytest.raises(UserError) as e:
    config_lib.load_config('experiments/quickstart.py')
  assert str(tmp_path / 'experiments' / 'quickstart.py') in str(e.value)
  assert f'the current directory is {tmp_path}' in str(e.value)
  assert f'did you mean --config {QUICKSTART}?' in str(e.value)


def test_version(capsys):
  with pytest.raises(SystemExit) as e:
    main(['--version'])
  assert e.value.code == 0 and capsys.readouterr().out == f'bertjax {bertjax.__version__}\n'


@pytest.mark.parametrize('override', ['model.preset=huge', 'data.seq_len=100000000',
                                      'train.batch_size=0'])
def test_cli_refuses_bad_values_before_any_work(override, capsys, tmp_path):
  workdir = tmp_path / 'run'
  code = main(['train', '--config', QUICKSTART + ':local', '--workdir', str(workdir),
               f'--config.{override}'])
  err = capsys.readouterr().err
  assert code == 2 and err.startswith('bertjax: error: ') and err.count('\n') == 1
  assert not workdir.exists()  # nothing written, no config.json with the bad value
