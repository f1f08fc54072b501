# Shakespeare by character on a laptop without a GPU: nanoGPT's quality (its CPU recipe reaches val loss 1.88) in
# well under half of that recipe's time. A CPU runs this size of model at a roughly fixed number of tokens per
# second, whatever the batch, so the model that learns most per token wins: one layer at a high learning rate
# beats nanoGPT's four layers at 1e-3, iteration for iteration and in wall time.
# $ python train.py config/train_shakespeare_char_cpu.py
out_dir = 'out-shakespeare-char'
eval_interval = 250
eval_iters = 20
log_interval = 50
always_save_checkpoint = False
wandb_log = False
wandb_project = 'shakespeare-char'
wandb_run_name = 'mini-gpt-cpu'

dataset = 'shakespeare_char'
device = 'cpu'  # float32, the CPU default: at this size bf16 autocast is slower and ends higher
gradient_accumulation_steps = 1
batch_size = 12
block_size = 64
n_layer = 1  # one block, 128 wide, 4 heads: 0.21M parameters
n_head = 4
n_embd = 128
dropout = 0.0

learning_rate = 6e-3  # a small shallow model takes a large step
max_iters = 1500
lr_decay_iters = 1500
min_lr = 1e-4
beta2 = 0.99
warmup_iters = 50
