"""
Train a GPT: from scratch, from a checkpoint (resume) or from OpenAI's GPT-2 weights.

One process on any device:
$ python train.py config/train_shakespeare_char.py --batch_size=32

Several GPUs on one node (DDP):
$ torchrun --standalone --nproc_per_node=8 train.py config/train_gpt2.py

Several nodes, e.g. two with 8 GPUs each:
- first (master) node, IP 123.456.123.456:
$ torchrun --nproc_per_node=8 --nnodes=2 --node_rank=0 --master_addr=123.456.123.456 --master_port=1234 train.py
- second node:
$ torchrun --nproc_per_node=8 --nnodes=2 --node_rank=1 --master_addr=123.456.123.456 --master_port=1234 train.py
(without Infiniband, prepend NCCL_IB_DISABLE=1)

On a machine without a GPU, DDP runs over gloo:
$ torchrun --standalone --nproc_per_node=2 train.py config/train_shakespeare_char.py --device=cpu
"""
import math
import os
import signal
import sys
import time

STARTED_AT = time.time()  # the log's elapsed times count from here: the whole command, start-up included


def interrupted_during_start_up(signum, frame):
    # no checkpoint exists before the training loop, which installs a handler that saves first; exit
    # at once, as raising could land inside an import half done and print a traceback from there
    print("interrupted during start-up: no checkpoint was written", file=sys.stderr, flush=True)
    os._exit(130)


signal.signal(signal.SIGINT, interrupted_during_start_up)

import torch  # noqa: E402
from torch.distributed import destroy_process_group, init_process_group  # noqa: E402
from torch.nn.parallel import DistributedDataParallel as DDP  # noqa: E402

import configurator  # noqa: E402
from helpers import UserError, checkpoint, data, hardware, metrics, tokenizer  # noqa: E402
from model import GPT, GPTConfig  # noqa: E402

# -----------------------------------------------------------------------------
# default config values: GPT-2 (124M) on OpenWebText
# I/O
out_dir = 'out'
eval_interval = 2000
log_interval = 1
eval_iters = 200
eval_only = False  # if True, script exits right after the first eval
always_save_checkpoint = True  # if True, always save ckpt.pt after each eval, not only when val improves
init_from = 'scratch'  # 'scratch' or 'resume' or 'gpt2*'
overwrite = False  # let a new run (scratch or gpt2*) replace the run already in out_dir
# wandb logging
wandb_log = False
wandb_project = 'owt'
wandb_run_name = 'gpt2'
# data
dataset = 'openwebtext'
gradient_accumulation_steps = 5 * 8  # used to simulate larger batch sizes
batch_size = 12  # micro-batch size; with gradient accumulation the batch is larger
block_size = 1024
# model
n_layer = 12
n_head = 12
n_embd = 768
dropout = 0.0  # 0 is good for pretraining, try 0.1+ for finetuning
bias = False  # biases inside LayerNorm and Linear layers
# AdamW optimizer
learning_rate = 6e-4  # max learning rate
max_iters = 600000  # total number of training iterations
weight_decay = 1e-1
beta1 = 0.9
beta2 = 0.95
grad_clip = 1.0  # clip gradients at this norm, or disable if == 0.0
# learning rate decay settings
decay_lr = True
warmup_iters = 2000
lr_decay_iters = 600000  # should be ~= max_iters per Chinchilla
min_lr = 6e-5  # should be ~= learning_rate/10 per Chinchilla
# DDP settings
backend = 'nccl'  # 'nccl' on GPUs; becomes 'gloo' on CPUs unless set explicitly
fsdp = False  # under torchrun, shard parameters, gradients and optimizer state (fully_shard) instead of DDP
# system
device = hardware.best_device()  # 'cuda', 'cuda:N', 'mps' or 'cpu'; the best one here by default
dtype = hardware.default_dtype(device)  # 'float32', 'bfloat16' or 'float16' (the last uses a GradScaler)
compile = True  # torch.compile the model; off by default where it does not pay (CPU, MPS)
compile_mode = 'default'  # torch.compile's mode: 'reduce-overhead' (CUDA graphs) helps small models on GPUs
seed = 1337
data_on_device = True  # on a GPU, keep a dataset that fits easily in its memory there and sample batches on it
# -----------------------------------------------------------------------------
config_keys = sorted(configurator.settable_keys(globals()))
explicit = configurator.configure(globals())  # {key: where it was set}
ddp = int(os.environ.get('RANK', -1)) != -1  # started by torchrun: one process per GPU (or CPU slot)

# -----------------------------------------------------------------------------
# check the settings before anything is started or written
configurator.require_positive(globals(), 'batch_size', 'block_size', 'gradient_accumulation_steps', 'max_iters',
                             'eval_iters', 'eval_interval', 'log_interval', 'n_layer', 'n_head', 'n_embd')
for name in ('learning_rate', 'min_lr', 'warmup_iters', 'lr_decay_iters', 'weight_decay', 'grad_clip'):
    if globals()[name] < 0:
        raise UserError(f"{name} must not be negative, got {globals()[name]}")
for name, value in (('dropout', dropout), ('beta1', beta1), ('beta2', beta2)):
    if not 0.0 <= value < 1.0:
        raise UserError(f"{name} must be in [0, 1), got {value}")
if n_embd % n_head != 0:
    raise UserError(f"n_embd ({n_embd}) must be divisible by n_head ({n_head}); "
                    f"e.g. --n_embd={n_head * max(1, round(n_embd / n_head))}")
if init_from not in ('scratch', 'resume') and not init_from.startswith('gpt2') and not os.path.isdir(init_from):
    raise UserError(f"unknown init_from '{init_from}'; use scratch, resume, one of gpt2, gpt2-medium, gpt2-large, "
                    "gpt2-xl, or a directory holding a transformers GPT-2 checkpoint")
dtype, ctx = hardware.setup(device, dtype if 'dtype' in explicit else None)
device_type = torch.device(device).type
# settings that follow the device unless the user chose them
if 'compile' not in explicit:
    compile = device_type == 'cuda'  # pays off on GPUs; on CPUs its start-up rarely does
if 'backend' not in explicit:
    backend = 'nccl' if device_type == 'cuda' else 'gloo'
if fsdp and not ddp:
    raise UserError("fsdp=True shards the model across processes started by torchrun; run "
                    "torchrun --standalone --nproc_per_node=N train.py ... --fsdp=True, or drop --fsdp")
if compile_mode not in ('default', 'reduce-overhead', 'max-autotune', 'max-autotune-no-cudagraphs'):
    raise UserError(f"unknown compile_mode '{compile_mode}'; use default, reduce-overhead, max-autotune "
                    "or max-autotune-no-cudagraphs")
if device_type == 'mps' and ddp:
    raise UserError("torchrun with device 'mps' is not supported by PyTorch's DDP; use --device=cpu, or one process")
if fsdp and dtype == 'float16':
    raise UserError("fsdp=True does not support float16's gradient scaler; use --dtype=float32"
                    + (" or bfloat16" if device_type != 'cuda' or hardware.gpu_has_bfloat16() else ""))
micro_steps = gradient_accumulation_steps // int(os.environ.get('WORLD_SIZE', 1))  # per process
if compile and compile_mode in ('reduce-overhead', 'max-autotune') and micro_steps > 1:
    # a CUDA graph's next replay reuses the memory that holds the gradients accumulated so far (pytorch#169545)
    raise UserError(f"compile_mode='{compile_mode}' runs CUDA graphs, which corrupt gradients accumulated over "
                    f"{micro_steps} micro-steps per process; use --compile_mode=max-autotune-no-cudagraphs or default, "
                    "or one micro-step per process (--gradient_accumulation_steps=<number of processes>)")

config = {k: globals()[k] for k in config_keys}  # what the run really uses, stored in checkpoints

# -----------------------------------------------------------------------------
# processes: one, or one per GPU/CPU slot under torchrun
if ddp:
    ddp_rank = int(os.environ['RANK'])
    ddp_local_rank = int(os.environ['LOCAL_RANK'])
    ddp_world_size = int(os.environ['WORLD_SIZE'])
    if gradient_accumulation_steps % ddp_world_size != 0:
        raise UserError(f"gradient_accumulation_steps ({gradient_accumulation_steps}) must be divisible by the number "
                        f"of processes ({ddp_world_size}); e.g. --gradient_accumulation_steps="
                        f"{max(1, gradient_accumulation_steps // ddp_world_size) * ddp_world_size}")
    init_process_group(backend=backend)
    if device_type == 'cuda':
        device = f'cuda:{ddp_local_rank}'
        torch.cuda.set_device(device)
    master_process = ddp_rank == 0  # logs and writes checkpoints
    seed_offset = ddp_rank  # each process draws different batches
    gradient_accumulation_steps //= ddp_world_size
else:
    master_process = True
    seed_offset = 0
    ddp_rank, ddp_world_size = 0, 1

torch.manual_seed(seed)  # the same initial weights in every process (FSDP shards them as they are)

# -----------------------------------------------------------------------------
# data: token files, memory-mapped (or held in GPU memory when small), sampled at random offsets
meta = data.read_meta(dataset)
token_dtype = data.token_dtype(meta)
bin_paths = {split: data.bin_path(dataset, split) for split in ('train', 'val')}
meta_vocab_size = meta['vocab_size'] if meta else None
if meta_vocab_size is not None:
    print(f"found vocab_size = {meta_vocab_size} (inside data/{dataset}/meta.pkl)")
vocabulary = tokenizer.tokenizer_entry(meta)  # stored in checkpoints: what the token ids mean


resident_data = {}  # split -> tokens in device memory, for datasets small enough (see data_on_device)


def get_batch(split, generator):
    if split in resident_data:
        return data.get_resident_batch(resident_data[split], batch_size, block_size, generator)
    return data.get_batch(bin_paths[split], token_dtype, batch_size, block_size, device, generator)


# Batches are drawn from generators seeded by (seed, rank, iteration), so a resumed run
# sees exactly the batches the uninterrupted run would have seen, and evaluation always
# scores the same fixed batches without disturbing training's random stream.
train_generator = torch.Generator()


def seed_train_batches(iteration):
    train_generator.manual_seed(((seed * 1_000_003 + seed_offset) * 1_000_003 + iteration) % (2 ** 63))

# -----------------------------------------------------------------------------
# model
iter_num = 0
best_val_loss = 1e9
model_args = dict(n_layer=n_layer, n_head=n_head, n_embd=n_embd, block_size=block_size, bias=bias,
                  vocab_size=None, dropout=dropout)
resume_state = None
if init_from == 'scratch':
    print("Initializing a new model from scratch")
    if meta_vocab_size is None:
        print("defaulting to vocab_size of GPT-2 to 50304 (50257 rounded up for efficiency)")
    model_args['vocab_size'] = meta_vocab_size if meta_vocab_size is not None else 50304
    model = GPT(GPTConfig(**model_args))
elif init_from == 'resume':
    resume_name = checkpoint.resume_name(out_dir)
    print(f"Resuming training from {os.path.join(out_dir, resume_name)}")
    # on the CPU (the RNG states must stay there), and memory-mapped under torchrun, so that every rank
    # reads the same pages instead of holding a copy of its own
    resume_state = checkpoint.load(out_dir, resume_name, map_location='cpu', mmap=ddp)
    ckpt_args = resume_state['model_args']
    conflicts = [f"{k}={globals()[k]!r} (set by {explicit[k]}; the checkpoint has {ckpt_args[k]!r})"
                 for k in ('n_layer', 'n_head', 'n_embd', 'block_size', 'bias')
                 if k in explicit and ckpt_args[k] != globals()[k]]
    if conflicts:
        raise UserError(f"the checkpoint in {out_dir} has another architecture than asked: {', '.join(conflicts)}; "
                        "resume without those settings (the checkpoint brings its own), or train into a new --out_dir")
    tokenizer.check_dataset(resume_state.get('tokenizer'), meta, dataset)
    if meta_vocab_size is not None and meta_vocab_size != ckpt_args['vocab_size']:
        raise UserError(f"data/{dataset}/meta.pkl has vocab_size {meta_vocab_size} but the checkpoint was trained with "
                        f"{ckpt_args['vocab_size']}; resume on the dataset it was trained on")
    if resume_state['iter_num'] > max_iters and not eval_only:
        print(f"the run in {out_dir} is complete: it ended after iteration {resume_state['iter_num'] - 1} and "
              f"max_iters is {max_iters}; nothing was changed (to train on, resume with a larger --max_iters)")
        if ddp:
            destroy_process_group()
        sys.exit(0)
    model = checkpoint.model_from_checkpoint(resume_state, dropout=dropout)
    # the architecture is the checkpoint's, whatever the defaults say
    n_layer, n_head, n_embd, block_size, bias = (ckpt_args[k] for k in ('n_layer', 'n_head', 'n_embd', 'block_size',
                                                                        'bias'))
    config.update(n_layer=n_layer, n_head=n_head, n_embd=n_embd, block_size=block_size, bias=bias)
    iter_num = resume_state['iter_num']
    best_val_loss = float(resume_state['best_val_loss'])
else:  # gpt2, gpt2-medium, gpt2-large, gpt2-xl, or a transformers GPT-2 directory
    print(f"Initializing from OpenAI GPT-2 weights: {init_from}")
    if meta_vocab_size is not None:
        raise UserError(f"data/{dataset} is a character-level dataset ({meta_vocab_size} symbols) and cannot be used "
                        f"with GPT-2's BPE weights; finetune on a GPT-2 BPE dataset such as shakespeare")
    try:
        model = GPT.from_pretrained(init_from, dict(dropout=dropout))
    except ValueError as e:
        raise UserError(str(e))
    if block_size > model.config.block_size:
        raise UserError(f"block_size {block_size} is larger than {init_from}'s {model.config.block_size}")
    if block_size < model.config.block_size:
        model.crop_block_size(block_size)
for split in bin_paths:
    data.check_split(dataset, split, token_dtype, block_size, meta_vocab_size)
if master_process and not eval_only:  # the first write: out_dir, and its lock held until this process ends
    out_dir_lock = checkpoint.claim_out_dir(out_dir, resuming=init_from == 'resume', overwrite=overwrite)
if not fsdp:  # fully_shard moves each block to the GPU itself, one block at a time
    model.to(device)
torch.manual_seed(seed + seed_offset)  # but different dropout masks
if data_on_device and device_type == 'cuda' and data.fits_on_device(bin_paths.values(), device):
    # small models are bound by per-step overhead: gathering batches on the GPU removes the host work
    resident_data = {split: data.load_to_device(path, token_dtype, device) for split, path in bin_paths.items()}
    print(f"keeping the dataset in {device} memory ({sum(t.numel() for t in resident_data.values()):,} tokens)")
tokens_per_iter = gradient_accumulation_steps * ddp_world_size * batch_size * block_size
peak_flops = hardware.peak_flops(device)  # for MFU; None where unknown (CPUs)
if master_process:
    print("effective configuration: " + ", ".join(f"{k}={config[k]!r}" for k in config_keys))
    print(f"tokens per iteration will be: {tokens_per_iter:,}")

if fsdp:
    # each block is one unit of sharding: its parameters are gathered just before it runs, in
    # bf16 when training in bf16 (half the traffic), and the gradients are reduced in float32
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard
    precision = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32) \
        if dtype == 'bfloat16' else MixedPrecisionPolicy()
    for block in model.transformer.h:
        fully_shard(block, mp_policy=precision)
    fully_shard(model, mp_policy=precision)

# a GradScaler only does something for float16, whose gradients can underflow
scaler = torch.amp.GradScaler(device_type, enabled=(dtype == 'float16'))
optimizer = model.configure_optimizers(weight_decay, learning_rate, (beta1, beta2), device_type)
if resume_state is not None:
    if fsdp:
        checkpoint.load_sharded_optimizer_state(model, optimizer, resume_state['optimizer'])
    else:
        optimizer.load_state_dict(resume_state['optimizer'])
    if resume_state.get('scaler') and scaler.is_enabled():  # a run without float16 saves an empty scaler
        scaler.load_state_dict(resume_state['scaler'])
    if 'rng_states' in resume_state and master_process:
        checkpoint.restore_rng_states(resume_state['rng_states'])
resume_state = None  # free the memory it holds

net = model  # the plain module: its state_dict is what checkpoints hold
if compile:
    print(f"compiling the model (mode {compile_mode})... (takes a ~minute)")
    torch._dynamo.config.suppress_errors = True  # a graph the compiler cannot handle runs eagerly instead of failing
    model = torch.compile(model, mode=compile_mode)
if ddp and not fsdp:
    model = DDP(model, device_ids=[ddp_local_rank] if device_type == 'cuda' else None)
eval_model = model.module if ddp and not fsdp else model  # evaluation needs no gradient sync


@torch.no_grad()
def estimate_loss():
    """Mean loss per split over eval_iters fixed batches (the same ones at every evaluation). Under
    DDP each rank scores its share of the batches; under FSDP every rank runs every batch, as the
    shards must meet in each forward. Either way every rank gets the numbers of one process."""
    out = {}
    eval_model.eval()
    for split in ('train', 'val'):
        generator = torch.Generator().manual_seed(data.eval_batch_seed(seed, split))
        losses = torch.zeros(eval_iters, device=device)
        for k in range(eval_iters):
            X, Y = get_batch(split, generator)  # drawn by every rank, so that the batches are the same set
            if fsdp or k % ddp_world_size == ddp_rank:
                with ctx:
                    losses[k] = eval_model(X, Y)[1]
        if ddp and not fsdp:  # each batch's loss was computed by one rank, the others hold 0 there
            torch.distributed.all_reduce(losses)
        out[split] = losses.mean().item()
    eval_model.train()
    return out


def get_lr(it):
    """Linear warmup (never 0, even at iteration 0), cosine decay, then min_lr."""
    if it < warmup_iters:
        return learning_rate * (it + 1) / (warmup_iters + 1)
    if it >= lr_decay_iters:  # (equal: the cosine has reached min_lr; also no division by zero)
        return min_lr
    decay_ratio = (it - warmup_iters) / (lr_decay_iters - warmup_iters)
    coeff = 0.5 * (1.0 + math.cos(math.pi * decay_ratio))
    return min_lr + coeff * (learning_rate - min_lr)


def save_checkpoint(name):
    """Write a full checkpoint from rank 0. Under FSDP every rank must call it: gathering the shards
    is collective, and the file has the same full-state format as without FSDP."""
    if fsdp:
        model_state, optimizer_state = checkpoint.gather_sharded_state(net, optimizer)
    else:
        model_state, optimizer_state = net.state_dict(), optimizer.state_dict()
    if not master_process:
        return
    if not all(torch.isfinite(v).all() for v in model_state.values() if v.is_floating_point()):
        raise UserError(f"the weights hold NaN or infinite values at iter {iter_num}; nothing was saved over the "
                        f"checkpoints in {out_dir}. Lower --learning_rate, or use --dtype=bfloat16 or float32")
    state = {
        'model': model_state,
        'optimizer': optimizer_state,
        **checkpoint.architecture_entries(net.config),
        'tokenizer': vocabulary,
        'iter_num': iter_num,
        'best_val_loss': best_val_loss,
        'config': config,
        'scaler': scaler.state_dict(),
        'rng_states': checkpoint.capture_rng_states(),
    }
    print(f"saving checkpoint to {checkpoint.save(state, out_dir, name)}")


# Ctrl+C or SIGTERM: finish the current iteration (under torchrun: up to the next log step), save, and exit
# cleanly. A second Ctrl+C quits at once.
stop_signal = None


def request_stop(signum, frame):
    global stop_signal
    if stop_signal is not None and signum == signal.SIGINT:
        raise KeyboardInterrupt
    stop_signal = signal.Signals(signum).name
    if master_process:
        when = "at the next log step" if ddp else f"after iteration {iter_num}"
        print(f"\n{stop_signal} received: stopping {when}, then saving a checkpoint "
              "(press Ctrl+C again to quit without saving)", flush=True)


signal.signal(signal.SIGINT, request_stop)
signal.signal(signal.SIGTERM, request_stop)


def all_ranks_agree_to_stop():
    """Whether any rank was asked to stop. Under torchrun a collective over the training backend,
    called only at log steps, where the loop waits for the device anyway."""
    if not ddp:
        return stop_signal is not None
    flag = torch.tensor([stop_signal is not None], dtype=torch.int32, device=device if backend == 'nccl' else 'cpu')
    torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
    return bool(flag.item())


def duration(seconds):
    seconds = round(seconds)
    return f"{seconds // 3600}h{seconds // 60 % 60:02d}m" if seconds >= 3600 else \
        f"{seconds // 60}m{seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s"


def progress(it):
    """How far the run is after iteration it and the time left, from the recent iteration and
    evaluation times: 'N% done, ... left'."""
    evals_left = max_iters // eval_interval - it // eval_interval
    seconds_left = (max_iters - it) * iter_seconds + evals_left * eval_seconds
    return f"{100 * (it + 1) / (max_iters + 1):.0f}% done, {duration(seconds_left)} left"


if wandb_log and master_process:
    import wandb
    wandb.init(project=wandb_project, name=wandb_run_name, config=config)

# -----------------------------------------------------------------------------
# training loop
logging_metrics = master_process and not eval_only  # an evaluation alone leaves a run's log as it is
if logging_metrics:
    metrics_log = metrics.MetricsLog(out_dir, start_iter=iter_num)  # out_dir/metrics.csv, for plot.py
seed_train_batches(iter_num)
X, Y = get_batch('train', train_generator)  # first batch
timer, timed_iters = time.time(), 0  # iterations since the last log line or evaluation
local_iter_num, log_lines = 0, 0  # iterations run and log lines printed by this process
iter_seconds, eval_seconds, running_mfu = 0.0, 0.0, -1.0
while True:

    lr = get_lr(iter_num) if decay_lr else learning_rate
    for param_group in optimizer.param_groups:
        param_group['lr'] = lr

    if iter_num % eval_interval == 0 or eval_only:
        eval_start = time.time()
        losses = estimate_loss()
        if master_process:
            print(f"step {iter_num}: train loss {losses['train']:.4f}, val loss {losses['val']:.4f} "
                  f"(evaluation {time.time() - eval_start:.1f}s, elapsed {duration(time.time() - STARTED_AT)})")
        if logging_metrics:
            metrics_log.write(iter=iter_num, tokens=iter_num * tokens_per_iter, lr=lr,
                              train_loss=losses['train'], val_loss=losses['val'])
        if not math.isfinite(losses['val']):
            raise UserError(f"val loss is {losses['val']} at iter {iter_num}; nothing was saved over the checkpoints "
                            f"in {out_dir}. Lower --learning_rate, or use --dtype=bfloat16 or float32")
        if wandb_log and master_process:
            wandb.log({"iter": iter_num, "train/loss": losses['train'], "val/loss": losses['val'], "lr": lr,
                       "mfu": running_mfu * 100})
        improved = losses['val'] < best_val_loss
        best_val_loss = min(best_val_loss, losses['val'])
        if iter_num > 0 and not eval_only:
            if improved or always_save_checkpoint:
                save_checkpoint(checkpoint.CKPT_NAME)
                if master_process:
                    checkpoint.mirror(out_dir, checkpoint.CKPT_NAME, checkpoint.LATEST_NAME)
            else:
                save_checkpoint(checkpoint.LATEST_NAME)
        eval_seconds = time.time() - eval_start  # with the saves, for the time left
        timer, timed_iters = time.time(), 0  # iteration times leave evaluations and saves out
    if eval_only:
        break

    # forward and backward over gradient_accumulation_steps micro-batches
    for micro_step in range(gradient_accumulation_steps):
        if fsdp:
            # reduce-scatter gradients only once, after the last micro-step
            net.set_requires_gradient_sync(micro_step == gradient_accumulation_steps - 1)
        elif ddp:
            # average gradients across processes only once, after the last micro-step
            model.require_backward_grad_sync = (micro_step == gradient_accumulation_steps - 1)
        with ctx:
            logits, loss = model(X, Y)
            loss = loss / gradient_accumulation_steps  # the gradients add up over micro-steps
        if micro_step == gradient_accumulation_steps - 1:
            seed_train_batches(iter_num + 1)
        X, Y = get_batch('train', train_generator)  # prefetch while the GPU works on the backward pass
        scaler.scale(loss).backward()
    if grad_clip != 0.0:
        scaler.unscale_(optimizer)
        torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    scaler.step(optimizer)
    scaler.update()
    optimizer.zero_grad(set_to_none=True)
    timed_iters += 1

    log_step = iter_num % log_interval == 0
    if log_step:
        lossf = loss.item() * gradient_accumulation_steps  # waits for the device: only at log steps
        dt = (time.time() - timer) / timed_iters  # after the wait, so the device's time is all in
        timer, timed_iters = time.time(), 0
        # recent iterations set the time left; the first log line's may include compilation, so the
        # second one starts the average afresh
        log_lines += 1
        iter_seconds = dt if log_lines <= 2 else 0.9 * iter_seconds + 0.1 * dt
        if not math.isfinite(lossf):  # checked on every rank, so that all of them stop together
            raise UserError(f"loss is {lossf} at iter {iter_num}; nothing was saved over the checkpoints in {out_dir}. "
                            "Lower --learning_rate, or use --dtype=bfloat16 or float32")
    if log_step and master_process:
        mfu = net.estimate_mfu(batch_size * gradient_accumulation_steps, dt, peak_flops) if local_iter_num >= 5 \
            else None  # the first iterations warm up
        if mfu is not None:
            running_mfu = mfu if running_mfu == -1.0 else 0.9 * running_mfu + 0.1 * mfu
        speed = f"mfu {running_mfu * 100:.2f}%" if running_mfu != -1.0 else f"{tokens_per_iter / dt:,.0f} tokens/s"
        print(f"iter {iter_num}: loss {lossf:.4f}, time {dt * 1000:.2f}ms, {speed}, {progress(iter_num)}")
        metrics_log.write(iter=iter_num, tokens=(iter_num + 1) * tokens_per_iter, lr=lr, train_loss=lossf,
                          ms_per_iter=dt * 1000, mfu=running_mfu if running_mfu != -1.0 else None)
    iter_num += 1
    local_iter_num += 1

    stopping = all_ranks_agree_to_stop() if log_step or not ddp else False
    if stopping or iter_num > max_iters:
        save_checkpoint(checkpoint.LATEST_NAME)
        if master_process:
            if stopping:
                print(f"stopped by {stop_signal or 'another process'} at iter {iter_num}; to continue, run the same "
                      "command with --init_from=resume")
            print(f"finished iteration {iter_num - 1} after {duration(time.time() - STARTED_AT)}")
        break

if logging_metrics:
    metrics_log.close()
if master_process and not eval_only:
    out_dir_lock.close()
if ddp:
    # wait for rank 0's final save, so that every rank tears the process group down together:
    # a rank that exits while its peers are still busy has been seen to abort inside gloo
    torch.distributed.barrier()
    destroy_process_group()
