# Finetune GPT-2 XL on Shakespeare in GPT-2 BPE (prepare it with data/shakespeare/prepare.py).
import time

out_dir = 'out-shakespeare'
eval_interval = 5
eval_iters = 40
wandb_log = False
wandb_project = 'shakespeare'
wandb_run_name = 'ft-' + str(time.time())

dataset = 'shakespeare'
init_from = 'gpt2-xl'
always_save_checkpoint = False  # only keep checkpoints whose val loss improved

# 32,768 tokens per iteration (1 x 32 x 1024): the ~302k train tokens are about 9.2 iterations
batch_size = 1
gradient_accumulation_steps = 32
max_iters = 20
learning_rate = 3e-5  # small and constant: the weights are already trained
decay_lr = False
