"""What benchmarks/gated_apply.py measures with: process memory, tensor bytes, a synchronising clock,
robust summaries, and a model_function_wrapper that times the UNet forward as the sampler calls it."""
import statistics
import time


def rss_mib(field):
    """VmRSS (now) or VmHWM (peak so far) of this process, MiB (Linux)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    return float("nan")


def tensor_bytes(tensors):
    """Bytes of the distinct storages behind tensors (views and aliases counted once)."""
    seen, total = set(), 0
    for t in tensors:
        key = (t.device, t.untyped_storage().data_ptr())
        if key not in seen:
            seen.add(key)
            total += t.untyped_storage().nbytes()
    return total


def module_bytes(module):
    return tensor_bytes(list(module.parameters()) + list(module.buffers()))


def walk_tensors(obj):
    import torch
    if torch.is_tensor(obj):
        yield obj
    elif isinstance(obj, dict):
        for v in obj.values():
            yield from walk_tensors(v)
    elif isinstance(obj, (list, tuple)):
        for v in obj:
            yield from walk_tensors(v)


def median(xs):
    return statistics.median(xs) if xs else float("nan")


def spread(xs):
    return (max(xs) - min(xs)) / 2 if len(xs) > 1 else 0.0


class Clock:
    def __init__(self, torch, device):
        self.torch, self.cuda = torch, device.type == "cuda"

    def sync(self):
        if self.cuda:
            self.torch.cuda.synchronize()

    def __call__(self, fn, *args, **kwargs):
        self.sync()
        t = time.perf_counter()
        out = fn(*args, **kwargs)
        self.sync()
        return out, time.perf_counter() - t


class UNetTimer:
    """model_function_wrapper: times BaseModel.apply_model as calc_cond_batch calls it."""

    def __init__(self, clock):
        self.clock, self.label, self.times, self.cpu, self.calls = clock, None, {}, {}, []

    def __deepcopy__(self, memo):
        # Every clone shares this timer: ComfyUI 0.3.75's ModelPatcher.clone() deep-copies model_options
        # (and so calls this); 0.33.0 copies only its dicts and lists and shares the timer by itself.
        return self

    def __call__(self, apply_model, args):
        cpu = time.process_time()
        out, dt = self.clock(apply_model, args["input"], args["timestep"], **args["c"])
        cpu = time.process_time() - cpu  # all threads of this process: less sensitive to other load
        self.calls.append((self.label, tuple(args["input"].shape), list(args["cond_or_uncond"])))
        if self.label is not None:
            self.times.setdefault(self.label, []).append(dt)
            self.cpu.setdefault(self.label, []).append(cpu)
        return out
