"""Tiny shakespeare in GPT-2 BPE: input.txt beside this file (downloaded when missing), split by characters
(the first 90% train, the rest val), each part encoded with tiktoken's encode_ordinary into uint16 train.bin
and val.bin. No meta.pkl: the GPT-2 vocabulary is implied. Run: python data/shakespeare/prepare.py
"""
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(os.path.dirname(HERE)))
from helpers import prepare  # noqa: E402

if __name__ == '__main__':
    text_file = prepare.download(prepare.TINY_SHAKESPEARE_URL, os.path.join(HERE, 'input.txt'))
    prepare.gpt2_from_file(text_file, HERE, val_fraction=0.1)
