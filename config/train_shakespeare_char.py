# A small character-level Shakespeare model: trains in minutes on one GPU.
# On a laptop without a GPU: config/train_shakespeare_char_cpu.py.
out_dir = 'out-shakespeare-char'
eval_interval = 250  # the model overfits quickly on 1 MB of text, so evaluate often
eval_iters = 200
log_interval = 10
always_save_checkpoint = False  # keep the best model by val loss, not the last one
wandb_log = False
wandb_project = 'shakespeare-char'
wandb_run_name = 'mini-gpt'

dataset = 'shakespeare_char'
gradient_accumulation_steps = 1
batch_size = 64
block_size = 256  # characters of context
n_layer = 6  # 6 layers, 6 heads, 384 wide: about 10.7M parameters
n_head = 6
n_embd = 384
dropout = 0.2

learning_rate = 1e-3  # a small model tolerates a larger step
max_iters = 5000
lr_decay_iters = 5000
min_lr = 1e-4
beta2 = 0.99  # a little higher than GPT-2's, as there are few tokens per iteration
warmup_iters = 100
