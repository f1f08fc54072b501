"""A dataset from any UTF-8 text in a byte-level BPE learned from that text (Hugging Face tokenizers): fewer tokens
than characters, and no character is ever unknown. The BPE travels in meta.pkl and every checkpoint.

    python data/bpe/prepare.py --input novel.txt --name novel_bpe --vocab_size=2048   # then --dataset=novel_bpe
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
from helpers import encode, prepare  # noqa: E402

if __name__ == '__main__':
    parser = prepare.own_text_arguments(__doc__)
    parser.add_argument('--vocab_size', type=int, default=2048, help='tokens in the BPE: the 256 bytes and merges')
    args = parser.parse_args()
    prepare.check_input_file(args.input)
    with prepare.output_dir(args.name, args.force) as out_dir:
        encode.bpe_from_file(args.input, out_dir, args.vocab_size, args.val_fraction,
                              'replace' if args.replace_invalid_utf8 else 'strict', args.val_split)
