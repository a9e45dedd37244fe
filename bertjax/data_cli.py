"""`bertjax data tokenizer|prepare|pmi|tfds|inspect`: build a vocabulary, pre-tokenize a
corpus, build a PMI n-gram vocabulary for PMI masking, build a tensorflow-datasets
dataset from local files, and look at what training will see before spending
accelerator time on it.

`add_data_commands(subparsers)` registers the commands; each sets `run(args,
overrides)` like the commands in `bertjax.cli`.
"""
from __future__ import annotations

import argparse
import os

from bertjax.errors import UserError

_CORPUS_HELP = ('text file or glob, "tfds:NAME[/CONFIG][:SPLIT]" (prepared as array_record '
                'under TFDS_DATA_DIR), a directory from `bertjax data prepare`, or "embedded"')


def _no_overrides(overrides, command):
  if overrides:
    raise UserError(f'data {command} takes no --config flags (got {overrides[0]!r})')


def _check_writable_url(out_dir: str) -> None:
  """A wrong bucket or missing credentials: one line before the work, not a traceback
  after it (a local directory is made when written)."""
  from bertjax import storage
  if storage.is_url(out_dir):
    storage.check_writable(out_dir)


def _documents(args):
  from bertjax.data import corpus
  return corpus.load_documents(args.corpus, num_embedded=args.embedded_documents,
                               seed=args.seed, doc_mode=args.doc_mode)


def _tokenizer(args, overrides):
  _no_overrides(overrides, 'tokenizer')
  import tqdm
  from bertjax.data import tokenizer
  _check_writable_url(args.out)
  documents = _documents(args)
  sentences = (s for doc in tqdm.tqdm(documents, desc='training SentencePiece', unit='doc',
                                      disable=None) for s in doc)
  path = os.path.join(args.out, 'spm.model')
  try:
    tok = tokenizer.train_sentencepiece(sentences, path, vocab_size=args.vocab_size,
                                        model_type=args.model)
  except RuntimeError as e:  # its message names the setting to change
    raise UserError(f'SentencePiece cannot train on {args.corpus}: '
                    f'{str(e).strip().splitlines()[-1]}') from None
  print(f'wrote {path}: {args.model}, {tok.vocab_size} pieces from {len(documents)} documents')


def _prepare(args, overrides):
  _no_overrides(overrides, 'prepare')
  from bertjax.data import instances, prepare
  settings = None
  if args.seq_len:
    settings = instances.InstanceSettings(
        seq_len=args.seq_len, short_seq_prob=args.short_seq_prob,
        sentence_objective=args.sentence_objective, packing=args.packing)
  manifest = prepare.prepare(args.corpus, args.out, args.tokenizer, doc_mode=args.doc_mode,
                             seed=args.seed, eval_fraction=args.eval_fraction,
                             num_embedded=args.embedded_documents, instance_settings=settings)
  for split, counts in manifest['splits'].items():
    print(f'{split}: {counts["documents"]} documents, {counts["sentences"]} sentences, '
          f'{counts["tokens"]} tokens in {len(counts["shards"])} shard(s)')
  for split, counts in manifest.get('instances', {}).get('splits', {}).items():
    print(f'{split}: {counts["rows"]} instances of {args.seq_len} tokens')
  print(f'wrote {args.out}; train on it with --config.data.corpus={args.out}')


def _pmi(args, overrides):
  _no_overrides(overrides, 'pmi')
  import tqdm
  from bertjax.data import pmi, prepared, tokenizer
  _check_writable_url(os.path.dirname(args.out))
  min_count = pmi.DEFAULT_MIN_COUNT if args.min_count is None else args.min_count
  size = pmi.DEFAULT_SIZE if args.size is None else args.size
  tok = tokenizer.load(args.tokenizer)
  if prepared.is_prepared(args.corpus):  # already tokenized (checked against --tokenizer)
    sentences = (s.tolist() for split in prepared.read_manifest(args.corpus)['splits']
                 for d in prepared.load_prepared(args.corpus, split, tok) for s in d)
  else:
    documents = _documents(args)
    sentences = (tok.encode(s) for d in tqdm.tqdm(documents, desc='counting n-grams',
                                                  unit='doc', disable=None) for s in d)
  ngrams = pmi.build(sentences, tok, min_count=min_count, size=size, max_n=args.max_n)
  pmi.save(args.out, ngrams, tok, min_count=min_count, max_n=args.max_n,
           corpus=args.corpus)
  shown = ', '.join(repr(g['text']) for g in ngrams[:5])
  print(f'wrote {args.out}: {len(ngrams)} n-grams of 2..{args.max_n} words seen at least '
        f'{min_count} times (highest PMI: {shown}); mask with '
        f'--config.data.masking.kind=pmi --config.data.masking.pmi_vocab={args.out}')


def _pieces(tok, ids) -> str:
  """A sentence as whole-word masking sees it: [words], pieces joined by '·'."""
  words = []
  for i in ids:
    piece = tok.id_to_piece(i)
    if tok.word_start_V[i] or not words:
      words.append([piece])
    else:
      words[-1].append(piece)
  return ' '.join('[' + '·'.join(w) + ']' for w in words)


def _inspect(args, overrides):
  _no_overrides(overrides, 'inspect')
  from bertjax.data import prepared, tokenizer
  if prepared.is_prepared(args.corpus):
    tok = (tokenizer.load(args.tokenizer) if args.tokenizer
           else prepared.prepared_tokenizer(args.corpus))
    ids_docs = [d for split in prepared.read_manifest(args.corpus)['splits']
                for d in prepared.load_prepared(args.corpus, split, tok)]
    documents = [[tok.decode(s) for s in d] for d in ids_docs[:args.n]]
  else:
    documents = _documents(args)
    tok = tokenizer.load(args.tokenizer) if args.tokenizer else None
    if tok is not None:
      import tqdm
      ids_docs = [[tok.encode(s) for s in d]
                  for d in tqdm.tqdm(documents, desc='tokenizing', unit='doc', disable=None)]
    else:
      ids_docs = None
  num_sentences = sum(len(d) for d in (ids_docs or documents))
  print(f'corpus {args.corpus}: {len(ids_docs or documents)} documents, '
        f'{num_sentences} sentences')
  if tok is not None:
    lengths = [len(s) for d in ids_docs for s in d]
    unk = sum(int(i == tok.unk_id) for d in ids_docs for s in d for i in s)
    print(f'tokens: {sum(lengths)} ({sum(lengths) / max(1, num_sentences):.1f} a sentence, '
          f'max {max(lengths, default=0)}), [UNK] {unk}, vocab {tok.vocab_size}')
  for n, doc in enumerate(documents[:args.n]):
    print(f'--- document {n}: {len(doc)} sentences')
    for k, sentence in enumerate(doc[:args.sentences]):
      print(f'  {sentence}')
      if tok is not None:
        print(f'    {_pieces(tok, ids_docs[n][k])}')


def _tfds(args, overrides):
  _no_overrides(overrides, 'tfds')
  from bertjax.data import tfds_builders
  data_dir = args.data_dir or os.environ.get('TFDS_DATA_DIR')  # None: tfds's default
  if args.corpus:
    builder = tfds_builders.build_text_dataset(
        args.corpus, data_dir, name=args.name, doc_mode=args.doc_mode,
        eval_fraction=args.eval_fraction, seed=args.seed)
  else:
    if args.text_a is None or args.label is None:
      raise UserError('data tfds --tsv needs --text_a and --label (header names, or 0-based '
                      'indices with --no_header)')
    builder = tfds_builders.build_tsv_dataset(
        dict(_split_file(f) for f in args.tsv), data_dir, name=args.name,
        text_a=_column(args.text_a, args), label=_column(args.label, args),
        text_b=None if args.text_b is None else _column(args.text_b, args),
        header=not args.no_header)
  for split, info in sorted(builder.info.splits.items()):
    print(f'{split}: {info.num_examples} examples')
  name = f'{builder.name}/{args.name}'
  print(f'wrote {builder.data_dir}; read it with TFDS_DATA_DIR={builder.data_dir_root} and '
        f'tfds:{name}')


def _column(value: str, args) -> str | int:
  if not args.no_header:
    return value
  try:
    return int(value)
  except ValueError:
    raise UserError(f'with --no_header a column is a 0-based index, not {value!r}') from None


def _split_file(text: str) -> tuple[str, str]:
  split, sep, path = text.partition('=')
  if not sep or not split or not path:
    raise UserError(f'--tsv {text!r} is not SPLIT=PATH; write e.g. --tsv train=train.tsv')
  return split, path


def add_data_commands(subparsers) -> argparse.ArgumentParser:
  """Registers `data` with its subcommands on the `bertjax` subparsers object."""
  data = subparsers.add_parser('data', help='build a tokenizer, pre-tokenize or inspect a corpus')
  commands = data.add_subparsers(dest='data_command', required=True)

  def corpus_parser(name, help_text):
    p = commands.add_parser(name, help=help_text, description=help_text)
    p.add_argument('--corpus', required=True, help=_CORPUS_HELP)
    p.add_argument('--doc_mode', choices=['file', 'blank_line', 'line'], default='blank_line',
                   help='for text files: what one document is (default: blank-line blocks)')
    p.add_argument('--seed', type=int, default=0)
    p.add_argument('--embedded_documents', type=int, default=4000,
                   help='documents to generate for --corpus embedded')
    return p

  tok = corpus_parser('tokenizer', 'train a SentencePiece model with the BERT special tokens')
  tok.add_argument('--out', required=True, help='directory to write spm.model into')
  tok.add_argument('--vocab_size', type=int, required=True)
  tok.add_argument('--model', choices=['unigram', 'bpe'], default='unigram')
  tok.set_defaults(run=_tokenizer)

  prep = corpus_parser('prepare', 'tokenize a corpus once, sentence-split, into array_record')
  prep.add_argument('--tokenizer', required=True, help='directory with spm.model or vocab.txt')
  prep.add_argument('--out', required=True, help='directory to write (replaced if prepared)')
  prep.add_argument('--eval_fraction', type=float, default=0.0,
                    help='documents to hold out as split "eval"')
  prep.add_argument('--seq_len', type=int, default=0,
                    help='also build instances of this length (0: documents only); training '
                    'with the same data settings then reads rows from disk')
  prep.add_argument('--short_seq_prob', type=float, default=0.1)
  prep.add_argument('--sentence_objective', choices=['nsp', 'sop', 'none'], default='nsp')
  prep.add_argument('--packing', action='store_true', help='pack documents into full rows')
  prep.set_defaults(run=_prepare)

  pmi_cmd = corpus_parser('pmi', 'build the PMI n-gram vocabulary that PMI masking masks '
                          'as units (Levine et al. 2021)')
  pmi_cmd.add_argument('--tokenizer', required=True,
                       help='directory with spm.model or vocab.txt: the training run\'s tokenizer')
  pmi_cmd.add_argument('--out', required=True, help='the vocabulary file to write (JSON)')
  # Defaults in bertjax.data.pmi, resolved when the command runs: the parser imports
  # no data module, so `bertjax --help` stays quick.
  pmi_cmd.add_argument('--min_count', type=int,
                       help='n-grams seen fewer times are not scored (default: '
                       'DEFAULT_MIN_COUNT in bertjax/data/pmi.py)')
  pmi_cmd.add_argument('--size', type=int,
                       help='n-grams to keep, highest PMI first (default: DEFAULT_SIZE in '
                       'bertjax/data/pmi.py, as the paper keeps ~800K)')
  pmi_cmd.add_argument('--max_n', type=int, default=5, help='longest n-gram in words (2..5)')
  pmi_cmd.set_defaults(run=_pmi)

  tfds_help = ('build a tensorflow-datasets dataset (array_record) from text files '
               '(local_text/NAME) or TSV files (local_tsv/NAME)')
  tf = commands.add_parser('tfds', help=tfds_help, description=tfds_help)
  source = tf.add_mutually_exclusive_group(required=True)
  source.add_argument('--corpus', help='text file or glob: one document a --doc_mode unit')
  source.add_argument('--tsv', action='append', metavar='SPLIT=PATH',
                      help='a split\'s TSV file or glob (repeat for each split)')
  tf.add_argument('--name', required=True, help='the builder config name: local_text/NAME')
  tf.add_argument('--data_dir', help='where to write (default: TFDS_DATA_DIR, else '
                  '~/tensorflow_datasets)')
  tf.add_argument('--doc_mode', choices=['file', 'blank_line', 'line'], default='blank_line',
                  help='for --corpus: what one document is (default: blank-line blocks)')
  tf.add_argument('--eval_fraction', type=float, default=0.0,
                  help='for --corpus: documents to hold out as split "eval"')
  tf.add_argument('--seed', type=int, default=0, help='for --corpus: picks the held-out ones')
  tf.add_argument('--text_a', help='for --tsv: the first text column (header name, or '
                  '0-based index with --no_header)')
  tf.add_argument('--text_b', help='for --tsv: the optional second text column')
  tf.add_argument('--label', help='for --tsv: the label column')
  tf.add_argument('--no_header', action='store_true', help='for --tsv: the files have no '
                  'header row, so columns are 0-based indices')
  tf.set_defaults(run=_tfds)

  insp = corpus_parser('inspect', 'print counts and a few documents, tokenized if asked')
  insp.add_argument('--tokenizer', help='directory with spm.model or vocab.txt')
  insp.add_argument('--n', type=int, default=3, help='documents to show')
  insp.add_argument('--sentences', type=int, default=5, help='sentences to show a document')
  insp.set_defaults(run=_inspect)
  return data
