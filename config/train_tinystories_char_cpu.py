# TinyStories by character on a laptop without a GPU: about ten minutes of a small model that learns the stories'
# words and simple sentences. The shape and optimizer of config/train_shakespeare_char_cpu_long.py, with a longer
# context for whole sentences. The stories are 1.9 GB: a run this short never sees one twice, so no dropout.
# $ python data/tinystories_char/prepare.py && python train.py config/train_tinystories_char_cpu.py
out_dir = 'out-tinystories-char'
eval_interval = 500
eval_iters = 20
log_interval = 50
always_save_checkpoint = False
wandb_log = False
wandb_project = 'tinystories-char'
wandb_run_name = 'tinystories-char-cpu'

dataset = 'tinystories_char'
device = 'cpu'
gradient_accumulation_steps = 1
batch_size = 16
block_size = 256  # characters of context: a sentence or two
n_layer = 4
n_head = 4
n_embd = 128
dropout = 0.0

optimizer = 'muon'  # at this size it ends far below AdamW in the same time (benchmarks/README.md)
learning_rate = 8e-3
max_iters = 3000
lr_decay_iters = 3000
min_lr = 8e-4
beta2 = 0.99
warmup_iters = 100
