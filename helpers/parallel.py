"""One run in several processes under torchrun: DDP (a full model per process, gradients averaged)
or FSDP (--fsdp=True: parameters, gradients and optimizer state sharded across the processes).

torchrun starts one process per GPU (or CPU slot) and sets RANK, LOCAL_RANK and WORLD_SIZE. Rank 0
logs and writes checkpoints; every rank trains on batches of its own. Whatever one rank decides
alone (stop, fail) reaches the others through any_rank() at the points where they all meet, so
that no rank waits in a collective for a peer that has left.
"""
import os
import shlex
import sys
from datetime import timedelta

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel as DDP

from helpers import UserError

CUDA_GRAPH_MODES = ('reduce-overhead', 'max-autotune')  # torch.compile modes that capture CUDA graphs
# Rank 0 writes a checkpoint alone while the others wait in their next collective. gpt2-xl with its
# AdamW state is about 19 GB: on network storage at 10 MB/s that is half an hour, three times
# NCCL's default timeout of 10 minutes.
COLLECTIVE_TIMEOUT = timedelta(hours=1)


def world():
    """(rank, local_rank, world_size) of this process: (0, 0, 1) without torchrun."""
    if 'RANK' not in os.environ:
        return 0, 0, 1
    return int(os.environ['RANK']), int(os.environ['LOCAL_RANK']), int(os.environ['WORLD_SIZE'])


def check(device_type, backend, fsdp, compile, compile_mode, gradient_accumulation_steps, optimizer='adamw'):
    """Refuse, before anything starts, the combinations of device, processes, compilation and
    optimizer that cannot work; each in one line with the fix."""
    _, _, world_size = world()
    if optimizer not in ('adamw', 'muon'):
        raise UserError(f"unknown optimizer '{optimizer}'; use adamw or muon")
    if optimizer == 'muon' and fsdp:  # Newton-Schulz works on whole matrices, FSDP holds shards of them
        raise UserError("optimizer='muon' does not work with fsdp=True; use --optimizer=adamw or DDP (drop --fsdp)")
    if fsdp and 'RANK' not in os.environ:
        raise UserError("fsdp=True shards the model across processes started by torchrun; run "
                        "torchrun --standalone --nproc_per_node=N train.py ... --fsdp=True, or drop --fsdp")
    if 'RANK' in os.environ and device_type == 'mps':
        raise UserError("torchrun with device 'mps' is not supported by PyTorch's DDP; use --device=cpu, "
                        "or one process")
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
                        f"{max(1, gradient_accumulation_steps // world_size) * world_size}")
    if compile_mode not in ('default', 'max-autotune-no-cudagraphs', *CUDA_GRAPH_MODES):
        raise UserError(f"unknown compile_mode '{compile_mode}'; use default, reduce-overhead, max-autotune "
                        "or max-autotune-no-cudagraphs")
    if compile and compile_mode in CUDA_GRAPH_MODES and fsdp:
        # FSDP allocates the gathered parameters anew at every step, outside the recorded graph
        raise UserError(f"compile_mode='{compile_mode}' runs CUDA graphs, which FSDP does not support; use "
                        "--compile_mode=max-autotune-no-cudagraphs or default")
    micro_steps = gradient_accumulation_steps // world_size
    if compile and compile_mode in CUDA_GRAPH_MODES and micro_steps > 1:
        # a CUDA graph's next replay reuses the memory that holds the gradients accumulated so far (pytorch#169545)
        raise UserError(f"compile_mode='{compile_mode}' runs CUDA graphs, which corrupt gradients accumulated over "
                        f"{micro_steps} micro-steps per process; use --compile_mode=max-autotune-no-cudagraphs or "
                        "default, or one micro-step per process (--gradient_accumulation_steps=<number of processes>)")


def start(backend, device):
    """Join the run's process group; returns this process's device (cuda:LOCAL_RANK on GPUs)."""
    _, local_rank, _ = world()
    if torch.device(device).type == 'cuda':
        device = f'cuda:{local_rank}'
        torch.cuda.set_device(device)
    # device_id binds the NCCL communicator to this process's GPU at once
    dist.init_process_group(backend=backend, timeout=COLLECTIVE_TIMEOUT,
                            device_id=torch.device(device) if backend == 'nccl' else None)
    return device


def wrap(model, fsdp, device):
    """The model as the processes train it: in DDP, or sharded in place with fully_shard, one
    block per unit (its parameters gathered just before it runs). FSDP keeps the parameters in
    float32 and leaves precision to the same autocast as DDP, so both compute the same numbers."""
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
    """Whether the next backward pass averages gradients across processes: only on the last
    micro-step, as the ones before only add up."""
    if isinstance(model, DDP):
        model.require_backward_grad_sync = sync
    else:
        model.set_requires_gradient_sync(sync)


def any_rank(flag, device):
    """Whether flag is true on any rank (a collective: every rank calls it at the same point)."""
    if not dist.is_initialized():
        return bool(flag)
    on = device if dist.get_backend() == 'nccl' else 'cpu'
    value = torch.tensor([int(bool(flag))], device=on)
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return bool(value.item())


def leave(status):
    """End this process together with the others: wait for every rank (rank 0's last save, its last
    line), then exit at once. Python's own shutdown would tear the process group down while DDP or
    FSDP still hold it, and gloo has been seen to abort there when a peer is already gone."""
    wandb = sys.modules.get('wandb')
    if wandb is not None and wandb.run is not None:  # its run ends as it does: finished, or failed
        wandb.finish(exit_code=status)
    dist.barrier()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status)


def stop_together(problem, device):
    """Stop every process at once, with one error line, when any of them has a problem (a message;
    None when all is well). A process that stopped alone would leave the others waiting in their
    next collective until torchrun kills them."""
    if not dist.is_initialized():
        if problem:
            raise UserError(problem)
        return
    if not any_rank(problem is not None, device):
        return
    message = next(p for p in all_objects(problem) if p)
    if dist.get_rank() == 0:
        print(f"error: {message}", file=sys.stderr)
    leave(1)


def launch_command(argv, *extra):
    """The command that started this process (python, or torchrun on one machine), with extra arguments
    that replace those of the same settings: to paste."""
    names = tuple(arg.partition('=')[0] + '=' for arg in extra)
    args = shlex.join([arg for arg in argv if not arg.startswith(names + ('--overwrite=',))] + list(extra))
    _, _, world_size = world()
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


def full_state(model, optimizer, fsdp):
    """Model and optimizer state dicts in the format of one unsharded process (CPU tensors on rank 0
    under FSDP: collective, every rank calls it; the other ranks get empty dicts)."""
    if not fsdp:
        return model.state_dict(), optimizer.state_dict()
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict, get_optimizer_state_dict
    options = StateDictOptions(full_state_dict=True, cpu_offload=True)
    model_state = get_model_state_dict(model, options=options)
    by_name = get_optimizer_state_dict(model, optimizer, options=options)
    if not by_name:
        return model_state, by_name
    # the distributed API keys optimizer state by parameter name; torch.optim numbers the
    # parameters in param-group order, which is what an unsharded run saves and loads
    number = {}
    groups = [dict(g, params=[number.setdefault(name, len(number)) for name in g['params']])
              for g in by_name['param_groups']]
    return model_state, {'state': {number[k]: s for k, s in by_name['state'].items()}, 'param_groups': groups}


def load_optimizer_state(model, optimizer, optimizer_state, fsdp):
    """Load a full optimizer.state_dict() (numbered parameters), sharding it under FSDP."""
    if not fsdp:
        optimizer.load_state_dict(optimizer_state)
        return
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict
    name_of = {id(p): name for name, p in model.named_parameters()}
    names = [name_of[id(p)] for group in optimizer.param_groups for p in group['params']]
    by_name = {'state': {names[i]: s for i, s in optimizer_state['state'].items()},
               'param_groups': [dict(g, params=[names[i] for i in g['params']])
                                for g in optimizer_state['param_groups']]}
    set_optimizer_state_dict(model, optimizer, optim_state_dict=by_name, options=StateDictOptions(full_state_dict=True))
