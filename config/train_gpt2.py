# Reproduce GPT-2 (124M) on OpenWebText, on one node of 8 GPUs:
# $ torchrun --standalone --nproc_per_node=8 train.py config/train_gpt2.py
wandb_log = True
wandb_project = 'owt'
wandb_run_name = 'gpt2-124M'

# 12 sequences x 1024 tokens x 40 accumulation steps (5 per GPU on 8) = 491,520 tokens, about GPT-2's 0.5M batch
batch_size = 12
block_size = 1024
gradient_accumulation_steps = 5 * 8
max_iters = 600000  # x 491,520 tokens = about 300B tokens
lr_decay_iters = 600000

eval_interval = 1000
eval_iters = 200
log_interval = 10
weight_decay = 1e-1
