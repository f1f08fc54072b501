"""A character-level dataset from any UTF-8 text, in any language.

    python data/char/prepare.py --input novel.txt --name doupo      # then train with --dataset=doupo"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
from helpers import encode, prepare  # noqa: E402

args = prepare.own_text_arguments(__doc__).parse_args()
with prepare.output_dir(args.name, args.force) as out_dir:
    encode.chars_from_file(args.input, out_dir, args.val_fraction, args.errors, args.val_split)
