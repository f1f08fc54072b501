"""A character-level dataset from any UTF-8 text, in any language.

    python data/char/prepare.py --input novel.txt --name doupo      # then train with --dataset=doupo
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
from helpers import prepare  # noqa: E402

if __name__ == '__main__':
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--input', required=True, help='a UTF-8 text file')
    parser.add_argument('--name', required=True, help='the dataset name: output goes to data/<name>/')
    parser.add_argument('--val_fraction', type=float, default=0.1, help='share of characters, at the end, for val')
    parser.add_argument('--force', action='store_true', help='overwrite data/<name>/ when it already holds a dataset')
    parser.add_argument('--replace_invalid_utf8', action='store_true',
                        help='replace bytes that are not UTF-8 with U+FFFD instead of stopping')
    args = parser.parse_args()
    prepare.check_input_file(args.input)
    with prepare.output_dir(args.name, args.force) as out_dir:
        prepare.chars_from_file(args.input, out_dir, args.val_fraction,
                                errors='replace' if args.replace_invalid_utf8 else 'strict')
