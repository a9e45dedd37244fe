"""`bertjax <command>`: the command line. Thin: parse, load config, call the library."""
from __future__ import annotations

import argparse
import math
import sys

from bertjax import __version__
from bertjax.errors import UserError


def _config_from_args(config_spec: str, overrides: list[str]):
  """The experiment's config with the overrides, validated before any work."""
  from bertjax import config_checks, config_lib
  config = config_lib.apply_overrides(config_lib.load_config(config_spec), overrides)
  config_checks.validate(config)
  return config


def split_overrides(unknown: list[str], parser: argparse.ArgumentParser) -> list[str]:
  """Keeps `--config.a.b=v` (or `--config.a.b v`) arguments; anything else is an error."""
  overrides, i = [], 0
  while i < len(unknown):
    arg = unknown[i]
    if not arg.startswith('--config.'):
      parser.error(f'unrecognized argument {arg!r}')
    item = arg[len('--config.'):]
    if '=' not in item:
      if i + 1 >= len(unknown):
        parser.error(f'{arg} needs a value: {arg}=VALUE')
      item, i = f'{item}={unknown[i + 1]}', i + 1
    overrides.append(item)
    i += 1
  return overrides


def _train(args, overrides):
  import jax
  from bertjax import compilation_cache, distributed, finetune, sharding, train
  compilation_cache.setup()
  # Before validation: its backend check would start JAX, which must join hosts first.
  distributed.initialize(args.coordinator_address, args.num_processes, args.process_id,
                         expect_devices=args.expect_devices)
  config = _config_from_args(args.config, overrides)
  # A mesh the devices cannot hold stops here, before the workdir is touched. One host
  # may leave devices out (a reference run); several cannot: each feeds its own.
  shape = dict(zip(sharding.MESH_AXES, sharding.mesh_shape(config.mesh, jax.device_count())))
  if jax.process_count() > 1 and math.prod(shape.values()) != jax.device_count():
    raise UserError(f'mesh {shape} uses {math.prod(shape.values())} of the '
                    f'{jax.device_count()} devices of this {jax.process_count()}-process run; '
                    'size it to all of them, e.g. --config.mesh.data=-1')
  if finetune.is_finetune_config(config):
    finetune.finetune_and_evaluate(config, args.workdir, profile=args.profile)
  else:
    train.train_and_evaluate(config, args.workdir, profile=args.profile)


def _compare(args, overrides):
  config = _config_from_args(args.config, overrides)
  from bertjax.compare import sweep
  sweep.run(config, args.workdir, args.config)


def _evaluate(args, overrides):
  _no_overrides(overrides, 'evaluate')
  from bertjax import evaluate
  evaluate.evaluate_workdir(args.workdir, step=args.step, data=args.data)


def _bench(args, overrides):
  if args.mode == 'data':
    _bench_data(args, overrides)
    return
  if args.corpus:
    raise UserError('--corpus is for `bertjax bench data --corpus DIR`')
  if not (args.config or args.suite):
    raise UserError('bench needs --config FILE.py[:arg] or --suite FILE.py:NAME '
                    '(or: bertjax bench data --corpus PREPARED_DIR)')
  from bertjax import compilation_cache
  cache = (compilation_cache.setup(), compilation_cache.HitCounter())
  if args.finetune != bool(args.workdir):
    raise UserError('--finetune and --workdir go together: bertjax bench --finetune '
                    '--config FILE.py[:arg] --workdir W')
  if args.suite:
    if (args.peers or args.data or args.finetune or args.ablate or args.compile_only
        or args.profile):
      raise UserError('--suite measures the entries of the suite file, their peers '
                      'included; drop --peers, --data, --finetune, --ablate, --compile_only '
                      'and --profile')
    from bertjax.bench import suite
    suite.run(args.suite, overrides, steps_to_time=args.steps, rounds=args.rounds,
              as_json=args.json)
    return
  config = _config_from_args(args.config, overrides)
  if args.ablate:
    if args.peers or args.data or args.finetune or args.compile_only or args.profile:
      raise UserError('--ablate times variants of the step alone; drop --peers, --data, '
                      '--finetune, --compile_only and --profile')
    from bertjax.bench import ablation
    ablation.run(config, args.ablate, rounds=args.rounds, steps_per_round=args.steps,
                 as_json=args.json)
    return
  if args.compile_only and (args.peers or args.data or args.finetune or args.profile):
    raise UserError('--compile_only compiles the step and stops; drop --peers, --data, '
                    '--finetune and --profile')
  if args.profile and (args.peers or args.finetune):
    raise UserError('--profile traces the bench step alone; drop --peers and --finetune')
  if args.finetune:
    if args.peers or args.data:
      raise UserError('--finetune fine-tunes beside transformers; drop --peers and --data')
    from bertjax.bench import finetune
    finetune.run(config, args.workdir, as_json=args.json)
    return
  if args.peers:
    import json
    from bertjax.bench import peers
    systems = peers.select(args.peers)
    rows = peers.compare(config, rounds=args.rounds, steps_per_round=args.steps,
                         with_compile='compile' in systems, with_flax='flax' in systems)
    print(json.dumps(rows) if args.json else peers.format_table(rows))
    return
  from bertjax.bench import step
  step.run(config, steps_to_time=args.steps, as_json=args.json, data_workdir=args.data,
           compile_only=args.compile_only, cache=cache, profile_dir=args.profile)


def _bench_data(args, overrides):
  _no_overrides(overrides, 'bench data')
  if not args.corpus or args.config or args.suite:
    raise UserError('bench data measures a prepared corpus: bertjax bench data --corpus DIR '
                    '(from `bertjax data prepare`), without --config or --suite')
  from bertjax.bench import data
  data.run(args.corpus, kinds=args.kinds, seq_len=args.seq_len, batch=args.batch,
           batches=args.steps, as_json=args.json)


def _import(args, overrides):
  _no_overrides(overrides, 'import')
  from bertjax import hf_convert
  hf_convert.import_hf(args.source, args.workdir)


def _export(args, overrides):
  _no_overrides(overrides, 'export')
  from bertjax import hf_convert
  hf_convert.export_hf(args.workdir, args.out, step=args.step)


def _unlock(args, overrides):
  _no_overrides(overrides, 'unlock')
  from bertjax import run_lock
  holder = run_lock.break_lock(args.workdir)
  print(f'removed the lock that {holder.describe()} held on {args.workdir}' if holder
        else f'{args.workdir} was not locked')


def _no_overrides(overrides, command):
  if overrides:
    raise UserError(f'{command} takes no --config flags (got {overrides[0]!r})')


def build_parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(prog='bertjax', description='Pre-train and fine-tune BERT in JAX.')
  parser.add_argument('--version', action='version', version=f'bertjax {__version__}')
  commands = parser.add_subparsers(dest='command', required=True)
  train = commands.add_parser(
      'train', help='pre-train or fine-tune (or resume) a model',
      description='Train from an experiment file (a config with a `task` group '
      'fine-tunes); extra --config.KEY=VALUE flags override it.')
  train.add_argument('--config', required=True, help='experiments/FILE.py[:arg]')
  train.add_argument('--workdir', required=True, help='run directory; re-running resumes it')
  train.add_argument('--profile', action='store_true',
                     help='write a jax.profiler trace of a few steps to WORKDIR/profile')
  multihost = train.add_argument_group(
      'multi-host', 'autodetected on TPU pods and SLURM; set all three to join explicitly')
  multihost.add_argument('--coordinator_address', help='host:port of process 0')
  multihost.add_argument('--num_processes', type=int)
  multihost.add_argument('--process_id', type=int)
  multihost.add_argument('--expect_devices', type=int, metavar='N',
                         help='stop unless JAX sees at least N devices in all (default: '
                         'what SLURM or the TPU type asked for)')
  train.set_defaults(run=_train)

  cmp = commands.add_parser(
      'compare', help='pre-train one model per masking variant and report side by side',
      description='Runs a masking sweep (e.g. experiments/masking_sweep.py): equal '
      'budgets, held-out MLM both ways, downstream fine-tuning; writes WORKDIR/report.md, '
      'report.csv and plots. Re-running resumes.')
  cmp.add_argument('--config', required=True, help='experiments/FILE.py[:arg]')
  cmp.add_argument('--workdir', required=True)
  cmp.set_defaults(run=_compare)

  ev = commands.add_parser(
      'evaluate', help='print the metrics of a fine-tuned workdir',
      description='Evaluates the best checkpoint of a fine-tuned workdir on its eval split.')
  ev.add_argument('--workdir', required=True)
  ev.add_argument('--step', type=int, default=None,
                  help='evaluate this checkpoint of WORKDIR/checkpoints instead of the best')
  ev.add_argument('--data', default=None,
                  help='evaluate on this file (or tfds spec) instead of the task\'s eval split')
  ev.set_defaults(run=_evaluate)

  imp = commands.add_parser('import', help='turn a Hugging Face BERT directory into a workdir')
  imp.add_argument('--format', choices=['hf'], default='hf')
  imp.add_argument('--from', dest='source', required=True,
                   help='directory with config.json, model.safetensors and a tokenizer')
  imp.add_argument('--workdir', required=True, help='new workdir to create')
  imp.set_defaults(run=_import)

  exp = commands.add_parser('export', help='write a workdir\'s weights for transformers')
  exp.add_argument('--workdir', required=True)
  exp.add_argument('--step', type=int, default=None, help='checkpoint step (default: latest)')
  exp.add_argument('--format', choices=['hf'], default='hf')
  exp.add_argument('--out', required=True,
                   help='output directory: new, empty, or an earlier export, whose files are '
                   'replaced (other files there are kept); any other directory, the workdir '
                   'or a parent of it is refused')
  exp.set_defaults(run=_export)

  unlock = commands.add_parser(
      'unlock', help='break the lock of a workdir whose run is dead',
      description='A running `bertjax train` holds its workdir (WORKDIR/.lock); a lock whose '
      'run was killed expires by itself after five minutes without a heartbeat. This '
      'removes it at once: use it only when that run is gone.')
  unlock.add_argument('--workdir', required=True)
  unlock.set_defaults(run=_unlock)

  bench = commands.add_parser(
      'bench', help='measure train-step throughput (and MFU) of a config',
      description='Times the jitted train step on synthetic batches shaped like the config '
      "and reports XLA's memory analysis of it; with --finetune, fine-tunes beside "
      'transformers instead. Compiled steps are kept in the persistent compilation cache '
      '(BERTJAX_COMPILATION_CACHE, default ~/.cache/bertjax/jax; "off" turns it off).')
  bench.add_argument('mode', nargs='?', choices=['data'],
                     help='data: input-pipeline tokens/s per masking kind on one core, from '
                     'a prepared corpus (--corpus), instead of the train step')
  what = bench.add_mutually_exclusive_group()
  what.add_argument('--config', help='experiments/FILE.py[:arg]')
  what.add_argument('--suite', metavar='FILE.py:NAME',
                    help="the file's get_suite(NAME): several configs in one run, each "
                    'judged against its targets (e.g. experiments/bench.py:h200)')
  bench.add_argument('--steps', type=int, default=20,
                     help='timed steps after warm-up (beside the peers: steps a round; '
                     'bench data: batches a kind)')
  data_flags = bench.add_argument_group('bench data')
  data_flags.add_argument('--corpus', help='a directory from `bertjax data prepare`')
  data_flags.add_argument('--kinds', help='comma-separated masking kinds (default: all)')
  data_flags.add_argument('--seq_len', type=int, default=128)
  data_flags.add_argument('--batch', type=int, default=256)
  bench.add_argument('--json', action='store_true', help='JSON instead of a table')
  bench.add_argument('--data', metavar='WORKDIR',
                     help='also measure padding efficiency of the real input (builds the '
                     'tokenizer into WORKDIR)')
  bench.add_argument('--peers', nargs='?', const='all', metavar='SYSTEMS',
                     help='also run transformers on the same shapes, interleaved, and print '
                     'the ratios: all (the default) or some of eager,compile,flax (PyTorch '
                     'eager is always run)')
  bench.add_argument('--rounds', type=int, default=5,
                     help='interleaved rounds beside the peers or of the --ablate variants')
  bench.add_argument('--compile_only', action='store_true',
                     help='compile the step from shapes alone and report its memory '
                     'analysis, without allocating or timing it')
  bench.add_argument('--profile', metavar='DIR',
                     help='after timing, write a jax.profiler trace of three steps to DIR and '
                     'print its top ops by time (python -m bertjax.bench.profile_summary DIR '
                     'prints it again)')
  bench.add_argument('--ablate', nargs='?', const='all', metavar='VARIANTS',
                     help='time the step beside variants that leave one stage out or change '
                     'it, against the matmul-only floor: all (the default) or some of '
                     'no_dropout,no_optimizer,forward,threefry_dropout,xla_attention,'
                     'cudnn_attention')
  bench.add_argument('--finetune', action='store_true',
                     help="fine-tune the config's init (a Hugging Face directory) with "
                     'bertjax and with transformers alike and print both accuracies and '
                     'wall times (e.g. experiments/agnews.py:init=HF_DIR)')
  bench.add_argument('--workdir', help='with --finetune: holds bertjax/ and side_by_side.json')
  bench.set_defaults(run=_bench)

  att = commands.add_parser(
      'attention', help='draw attention heat maps (one per head) of a model on a text')
  att.add_argument('--workdir', required=True, help='bertjax workdir or Hugging Face directory')
  att.add_argument('--text', required=True)
  att.add_argument('--text_pair', default=None, help='a second segment, as for NSP')
  att.add_argument('--layer', type=int, default=-1, help='layer to draw (default: the last)')
  att.add_argument('--out', required=True, help='PNG file to write')
  from bertjax import attention_maps
  att.set_defaults(run=attention_maps.command)

  from bertjax.data_cli import add_data_commands
  add_data_commands(commands)
  return parser


def main(argv: list[str] | None = None) -> int:
  parser = build_parser()
  args, unknown = parser.parse_known_args(argv)
  overrides = split_overrides(unknown, parser)
  try:
    args.run(args, overrides)
  except UserError as e:
    print(f'bertjax: error: {e}', file=sys.stderr)
    return 2
  except KeyboardInterrupt:
    print('bertjax: interrupted; re-run the same command to resume from the last '
          'checkpoint', file=sys.stderr)
    return 130
  return 0
