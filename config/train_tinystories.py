# TinyStories in GPT-2 BPE on one GPU: a 6-layer model of short children's stories.
# $ python data/tinystories/prepare.py && python train.py config/train_tinystories.py
# The stories are about 470M tokens: 10,000 iterations of 32,768 tokens see two thirds of them once, so the model
# never repeats a story and needs no dropout.
out_dir = 'out-tinystories'
eval_interval = 500
eval_iters = 100
log_interval = 10
always_save_checkpoint = False
wandb_log = False
wandb_project = 'tinystories'
wandb_run_name = 'tinystories-6x384'

dataset = 'tinystories'
batch_size = 32
block_size = 512  # tokens of context: a whole story, most of the time
gradient_accumulation_steps = 2
n_layer = 6  # 384 wide: 10.6M parameters in the blocks, 19.3M in GPT-2's 50,304-token embedding
n_head = 6
n_embd = 384
dropout = 0.0

learning_rate = 1e-3
max_iters = 10000
lr_decay_iters = 10000
min_lr = 1e-4
beta2 = 0.99
warmup_iters = 500
