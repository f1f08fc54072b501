"""A dataset from any UTF-8 text in a byte-level BPE learned from it: fewer tokens than characters, none unknown.

    python data/bpe/prepare.py --input novel.txt --name novel_bpe --vocab_size=2048   # then --dataset=novel_bpe"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
from helpers import encode, prepare  # noqa: E402

parser = prepare.own_text_arguments(__doc__)
parser.add_argument('--vocab_size', type=int, default=2048, help='tokens in the BPE: the 256 bytes and merges')
args = parser.parse_args()
with prepare.output_dir(args.name, args.force) as out_dir:
    encode.bpe_from_file(args.input, out_dir, args.vocab_size, args.val_fraction, args.errors, args.val_split)
