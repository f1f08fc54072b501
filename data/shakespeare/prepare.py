"""Tiny shakespeare in GPT-2 BPE: input.txt (downloaded when missing) split by characters, 90% train, each part
encoded with tiktoken into uint16 train.bin and val.bin; no meta.pkl. Run: python data/shakespeare/prepare.py"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
from helpers import encode, prepare  # noqa: E402

if __name__ == '__main__':
    with prepare.output_dir('shakespeare', own='shakespeare') as out_dir:
        text_file = prepare.download(prepare.TINY_SHAKESPEARE_URL, os.path.join(out_dir, 'input.txt'))
        encode.gpt2_from_file(text_file, out_dir, val_fraction=0.1)
