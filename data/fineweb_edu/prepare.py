"""FineWeb-Edu in GPT-2 BPE: the hub's sample-10BT streamed or .parquet files (--source), resumable. See readme.md."""
import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
from helpers import UserError, documents, prepare  # noqa: E402

# sample-10BT's documents (a user's count of a full load) for the time left, where the hub's card lacks them
HUB_DOCUMENTS = {('HuggingFaceFW/fineweb-edu', 'sample-10BT'): 9_672_101}

parser = argparse.ArgumentParser(description=__doc__)
parser.add_argument('--source', help="local documents instead of the hub: a file, folder or glob of .parquet "
                                     "or .jsonl/.json files with a 'text' column")
parser.add_argument('--hub_name', default='HuggingFaceFW/fineweb-edu', help='Hugging Face dataset to stream')
parser.add_argument('--hub_config', default='sample-10BT', help='its subset: sample-10BT, sample-100BT, ...')
parser.add_argument('--val_every', type=int, default=1000, help='every val_every-th document goes to val')
parser.add_argument('--name', default='fineweb_edu', help='output folder data/<name>/')
parser.add_argument('--force', action='store_true', help='overwrite data/<name>/ when it holds another dataset')
parser.add_argument('--threads', type=int, default=prepare.usable_cores(), help='threads tokenizing')
parser.add_argument('--chunk_docs', type=int, default=documents.CHUNK_DOCS,
                    help='documents per chunk, the unit of work kept for a resume (the output does not change)')
args = parser.parse_args()
for flag, least in (('val_every', 2), ('threads', 1), ('chunk_docs', 1)):
    if (value := getattr(args, flag)) < least:
        raise UserError(f"--{flag}={value} must be at least {least}")
with prepare.output_dir(args.name, args.force, own='fineweb_edu') as out_dir:
    files = documents.local_files(args.source, documents.STREAMED_TYPES) if args.source else None
    docs, identity, count = documents.stream(args.hub_name, args.hub_config, files)
    documents.gpt2_from_documents([(None, docs)], out_dir, {'documents': identity, 'val_every': args.val_every},
                                  val_every=args.val_every, threads=args.threads, chunk_docs=args.chunk_docs,
                                  count=count or HUB_DOCUMENTS.get((args.hub_name, args.hub_config)))
