# Shakespeare by character on a laptop, for a few minutes: nanoGPT's GPU quality (its GPU config reaches val loss
# 1.47 on an A100) in under four times the wall time of nanoGPT's CPU recipe (which reaches 1.88). A CPU runs a
# model this small at a roughly fixed number of tokens per second, so the recipe is the one that learns most per
# token: Muon for the blocks' matrices (its orthogonalised step moves every direction of a matrix at once) at a
# high learning rate, and many small batches rather than a few large ones. Three layers beat four and two here.
# $ python train.py config/train_shakespeare_char_cpu_long.py
out_dir = 'out-shakespeare-char-long'
eval_interval = 330  # ten evaluations after the first, each as costly as ~10 iterations
eval_iters = 20
log_interval = 50
always_save_checkpoint = False
wandb_log = False
wandb_project = 'shakespeare-char'
wandb_run_name = 'mini-gpt-cpu-long'

dataset = 'shakespeare_char'
device = 'cpu'  # float32, the CPU default: at this size bf16 autocast is no faster and ends higher
gradient_accumulation_steps = 1
batch_size = 16  # 2,048 characters per iteration: half the batch and twice the steps learns more
block_size = 128  # 64 learns less per token, 256 costs more per token
n_layer = 3  # three blocks, 128 wide, 4 heads: 0.6M parameters
n_head = 4
n_embd = 128
dropout = 0.0  # seven passes over the text do not overfit this model, and dropout is slow on a CPU

optimizer = 'muon'  # AdamW for the embeddings and norms, at the same learning rate
learning_rate = 8e-3
max_iters = 3300
lr_decay_iters = 3300
min_lr = 8e-5  # a hundredth of the peak: ends 0.02 lower than nanoGPT's tenth
beta2 = 0.99
warmup_iters = 100
