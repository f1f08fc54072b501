"""OpenWebText in GPT-2 BPE (uint16): about 9B train and 4M val tokens, 17 GB and 8.5 MB.

    python data/openwebtext/prepare.py                        # the Hugging Face hub copy (~54 GB of cache)
    python data/openwebtext/prepare.py --source 'my_corpus/*.txt'   # local files, same code path

Val is a 0.0005 share of the documents (datasets train_test_split, seed 2357, shuffled).
Every document's tokens (tiktoken encode_ordinary) are followed by <|endoftext|> (50256).
"""
import argparse
import glob
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
from helpers import prepare, UserError  # noqa: E402


def local_files(source):
    """The files that a file name, a glob or a folder names, sorted so that the output is deterministic."""
    if os.path.isdir(source):   # of a folder, the files of the types load_documents reads
        files = [f for f in glob.glob(os.path.join(source, '**', '*'), recursive=True, include_hidden=True)
                 if os.path.splitext(f)[1] in prepare.LOCAL_BUILDERS]
    else:
        files = glob.glob(source, recursive=True) if glob.has_magic(source) else [source]
    files = sorted(filter(os.path.isfile, files))
    if not files:
        raise UserError(f"--source={source} names no files; give a file, a folder or a glob of "
                        ".txt, .json, .jsonl or .parquet files")
    return [prepare.check_input_file(f, '--source') for f in files]


if __name__ == '__main__':
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--source', help='local documents instead of the hub: a file, folder or glob of .txt '
                                         "(one document per file), .json/.jsonl or .parquet files (a 'text' field)")
    parser.add_argument('--hub_name', default='Skylion007/openwebtext', help='Hugging Face dataset to load')
    parser.add_argument('--num_proc', type=int, default=prepare.usable_cores(),
                        help='processes for loading and tokenizing')
    parser.add_argument('--name', default='openwebtext', help='output folder data/<name>/')
    parser.add_argument('--force', action='store_true', help='overwrite data/<name>/ when it holds another dataset')
    args = parser.parse_args()
    out_dir = prepare.output_dir(args.name, args.force, own='openwebtext')
    files = {'train': local_files(args.source)} if args.source else None
    documents = prepare.load_documents(args.hub_name, files, num_proc=args.num_proc)
    splits = documents['train'].train_test_split(test_size=0.0005, seed=2357, shuffle=True)
    splits['val'] = splits.pop('test')
    prepare.gpt2_from_documents(splits, out_dir, num_proc=args.num_proc)
