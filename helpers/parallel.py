"""One run in several processes under torchrun (DDP or FSDP): rank 0 saves; what one rank decides reaches them all."""
import os
import shlex
import socket
import sys
from datetime import timedelta

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel as DDP

from helpers import UserError, optim

CUDA_GRAPH_MODES = ('reduce-overhead', 'max-autotune')  # torch.compile modes that capture CUDA graphs
# only the wait for rank 0's saves (a group of its own): gpt2-xl's 19 GB at 10 MB/s outlast NCCL's default timeout
SAVE_TIMEOUT = timedelta(hours=1)
_save_group = None

def world():
    """(rank, local_rank, world_size) of this process: (0, 0, 1) without torchrun."""
    return int(os.environ.get('RANK', 0)), int(os.environ.get('LOCAL_RANK', 0)), int(os.environ.get('WORLD_SIZE', 1))

def check(device_type, backend, fsdp, compile, compile_mode, gradient_accumulation_steps, optimizer='adamw'):
    """Refuse, before anything starts, what cannot work together; each in one line with the fix."""
    torchrun, world_size = 'RANK' in os.environ, world()[2]
    micro_steps, graphs = gradient_accumulation_steps // world_size, compile and compile_mode in CUDA_GRAPH_MODES
    if optimizer not in ('adamw', 'muon'):
        raise UserError(f"unknown optimizer '{optimizer}'; use adamw or muon")
    if optimizer == 'muon' and fsdp:  # Newton-Schulz works on whole matrices, FSDP holds shards of them
        raise UserError("optimizer='muon' does not work with fsdp=True; use --optimizer=adamw or DDP (drop --fsdp)")
    if fsdp and not torchrun:
        raise UserError("fsdp=True shards the model across processes started by torchrun; run torchrun --standalone "
                        "--nproc_per_node=N train.py ... --fsdp=True, or drop --fsdp")
    if torchrun and device_type == 'mps':
        raise UserError("torchrun with device 'mps' is not supported by PyTorch's DDP; use --device=cpu or one process")
    if backend not in ('nccl', 'gloo'):
        raise UserError(f"unknown backend '{backend}'; use nccl (GPUs) or gloo (CPUs)")
    if backend == 'nccl' and device_type != 'cuda':
        raise UserError(f"backend 'nccl' connects CUDA devices, not '{device_type}'; use --backend=gloo")
    if fsdp and backend == 'gloo' and device_type == 'cuda':
        raise UserError("fsdp=True on GPUs needs the nccl backend (gloo cannot reduce-scatter CUDA tensors); "
                        "use --backend=nccl")
    if gradient_accumulation_steps % world_size != 0:
        raise UserError(f"gradient_accumulation_steps ({gradient_accumulation_steps}) must be divisible by the number "
                        f"of processes ({world_size}); e.g. --gradient_accumulation_steps="
                        f"{max(1, micro_steps) * world_size}")
    if compile_mode not in ('default', 'max-autotune-no-cudagraphs', *CUDA_GRAPH_MODES):
        raise UserError(f"unknown compile_mode '{compile_mode}'; use default, reduce-overhead, max-autotune "
                        "or max-autotune-no-cudagraphs")
    if graphs and fsdp:  # FSDP allocates the gathered parameters anew at every step, outside the recorded graph
        raise UserError(f"compile_mode='{compile_mode}' runs CUDA graphs, which FSDP does not support; use "
                        "--compile_mode=max-autotune-no-cudagraphs or default")
    if graphs and micro_steps > 1:
        # a CUDA graph's next replay reuses the memory that holds the gradients accumulated so far (pytorch#169545)
        raise UserError(f"compile_mode='{compile_mode}' runs CUDA graphs, which corrupt gradients accumulated over "
                        f"{micro_steps} micro-steps per process; use --compile_mode=max-autotune-no-cudagraphs or "
                        "default, or one micro-step per process (--gradient_accumulation_steps=<number of processes>)")

def start(backend, device, resume_state=None):
    """Join the run's process group and the gloo one that waits for rank 0's saves; returns this process's device."""
    global _save_group
    if torch.device(device).type == 'cuda':
        device = f'cuda:{world()[1]}'
        torch.cuda.set_device(device)
    # device_id binds the NCCL communicator to this process's GPU at once
    dist.init_process_group(backend=backend, device_id=torch.device(device) if backend == 'nccl' else None)
    _save_group = dist.new_group(backend='gloo', timeout=SAVE_TIMEOUT)
    if resume_state is not None:
        _same_checkpoint(resume_state, device)
    return device

def _same_checkpoint(state, device):
    """Stop every rank, in one line naming the node, unless all loaded the same checkpoint (not so on own disks)."""
    seen = all_objects((socket.gethostname(), state['iter_num'], float(state['best_val_loss']),
                        state.get('elapsed_seconds')))
    odd = next((rank for rank, s in enumerate(seen) if s[1:] != seen[0][1:]), None)
    stop_together(None if odd is None else
                  f"rank {odd} on node {seen[odd][0]} resumes from another checkpoint (after iteration "
                  f"{seen[odd][1] - 1}) than rank 0 on node {seen[0][0]} (after iteration {seen[0][1] - 1}); a run "
                  "on several nodes needs its out_dir on storage that every node sees", device)

def wrap(model, fsdp, device):
    """The model in DDP, or sharded in place per block (float32 parameters under DDP's autocast: the same numbers)."""
    if not fsdp:
        return DDP(model, device_ids=[torch.device(device).index] if torch.device(device).type == 'cuda' else None)
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard
    # without a mesh, fully_shard builds one on the machine's accelerator, whatever --device says
    mesh = init_device_mesh(torch.device(device).type, (dist.get_world_size(),))
    for block in model.transformer.h:
        fully_shard(block, mesh=mesh)
    return fully_shard(model, mesh=mesh)

def sync_gradients(model, sync):
    """Whether the next backward averages gradients under DDP; FSDP reduce-scatters at every one, to save memory."""
    if isinstance(model, DDP):
        model.require_backward_grad_sync = sync

def any_rank(flag, device, group=None):
    """Whether flag is true on any rank (a collective: every rank calls it at the same point)."""
    if not dist.is_initialized():
        return bool(flag)
    value = torch.tensor([int(bool(flag))], device=device if dist.get_backend(group) == 'nccl' else 'cpu')
    dist.all_reduce(value, op=dist.ReduceOp.MAX, group=group)
    return bool(value.item())

def leave(status):
    """Wait for every rank, then exit at once: Python's shutdown, tearing down the group DDP holds, can abort."""
    if getattr(sys.modules.get('wandb'), 'run', None) is not None:  # its run ends as this one: finished or failed
        sys.modules['wandb'].finish(exit_code=status)
    dist.barrier(group=_save_group)  # rank 0 may be finishing wandb's upload: the long wait
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status)

def stop_together(problem, device, after_save=False):
    """Stop every process, with one error line, when any has a problem (a message or None): none waits for one gone."""
    if not any_rank(problem is not None, device, _save_group if after_save else None):
        return
    message = next(p for p in all_objects(problem) if p)
    if not dist.is_initialized():  # one process
        raise UserError(message)
    if dist.get_rank() == 0:
        print(f"error: {message}", file=sys.stderr)
    leave(1)

def launch_command(argv, *extra):
    """The command that started this process (python, or torchrun), extra replacing the same settings: to paste."""
    names = tuple(arg.partition('=')[0] + '=' for arg in extra)
    args = shlex.join([arg for arg in argv if not arg.startswith(names + ('--overwrite=',))] + list(extra))
    world_size = world()[2]
    if 'RANK' not in os.environ:
        return f"python {args}"
    if int(os.environ.get('LOCAL_WORLD_SIZE', world_size)) == world_size:
        return f"torchrun --standalone --nproc_per_node={world_size} {args}"
    return f"the same torchrun command on every machine, ending {args}"

def all_objects(obj):
    """obj of every rank, in rank order, on every rank (small picklable values only)."""
    if not dist.is_initialized():
        return [obj]
    gathered = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, obj)
    return gathered

def _rekey(state, key):
    """An optimizer state with each parameter's key k as key[k] (the distributed API keys by name, torch by number)."""
    return {'state': {key[k]: s for k, s in state['state'].items()},
            'param_groups': [dict(g, params=[key[k] for k in g['params']]) for g in state['param_groups']]}

def full_state(model, optimizer, fsdp):
    """Model and optimizer state dicts as one process holds them (FSDP: a collective; rank 0 gets them, on the CPU)."""
    if not fsdp:
        return model.state_dict(), optimizer.state_dict()
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict, get_optimizer_state_dict
    options = StateDictOptions(full_state_dict=True, cpu_offload=True)
    model_state = get_model_state_dict(model, options=options)
    by_name = get_optimizer_state_dict(model, optimizer, options=options)
    names = [name for g in by_name.get('param_groups', []) for name in g['params']]
    return model_state, (_rekey(by_name, {name: i for i, name in enumerate(names)}) if by_name else by_name)

def load_optimizer_state(model, optimizer, state, fsdp):
    """Load full_state's optimizer state (sharded under FSDP); False, loading nothing, if it is the other's."""
    state = optim.as_built(state, optimizer.state_dict())
    if state is not None and not fsdp:
        optimizer.load_state_dict(state)
    elif state is not None:
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict
        name_of = {id(p): name for name, p in model.named_parameters()}
        names = [name_of[id(p)] for group in optimizer.param_groups for p in group['params']]
        set_optimizer_state_dict(model, optimizer, _rekey(state, names), options=StateDictOptions(full_state_dict=True))
    return state is not None
