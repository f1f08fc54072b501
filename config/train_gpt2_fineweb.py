# GPT-2 (124M) on 10B tokens of FineWeb-Edu, one pass, with the known build-nanogpt / llm.c hyperparameters, on one
# node of 8 GPUs (after python data/fineweb_edu/prepare.py):
# $ torchrun --standalone --nproc_per_node=8 train.py config/train_gpt2_fineweb.py
out_dir = 'out-gpt2-fineweb'
wandb_log = True
wandb_project = 'fineweb-edu'
wandb_run_name = 'gpt2-124M-10B'
dataset = 'fineweb_edu'

# 16 x 1024 tokens x 32 accumulation steps (4 per GPU on 8 GPUs; 32 on one) = 524,288 = 2**19: GPT-3 small's batch
batch_size = 16
block_size = 1024
gradient_accumulation_steps = 4 * 8
max_iters = 19073  # one epoch: 10B tokens / 524,288
lr_decay_iters = 19073
learning_rate = 6e-4  # GPT-3 small's peak
min_lr = 6e-5
warmup_iters = 715  # 375M tokens, as GPT-3 did
weight_decay = 0.1
beta1 = 0.9
beta2 = 0.95

eval_interval = 250
eval_iters = 160  # 20 per GPU: 2.6M of val.bin's ~10M tokens
log_interval = 10
