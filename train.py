"""Train a GPT: from scratch, from a checkpoint (resume) or from OpenAI's GPT-2 weights.
$ python train.py config/train_shakespeare_char.py --batch_size=32         # one process, any device
$ torchrun --standalone --nproc_per_node=8 train.py config/train_gpt2.py    # DDP on the GPUs of one node
$ torchrun --standalone --nproc_per_node=2 train.py config/train_shakespeare_char.py --device=cpu  # DDP over gloo
Several nodes, and FSDP (--fsdp=True): see the README."""
import functools
import itertools
import math
import os
import signal
import sys
import time

from helpers import quit_during_start_up  # free of torch: in place before the slow imports below

STARTED_AT = time.time()  # the run's time counts from here: the whole command, start-up included
signal.signal(signal.SIGINT, quit_during_start_up)  # nothing to save before the training loop: quit at once
signal.signal(signal.SIGTERM, quit_during_start_up)

import torch  # noqa: E402

import configurator  # noqa: E402
from helpers import UserError, checkpoint, data, hardware, metrics, optim, parallel, runs, shown, tokenizer  # noqa
from helpers import hellaswag as hellaswag_eval  # noqa: E402  (the setting below is named hellaswag)
from model import GPT, GPTConfig  # noqa: E402

# -----------------------------------------------------------------------------
# default config values: GPT-2 (124M) on OpenWebText
# I/O
out_dir = 'out'
eval_interval = 2000
log_interval = 1
eval_iters = 200
eval_only = False  # if True, script exits right after the first eval
hellaswag = False  # also score HellaSwag (acc_norm) at each evaluation: GPT-2 BPE datasets only
hellaswag_examples = 0  # score the first N of its 10,042 examples (0: all of them)
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
activation_checkpointing = False  # recompute each block in the backward pass: far less memory, ~1/3 more compute
# AdamW optimizer
optimizer = 'adamw'  # or 'muon': Muon for the blocks' matrices, AdamW for the rest
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
# Where a setting comes from, in order: the defaults above; config files and --key=value; what runs best on this
# device, for its settings left unset; resuming, the run's own settings for all others left unset.
config_keys = sorted(configurator.settable_keys(globals()))
explicit = configurator.configure(globals())  # {key: where it was set}
dtype, ctx = hardware.setup(device, dtype if 'dtype' in explicit else None)
device_type = torch.device(device).type
compile = compile if 'compile' in explicit else device_type == 'cuda'  # on CPUs its start-up rarely pays off
backend = backend if 'backend' in explicit else 'nccl' if device_type == 'cuda' else 'gloo'
resume_state = None
if init_from == 'resume':
    # memory-mapped: the tensors stay in the file's pages, which all processes of the run share
    resume_file = runs.resume_name(out_dir)
    resume_state = checkpoint.load(out_dir, resume_file, map_location='cpu', mmap=True)
    runs.continue_run(globals(), explicit, resume_state.get('config'), keep=(  # this command's own
        'init_from', 'out_dir', 'overwrite', 'eval_only', 'compile_mode', 'fsdp', 'data_on_device'),
        machine=('device', 'dtype', 'compile', 'backend'),  # the log says those that differ from the run's
        fixed={k: resume_state['model_args'][k] for k in ('n_layer', 'n_head', 'n_embd', 'block_size', 'bias')})

# -----------------------------------------------------------------------------
# check the settings before anything is started or written
configurator.check_model(globals())
configurator.require_positive(globals(), 'batch_size', 'gradient_accumulation_steps', 'max_iters', 'eval_iters',
                             'eval_interval', 'log_interval')
configurator.require_range(globals(), 0, math.inf, 'learning_rate', 'min_lr', 'warmup_iters', 'lr_decay_iters',
                           'weight_decay', 'grad_clip', 'hellaswag_examples')
configurator.require_range(globals(), 0, 1, 'beta1', 'beta2')
configurator.check_seed(seed)

parallel.check(device_type, backend, fsdp, compile, compile_mode, gradient_accumulation_steps, optimizer)
config = {k: globals()[k] for k in config_keys}  # what the run really uses, stored in checkpoints
ddp = 'RANK' in os.environ  # started by torchrun
rank, _, world_size = parallel.world()
master_process = rank == 0  # logs and writes checkpoints
if ddp:
    device = parallel.start(backend, device, resume_state)
gradient_accumulation_steps //= world_size  # per process
torch.manual_seed(seed)  # the same initial weights in every process (FSDP shards them as they are)

# -----------------------------------------------------------------------------
# data: token files, memory-mapped (or held in device memory when small), sampled at random offsets
meta = data.read_meta(dataset)
token_dtype = data.token_dtype(meta)
if meta is not None:
    print(f"found vocab_size = {meta['vocab_size']} (inside {shown(data.data_dir(dataset))}/meta.pkl)")
# opened once: a dataset prepared again meanwhile replaces the files, the run reads on those it started with
token_files = {split: open(data.bin_path(dataset, split), 'rb') for split in ('train', 'val')}
resident_data = {}  # split -> tokens in device memory, for datasets small enough (see data_on_device)
if hellaswag:
    hellaswag_eval.require_bpe(meta is None, shown(data.data_dir(dataset)))
    hellaswag_set = hellaswag_eval.load(limit=hellaswag_examples)  # downloaded on first use

def get_batch(split, generator):
    if split in resident_data:
        return data.get_resident_batch(resident_data[split], batch_size, block_size, generator)
    return data.get_batch(token_files[split], token_dtype, batch_size, block_size, device, generator)

def train_batches(start):
    """Micro-batches from iteration start on, each iteration's seeded by (seed, rank, iteration): resumable exactly."""
    generator = torch.Generator()
    for iteration in itertools.count(start):
        generator.manual_seed(((seed * 1_000_003 + rank) * 1_000_003 + iteration) % (2 ** 63))
        for _ in range(gradient_accumulation_steps):
            yield get_batch('train', generator)

# -----------------------------------------------------------------------------
# model
iter_num, best_val_loss, earlier_seconds = 0, 1e9, 0.0  # earlier: the run's time before this command
model_args = dict(n_layer=n_layer, n_head=n_head, n_embd=n_embd, block_size=block_size, bias=bias, dropout=dropout)
if init_from == 'scratch':
    print("Initializing a new model from scratch")
    if meta is None:
        print("defaulting to vocab_size of GPT-2 to 50304 (50257 rounded up for efficiency)")
    model = GPT(GPTConfig(**model_args, vocab_size=meta['vocab_size'] if meta else 50304))
elif init_from == 'resume':
    print(f"Resuming training from {os.path.join(out_dir, resume_file)} after iteration "
          f"{resume_state['iter_num'] - 1}")
    model = checkpoint.model_from_checkpoint(resume_state, dropout=dropout)
    iter_num, best_val_loss = resume_state['iter_num'], float(resume_state['best_val_loss'])
    earlier_seconds = float(resume_state.get('elapsed_seconds', 0.0))
else:  # gpt2, gpt2-medium, gpt2-large, gpt2-xl, or a transformers GPT-2 directory
    print(f"Initializing from OpenAI GPT-2 weights: {init_from}")
    model = checkpoint.pretrained(init_from, dropout)
    if block_size > model.config.block_size:
        raise UserError(f"block_size {block_size} is larger than {init_from}'s {model.config.block_size}")
    if block_size < model.config.block_size:
        model.crop_block_size(block_size)
data.check_fits(dataset, meta, model.config.vocab_size, block_size, resume_state and resume_state.get('tokenizer'))
if init_from == 'resume' and iter_num > max_iters and not eval_only:
    print(f"the run in {out_dir} is complete: it ended after iteration {iter_num - 1} and max_iters is {max_iters}; "
          "nothing was changed (to train on, resume with a larger --max_iters)")
    parallel.leave(0) if ddp else sys.exit(0)
if master_process and not eval_only:  # the first write: out_dir, and its lock held until this process ends
    out_dir_lock = runs.claim_out_dir(out_dir, resuming=init_from == 'resume', overwrite=overwrite)
    for signum in (signal.SIGINT, signal.SIGTERM):  # the note: where --overwrite=True moved the run that was there
        signal.signal(signum, functools.partial(quit_during_start_up, note=runs.replaced_run_note(out_dir)))

net = model  # the plain module (sharded in place under FSDP): its state_dict is what checkpoints hold
net.activation_checkpointing = activation_checkpointing
if not fsdp:  # fully_shard moves each block to the GPU itself, one block at a time
    net.to(device)
if ddp:
    model = parallel.wrap(net, fsdp, device)
torch.manual_seed(seed + rank)  # but different dropout masks
if data_on_device and (device_type == 'cuda' or 'data_on_device' in explicit) and \
        data.fits_on_device([f.name for f in token_files.values()], token_dtype, device):
    # small models are bound by per-step overhead: gathering batches on the GPU removes the host work
    resident_data = {split: data.load_to_device(f.name, token_dtype, device) for split, f in token_files.items()}
    print(f"keeping the dataset in {device} memory ({sum(t.numel() for t in resident_data.values()):,} tokens)")
tokens_per_iter = gradient_accumulation_steps * world_size * batch_size * block_size
peak_flops = hardware.peak_flops(device, dtype)  # for MFU; None where unknown (CPUs)
if master_process:
    print("effective configuration: " + ", ".join(f"{k}={config[k]!r}" for k in config_keys))
    print(f"tokens per iteration will be: {tokens_per_iter:,}")

scaler = torch.amp.GradScaler(device_type, enabled=(dtype == 'float16'))  # float16's gradients can underflow
optimizer = optim.build(optimizer, net, weight_decay, learning_rate, (beta1, beta2), device_type)
if resume_state is not None:
    if not parallel.load_optimizer_state(net, optimizer, resume_state['optimizer'], fsdp) and master_process:
        print(f"optimizer: {config['optimizer']} now, the run had "
              f"{'muon' if 'muon' in resume_state['optimizer'] else 'adamw'}: its optimizer state starts afresh")
    if resume_state.get('scaler') and scaler.is_enabled():  # a run without float16 saves an empty scaler
        scaler.load_state_dict(resume_state['scaler'])
    # each rank's own generators, when the run had as many processes (else rank 0's alone)
    rng_states = resume_state.get('rng_states_by_rank') or [resume_state.get('rng_states')]
    if (len(rng_states) == world_size or rank == 0) and rng_states[rank]:
        checkpoint.restore_rng_states(rng_states[rank], device)
resume_state = None  # free the memory it holds
byte_counts = data.token_bytes(tokenizer.tokenizer_entry(meta), net.config.vocab_size, device)  # for bits per byte

@torch.no_grad()
def estimate_loss():
    """<split>_loss and <split>_bpb (bits per byte) over fixed batches, the same each time; None if asked to stop."""
    out, said = {}, time.time()
    net.eval()
    for split in ('train', 'val'):
        generator = torch.Generator().manual_seed(data.eval_batch_seed(seed, split))
        sums = torch.zeros(eval_iters, 3, device=device)  # data.summed_loss's, per batch
        for first in range(0, eval_iters, world_size):  # in rounds: every rank draws the round's batches, scores one
            batches = [get_batch(split, generator) for _ in range(min(world_size, eval_iters - first))]
            with ctx:  # a rank left without a batch in the last round scores one anyway: FSDP's ranks run together
                summed = data.summed_loss(net, *batches[min(rank, len(batches) - 1)], byte_counts)
            if rank < len(batches):
                sums[first + rank] = summed
            if parallel.any_rank(stop_signal is not None, device):
                net.train()
                return None
            if master_process and time.time() - said > 10:
                print(f"evaluating {split}: {first + len(batches)}/{eval_iters} batches", flush=True)
                said = time.time()
        if ddp:  # each batch was scored by one rank, the others hold 0 there
            torch.distributed.all_reduce(sums)
        totals = sums.sum(0).tolist()
        out[f'{split}_loss'] = totals[0] / (eval_iters * batch_size * block_size)
        out[f'{split}_bpb'] = data.bits_per_byte(totals)  # None where the tokenizer is unknown
    net.train()
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

def diverged(what):
    return (f"{what}; nothing was saved over the checkpoints in {out_dir}. Lower --learning_rate"
            + (", or use --dtype=bfloat16 or float32" if dtype == 'float16' else ''))

def save_checkpoint(name):
    """Rank 0 writes latest.pt (and ckpt.pt, nanoGPT's best); all ranks call it (FSDP gathers) and learn the outcome."""
    model_state, optimizer_state = parallel.full_state(net, optimizer, fsdp)
    rng_states = parallel.all_objects(checkpoint.capture_rng_states(device))
    problem = None
    if master_process and not all(torch.isfinite(v).all() for v in model_state.values() if v.is_floating_point()):
        problem = diverged(f"the weights hold NaN or infinite values after iteration {iter_num - 1}")
    elif master_process:
        state = {'model': model_state, 'optimizer': optimizer_state, **checkpoint.architecture_entries(net.config),
                 'tokenizer': tokenizer.tokenizer_entry(meta), 'iter_num': iter_num, 'best_val_loss': best_val_loss,
                 'config': config, 'scaler': scaler.state_dict(), 'rng_states': rng_states[0],
                 'elapsed_seconds': run_seconds(), **({'rng_states_by_rank': rng_states} if ddp else {})}
        try:
            print(f"saving checkpoint to {checkpoint.save(state, out_dir, name)}")
            if name == checkpoint.CKPT_NAME:  # the newest state too; stopped before, resume replays to here
                checkpoint.mirror(out_dir, checkpoint.CKPT_NAME, checkpoint.LATEST_NAME)
            runs.discard_replaced(out_dir)  # the run --overwrite=True moved aside, now replaced
        except UserError as e:  # a full disk: the checkpoints that were there are whole
            problem = str(e)
    parallel.stop_together(problem, device, after_save=True)

def request_stop(signum, frame):
    global stop_signal
    if stop_signal is not None and signum == signal.SIGINT:
        raise KeyboardInterrupt
    stop_signal = signal.Signals(signum).name
    if master_process:
        print(f"\n{stop_signal} received: stopping {'at the next log step' if ddp else f'after iteration {iter_num}'}, "
              "then saving a checkpoint (press Ctrl+C again to quit without saving)", flush=True)

def run_seconds():
    """The run's time so far, over resumes ('elapsed' in the log, 'seconds' in metrics.csv)."""
    return earlier_seconds + time.time() - STARTED_AT

def progress(it):
    """'N% done, ... left' after iteration it, from the recent iteration and evaluation times."""
    evals_left = max_iters // eval_interval - it // eval_interval
    seconds_left = (max_iters - it) * iter_seconds + evals_left * eval_seconds
    return f"{100 * (it + 1) / (max_iters + 1):.0f}% done, {metrics.duration(seconds_left)} left"

# what the run will cost, said before its first evaluation (timed before compiling): a backward pass costs two forwards
forward = hardware.forward_seconds(net, *get_batch('train', torch.Generator().manual_seed(seed)), ctx, device)
iter_seconds, eval_seconds = 3 * forward * gradient_accumulation_steps, forward * 2 * math.ceil(eval_iters / world_size)
if master_process:
    print(f"estimate on {device}: {iter_seconds:.2f}s per iteration, {metrics.duration(eval_seconds)} per evaluation"
          + ('' if eval_only else f"; {progress(iter_num - 1)}") + " (the log lines refine it)")
    if device_type == 'cpu' and iter_seconds * (max_iters - iter_num) > 3600 and not eval_only:
        print("this run is long for a CPU: for a first run, python train.py config/train_shakespeare_char_cpu.py "
              "trains in about a minute (README: 'Your own text')")
if compile:  # in place: the state_dict keeps its names
    print(f"compiling the model (mode {compile_mode})... (takes a ~minute)")
    # FSDP gathers each block's shards in hooks the compiler leaves out: it compiles the blocks
    for module in net.transformer.h if fsdp else [net]:
        module.compile(mode=compile_mode)
if wandb_log and master_process:
    import wandb
    wandb.init(project=wandb_project, name=wandb_run_name, config=config)

# -----------------------------------------------------------------------------
# training loop
# Ctrl+C or SIGTERM: finish the iteration (under torchrun: up to the next log step) or leave the evaluation,
# save, and exit cleanly. A second Ctrl+C quits at once.
stop_signal = None
signal.signal(signal.SIGINT, request_stop)
signal.signal(signal.SIGTERM, request_stop)
# out_dir/metrics.csv, for plot.py (an evaluation alone leaves a run's log as it is)
metrics_log = metrics.MetricsLog(out_dir, start_iter=iter_num) if master_process and not eval_only else None
batches = train_batches(iter_num)
X, Y = next(batches)  # first batch
timer, timed_iters = time.time(), 0  # iterations since the last log line or evaluation
local_iter_num, log_lines, running_mfu, stopping = 0, 0, -1.0, False
while True:
    lr = get_lr(iter_num) if decay_lr else learning_rate
    for param_group in optimizer.param_groups:
        param_group['lr'] = lr

    if iter_num % eval_interval == 0 or eval_only:
        eval_start = time.time()
        losses = estimate_loss()
        if losses is None:  # a stop was asked for: the last finished iteration is saved below
            stopping = True
            break
        acc_norm = hellaswag_eval.acc_norm(net, hellaswag_set, device, ctx, fsdp) if hellaswag else None
        if master_process:
            print(f"step {iter_num}: train loss {losses['train_loss']:.4f}, val loss {losses['val_loss']:.4f}"
                  + (f", val bpb {losses['val_bpb']:.4f}" if losses['val_bpb'] is not None else '')
                  + (f", hellaswag acc_norm {acc_norm:.4f}" if hellaswag else '')
                  + f" (evaluation {time.time() - eval_start:.1f}s, elapsed {metrics.duration(run_seconds())})")
        if metrics_log:
            metrics_log.write(iter=iter_num, tokens=iter_num * tokens_per_iter, seconds=run_seconds(), lr=lr,
                              hellaswag_acc_norm=acc_norm, **losses)
        parallel.stop_together(None if math.isfinite(losses['val_loss']) else
                               diverged(f"val loss is {losses['val_loss']} at iteration {iter_num}"), device)
        if wandb_log and master_process:
            wandb.log({"iter": iter_num, "lr": lr, "mfu": running_mfu * 100, **({"hellaswag/acc_norm": acc_norm} if
                       hellaswag else {}), **{k.replace('_', '/'): v for k, v in losses.items()}})  # train/loss, ...
        improved = losses['val_loss'] < best_val_loss
        best_val_loss = min(best_val_loss, losses['val_loss'])
        if iter_num > 0 and not eval_only:
            save_checkpoint(checkpoint.CKPT_NAME if improved or always_save_checkpoint else checkpoint.LATEST_NAME)
        eval_seconds = time.time() - eval_start  # with the saves, for the time left
        timer, timed_iters = time.time(), 0  # iteration times leave evaluations and saves out
    if eval_only:
        break

    # forward and backward over gradient_accumulation_steps micro-batches
    for micro_step in range(gradient_accumulation_steps):
        if ddp:  # DDP averages gradients once, after the last micro-step (FSDP at each: parallel.sync_gradients)
            parallel.sync_gradients(model, micro_step == gradient_accumulation_steps - 1)
        with ctx:
            loss = model(X, Y)[1]  # the logits are not kept: at GPT-2's size they hold over a GB
            loss = loss / gradient_accumulation_steps  # the gradients add up over micro-steps
        X, Y = next(batches)  # prefetch while the GPU works on the backward pass
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
        # recent iterations set the time left; the first may include compilation: the second log line starts afresh
        log_lines += 1
        iter_seconds = dt if log_lines <= 2 else 0.9 * iter_seconds + 0.1 * dt
        parallel.stop_together(None if math.isfinite(lossf) else diverged(f"loss is {lossf} at iteration {iter_num}"),
                               device)
    if log_step and master_process:
        mfu = net.estimate_mfu(batch_size * gradient_accumulation_steps, dt, peak_flops)  # None without a known peak
        if mfu is not None and local_iter_num >= 5:  # the first iterations warm up
            running_mfu = mfu if running_mfu == -1.0 else 0.9 * running_mfu + 0.1 * mfu
        speed = f"mfu {running_mfu * 100:.2f}%" if running_mfu != -1.0 else f"{tokens_per_iter / dt:,.0f} tokens/s"
        print(f"iter {iter_num}: loss {lossf:.4f}, time {dt * 1000:.2f}ms, {speed}, {progress(iter_num)}")
        metrics_log.write(iter=iter_num, tokens=(iter_num + 1) * tokens_per_iter, seconds=run_seconds(), lr=lr,
                          train_loss=lossf, ms_per_iter=dt * 1000, mfu=running_mfu if running_mfu != -1.0 else None)
    iter_num += 1
    local_iter_num += 1
    # under torchrun the processes agree at log steps only, where the loop waits for the device anyway
    stopping = parallel.any_rank(stop_signal is not None, device) if log_step or not ddp else False
    if stopping or iter_num > max_iters:
        break

if iter_num > 0 and not eval_only:  # (0: stopped in the first evaluation, nothing trained)
    save_checkpoint(checkpoint.LATEST_NAME)
if metrics_log:
    stopped = f"stopped by {stop_signal or 'another process'}"
    print(f"{stopped} before the first iteration; nothing to save" if iter_num == 0 else
          f"{stopped} after iteration {iter_num - 1}; to continue:\n"
          f"{parallel.launch_command(sys.argv, '--init_from=resume')}" if stopping else
          f"finished iteration {iter_num - 1} after {metrics.duration(run_seconds())}")
    metrics_log.close()
    out_dir_lock.close()
if ddp:
    parallel.leave(0)  # with wandb's finish
