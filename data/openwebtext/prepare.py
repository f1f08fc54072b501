"""OpenWebText in GPT-2 BPE (uint16): about 9B train and 4M val tokens, 17 GB and 8.5 MB.

    python data/openwebtext/prepare.py                        # the Hugging Face hub copy (~54 GB of cache)
    python data/openwebtext/prepare.py --source 'my_corpus/*.txt'   # local files, same code path

Val is a 0.0005 share of the documents (datasets train_test_split, seed 2357, shuffled).
Every document's tokens (tiktoken encode_ordinary) are followed by <|endoftext|> (50256).
"""
import argparse
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(os.path.dirname(HERE)))
from helpers import prepare as dataprep  # noqa: E402

if __name__ == '__main__':
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--source', help='local documents instead of the hub: a file, folder or glob of .txt '
                                         "(one document per file), .json/.jsonl or .parquet files (a 'text' field)")
    parser.add_argument('--hub_name', default='Skylion007/openwebtext', help='Hugging Face dataset to load')
    parser.add_argument('--num_proc', type=int, default=dataprep.cpu_cores(),
                        help='processes for loading and tokenizing')
    parser.add_argument('--name', default='openwebtext', help='output folder data/<name>/')
    parser.add_argument('--force', action='store_true', help='overwrite data/<name>/ when it holds another dataset')
    args = parser.parse_args()
    out_dir = dataprep.output_dir(args.name, args.force, own='openwebtext')
    if args.source:
        _, files = dataprep.local_files(args.source)
        documents = dataprep.load_documents(data_files={'train': files}, num_proc=args.num_proc)
    else:
        documents = dataprep.load_documents(args.hub_name, num_proc=args.num_proc)
    splits = documents['train'].train_test_split(test_size=0.0005, seed=2357, shuffle=True)
    splits['val'] = splits.pop('test')
    dataprep.prepare_bpe_documents(splits, out_dir, num_proc=args.num_proc)
