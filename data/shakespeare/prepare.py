"""Tiny shakespeare in GPT-2 BPE (tiktoken encode_ordinary).

Reads input.txt beside this file (downloaded when missing), splits it by characters (first
90% train, last 10% val) and writes train.bin and val.bin as uint16 GPT-2 token ids.
No meta.pkl: the GPT-2 vocabulary is implied. Run: python data/shakespeare/prepare.py
"""
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(os.path.dirname(HERE)))
from helpers import prepare as dataprep  # noqa: E402

if __name__ == '__main__':
    text_file = dataprep.download(dataprep.TINY_SHAKESPEARE_URL, os.path.join(HERE, 'input.txt'))
    dataprep.prepare_bpe_text_file(text_file, HERE, val_fraction=0.1)
