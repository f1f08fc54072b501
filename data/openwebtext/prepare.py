"""OpenWebText in GPT-2 BPE, from the Hugging Face hub or local files (--source), split as nanoGPT's. See readme.md."""
import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
from helpers import documents, prepare  # noqa: E402

if __name__ == '__main__':   # load_dataset's worker processes (spawned on macOS) import this file again
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument('--source', help='local documents instead of the hub: a file, folder or glob of .txt '
                                         "(one document per file), .json/.jsonl or .parquet files (a 'text' field)")
    parser.add_argument('--hub_name', default='Skylion007/openwebtext', help='Hugging Face dataset to load')
    parser.add_argument('--num_proc', type=int, default=prepare.usable_cores(),
                        help='processes for loading (tokenizing uses a thread per core)')
    parser.add_argument('--name', default='openwebtext', help='output folder data/<name>/')
    parser.add_argument('--force', action='store_true', help='overwrite data/<name>/ when it holds another dataset')
    args = parser.parse_args()
    with prepare.output_dir(args.name, args.force, own='openwebtext') as out_dir:
        files = documents.local_files(args.source) if args.source else None
        loaded = documents.load_documents(args.hub_name, files and {'train': files}, num_proc=args.num_proc)['train']
        splits = loaded.train_test_split(test_size=0.0005, seed=2357, shuffle=True)
        source = {'documents': documents.identity(files) if files else args.hub_name, 'count': len(loaded),
                  'split': 'train_test_split(test_size=0.0005, seed=2357)'}
        documents.gpt2_from_documents([('train', splits['train']), ('val', splits['test'])], out_dir, source,
                                      count=len(loaded))
