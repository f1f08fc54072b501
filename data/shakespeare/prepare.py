"""Tiny shakespeare in GPT-2 BPE: input.txt in the dataset's folder (downloaded when missing), split by
characters (the first 90% train, the rest val), each part encoded with tiktoken's encode_ordinary into uint16
train.bin and val.bin. No meta.pkl: the GPT-2 vocabulary is implied. The folder is this one, or shakespeare/
in the folder NANOGPT_DATA_DIR names. Run: python data/shakespeare/prepare.py
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
from helpers import prepare  # noqa: E402

if __name__ == '__main__':
    out_dir = prepare.output_dir('shakespeare', own='shakespeare')
    text_file = prepare.download(prepare.TINY_SHAKESPEARE_URL, os.path.join(out_dir, 'input.txt'))
    prepare.gpt2_from_file(text_file, out_dir, val_fraction=0.1)
