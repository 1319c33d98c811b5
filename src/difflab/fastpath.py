"""Speed levers for training and sampling (`Speed`; the typed config is `difflab.config.FastPath`), each one
computing the plain step.

Training: `make_optimizer` builds the Adam of train.fit, and `TrainStep` optionally replaces the plain
step fit writes out (zero_grad, forward, backward, step) for a full batch. Levers: channels_last, torch.compile (full batches), and on CUDA bf16 autocast, TF32,
cuDNN autotuning, fused Adam and the whole step captured as one CUDA graph with static batch
buffers. Sampling: `sampling_model` folds BatchNorm into the convolutions of an eval copy and
`graph_eps_fn` replays the guided noise estimate as a CUDA graph.

Every GPU lever falls back loudly but safely: a capture that fails logs a warning, restores the
model, optimizer and generator, and the loop goes on eagerly.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import warnings
from dataclasses import dataclass
from typing import Callable, Literal, Union

import torch
from torch import nn

log = logging.getLogger(__name__)

GRAPH_WARMUP_STEPS = 3
"""Eager steps on a side stream before capture (allocator and cuDNN warm-up); their effect is undone."""


Lever = Union[bool, Literal["auto"]]
"""A lever's value: on, off, or `auto` (decided on the machine at hand by difflab.planning / autotune)."""


@dataclass(frozen=True)
class Speed:
    """The speed levers as asked for, as plain values: `difflab.config.FastPath` without pydantic (the same
    fields, documented there, where their defaults live too; built at the edge with `FastPath.speed()`).
    `Levers.resolve` turns it into the levers in effect on one device."""

    enabled: bool
    channels_last: Lever
    compile: Lever
    cuda_graph: Lever
    amp: Literal["auto", "none", "bf16"]
    tf32: Lever
    cudnn_benchmark: bool
    fused_adam: bool
    sample_channels_last: Lever
    sample_fold_bn: bool
    sample_jit: Lever
    sample_compile: Lever
    sample_cuda_graph: Lever
    sample_amp: Literal["auto", "none", "bf16"]


@dataclass(frozen=True)
class Levers:
    """The levers in effect on one device: a `Speed` with the ones that do not apply switched off."""

    channels_last: bool = False
    compile: bool = False
    cuda_graph: bool = False
    amp: bool = False
    tf32: bool = False
    cudnn_benchmark: bool = False
    fused_adam: bool = False
    fold_bn: bool = False
    sample_channels_last: bool = False
    sample_jit: bool = False
    sample_compile: bool = False
    sample_cuda_graph: bool = False
    sample_amp: bool = False

    @classmethod
    def resolve(cls, fast: Speed | None, device: torch.device | str) -> "Levers":
        """The levers in effect. `fast` is a Speed (or anything with its fields, such as the config's FastPath).
        One still holding `auto` (one that difflab.planning has not resolved
        by a probe) takes the hardware's answer for bf16 and TF32 and leaves the probed levers off."""
        if fast is None or not fast.enabled:
            return cls()
        cuda = torch.device(device).type == "cuda"
        bf16 = None

        def on(value) -> bool:
            return value is True

        def amp(value) -> bool:
            nonlocal bf16
            if value == "auto":
                if bf16 is None:
                    from difflab.autotune import bf16_native

                    bf16 = bf16_native(device)
                return bf16
            return value == "bf16"

        tf32 = fast.tf32 is True
        if fast.tf32 == "auto" and cuda:
            from difflab.autotune import tf32_native

            tf32 = tf32_native(device)
        return cls(channels_last=on(fast.channels_last), compile=on(fast.compile) and not (cuda and on(fast.cuda_graph)),
                   cuda_graph=cuda and on(fast.cuda_graph), amp=amp(fast.amp), tf32=cuda and tf32,
                   cudnn_benchmark=cuda and fast.cudnn_benchmark, fused_adam=cuda and fast.fused_adam,
                   fold_bn=fast.sample_fold_bn, sample_channels_last=on(fast.sample_channels_last),
                   sample_jit=not cuda and on(fast.sample_jit) and not on(fast.sample_compile),
                   sample_compile=on(fast.sample_compile) and not (cuda and on(fast.sample_cuda_graph)),
                   sample_cuda_graph=cuda and on(fast.sample_cuda_graph), sample_amp=amp(fast.sample_amp))

    def active(self) -> list[str]:
        return [k for k, v in self.__dict__.items() if v]


@contextlib.contextmanager
def cuda_backends(levers: Levers):
    """TF32 and cuDNN autotuning for the duration of a training or sampling run, then as they were."""
    saved = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32, torch.backends.cudnn.benchmark)
    try:
        if levers.tf32:
            torch.backends.cuda.matmul.allow_tf32 = True
            torch.backends.cudnn.allow_tf32 = True
        if levers.cudnn_benchmark:
            torch.backends.cudnn.benchmark = True
        yield
    finally:
        (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32,
         torch.backends.cudnn.benchmark) = saved


def to_layout(x: torch.Tensor, levers: Levers) -> torch.Tensor:
    return x.contiguous(memory_format=torch.channels_last) if levers.channels_last and x.dim() == 4 else x


def prepare_model(model: nn.Module, levers: Levers) -> nn.Module:
    return model.to(memory_format=torch.channels_last) if levers.channels_last else model


def make_optimizer(model: nn.Module, lr: float, levers: Levers, device: torch.device) -> torch.optim.Adam:
    """Adam as the spec has it; on the CUDA-graph path with a tensor lr and capturable state."""
    if levers.cuda_graph:
        kw = dict(fused=True) if levers.fused_adam else dict(foreach=True)
        return torch.optim.Adam(model.parameters(), lr=torch.tensor(lr, device=device), capturable=True, **kw)
    if levers.fused_adam:
        return torch.optim.Adam(model.parameters(), lr=lr, fused=True)
    return torch.optim.Adam(model.parameters(), lr=lr)


def after_optimizer_load(optimizer: torch.optim.Optimizer, levers: Levers, device: torch.device) -> None:
    """A resumed optimizer state (maybe saved by the plain path) made capturable again: tensor lr, steps on device."""
    if not levers.cuda_graph:
        return
    for group in optimizer.param_groups:
        group["capturable"] = True
        if not isinstance(group["lr"], torch.Tensor):
            group["lr"] = torch.tensor(float(group["lr"]), device=device)
        else:
            group["lr"] = group["lr"].to(device)
    for state in optimizer.state.values():
        if "step" in state:
            state["step"] = state["step"].to(device=device, dtype=torch.float32)


class TrainStep:
    """The optional replacement of train.fit's plain optimizer step: for a full batch, the whole step captured
    as a CUDA graph and replayed, or run through the torch.compile'd network. `takes(x)` says whether it
    replaces the step for this batch; calling it runs the step and returns the loss as a device tensor (no
    host sync). The levers change how, never what: the compiled model shares the parameters; the CUDA graph
    replays the same ops. A capture or compile that fails falls back to the plain step, here (`eager`, also
    the graph's warm-up), with the generator restored."""

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer, loss_fn: Callable, gen: torch.Generator,
                 levers: Levers, device: torch.device, batch_size: int):
        self.model, self.optimizer, self.loss_fn, self.gen = model, optimizer, loss_fn, gen
        self.levers, self.device, self.batch_size = levers, device, batch_size
        self.compiled: nn.Module | None = None
        self._compiled_ok = False
        if levers.compile:
            try:
                self.compiled = torch.compile(model)
            except Exception as exc:  # noqa: BLE001 - a speed lever must never stop training
                log.warning("torch.compile unavailable (%s); training eagerly", exc)
        self.graph: torch.cuda.CUDAGraph | None = None
        self.graph_failed = False
        self._static: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None

    def takes(self, x: torch.Tensor) -> bool:
        """Whether this batch's step is taken here (a full batch with a graph or a compiled network on)."""
        full = x.shape[0] == self.batch_size
        return full and ((self.levers.cuda_graph and not self.graph_failed) or self.compiled is not None)

    def autocast(self):
        """bf16 autocast of the forward when the amp lever is on, else a no-op context."""
        return self._autocast()

    def _autocast(self):
        if self.levers.amp:
            # cache_enabled=False: autocast's weight-cast cache must not outlive a graph capture.
            return torch.autocast(self.device.type, dtype=torch.bfloat16, cache_enabled=False)
        return contextlib.nullcontext()

    def eager(self, x: torch.Tensor, y: torch.Tensor, net: nn.Module | None = None) -> torch.Tensor:
        with self._autocast():
            loss = self.loss_fn(net if net is not None else self.model, x, y, self.gen)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        return loss.detach()

    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        full = x.shape[0] == self.batch_size
        if self.levers.cuda_graph and full and not self.graph_failed:
            if self.graph is None:
                self._capture(x, y)
            if self.graph is not None:
                sx, sy, sloss = self._static
                sx.copy_(x)
                sy.copy_(y)
                self.graph.replay()
                return sloss.clone()
        if self.compiled is not None and full:
            if self._compiled_ok:
                return self.eager(x, y, self.compiled)
            gen_state = self.gen.get_state()
            try:  # compilation happens on this first call: a missing compiler must not stop training
                loss = self.eager(x, y, self.compiled)
                self._compiled_ok = True
                return loss
            except Exception as exc:  # noqa: BLE001
                log.warning("torch.compile failed on first use (%s: %s); training eagerly", type(exc).__name__, exc)
                self.compiled = None
                self.gen.set_state(gen_state)
        return self.eager(x, y)

    # -- CUDA graph ------------------------------------------------------------------------------
    def _snapshot(self) -> dict:
        opt_state = {id(p): {k: (v.clone() if isinstance(v, torch.Tensor) else copy.deepcopy(v)) for k, v in s.items()}
                     for p, s in self.optimizer.state.items()}
        lrs = [g["lr"].clone() if isinstance(g["lr"], torch.Tensor) else g["lr"] for g in self.optimizer.param_groups]
        return {"model": {k: v.clone() for k, v in self.model.state_dict().items()}, "opt": opt_state,
                "had_state": set(opt_state), "lrs": lrs, "gen": self.gen.get_state()}

    @torch.no_grad()
    def _restore(self, snap: dict) -> None:
        """Undo the warm-up steps in place, so the captured graph keeps pointing at the same tensors."""
        for k, v in self.model.state_dict().items():
            v.copy_(snap["model"][k])
        for p, state in self.optimizer.state.items():
            saved = snap["opt"].get(id(p))
            for k, v in state.items():
                if isinstance(v, torch.Tensor):
                    if saved is None:
                        v.zero_()  # fresh Adam: moments and step count start at zero
                    else:
                        v.copy_(saved[k])
        for g, lr in zip(self.optimizer.param_groups, snap["lrs"]):
            if isinstance(g["lr"], torch.Tensor):
                g["lr"].copy_(lr)
        self.gen.set_state(snap["gen"])
        for p in self.model.parameters():
            p.grad = None

    def _capture(self, x: torch.Tensor, y: torch.Tensor) -> None:
        snap = self._snapshot()
        try:
            sx, sy = x.clone(), y.clone()
            stream = torch.cuda.Stream(self.device)
            stream.wait_stream(torch.cuda.current_stream(self.device))
            with torch.cuda.stream(stream):
                for _ in range(GRAPH_WARMUP_STEPS):
                    self.eager(sx, sy)
            torch.cuda.current_stream(self.device).wait_stream(stream)
            torch.cuda.synchronize(self.device)
            self._restore(snap)  # grads None: backward allocates them from the graph's pool, as assignment
            graph = torch.cuda.CUDAGraph()
            if self.gen is not None and hasattr(graph, "register_generator_state"):
                graph.register_generator_state(self.gen)
            with torch.cuda.graph(graph):
                with self._autocast():
                    sloss = self.loss_fn(self.model, sx, sy, self.gen)
                sloss.backward()
                self.optimizer.step()
                sloss = sloss.detach()
            torch.cuda.synchronize(self.device)
            # Capture records the step without running it: the first replay is the first real step.
            for p in self.model.parameters():
                if p.grad is None:
                    raise RuntimeError("a parameter got no gradient buffer in the captured step")
            self.graph, self._static = graph, (sx, sy, sloss)
            log.info("train step captured as a CUDA graph (batch %d)", self.batch_size)
        except Exception as exc:  # noqa: BLE001 - the lever must never stop training
            self.graph_failed, self.graph = True, None
            log.warning("CUDA graph capture of the train step failed (%s: %s); continuing eagerly",
                        type(exc).__name__, exc)
            with contextlib.suppress(Exception):
                torch.cuda.synchronize(self.device)
            self._restore(snap)


def generator_state(gen: torch.Generator) -> torch.Tensor | None:
    """The generator's state for a checkpoint; None (resume reseeds nothing) if a graph-registered one refuses."""
    try:
        return gen.get_state()
    except RuntimeError as exc:
        log.warning("generator state not saved (%s); a resume will continue with fresh noise", exc)
        return None


def sync_lr(optimizer: torch.optim.Optimizer, captured: list) -> None:
    """Keep a captured tensor lr the one the graph reads, whatever the scheduler assigned."""
    for group, lr_t in zip(optimizer.param_groups, captured):
        if isinstance(lr_t, torch.Tensor) and group["lr"] is not lr_t:
            lr_t.fill_(float(group["lr"]))
            group["lr"] = lr_t


# -- sampling ------------------------------------------------------------------------------------
@torch.no_grad()
def fold_batchnorm(model: nn.Module) -> nn.Module:
    """An eval copy with every Conv/ConvTranspose -> BatchNorm pair of a Sequential folded into the conv.

    y = gamma (conv(x) - mean) / sqrt(var + eps) + beta is conv'(x) with the weight scaled per output
    channel and a new bias. Only valid with running (eval) statistics, hence a copy.
    """
    folded = copy.deepcopy(model).eval()
    for seq in folded.modules():
        if not isinstance(seq, nn.Sequential):
            continue
        mods = list(seq.children())
        for i in range(len(mods) - 1):
            conv, bn = mods[i], mods[i + 1]
            if not (isinstance(conv, (nn.Conv2d, nn.ConvTranspose2d)) and isinstance(bn, nn.BatchNorm2d)
                    and bn.track_running_stats and bn.running_mean is not None):
                continue
            scale = bn.weight / torch.sqrt(bn.running_var + bn.eps) if bn.affine else \
                1.0 / torch.sqrt(bn.running_var + bn.eps)
            shift = bn.bias if bn.affine else torch.zeros_like(bn.running_mean)
            out_dim = 1 if isinstance(conv, nn.ConvTranspose2d) else 0  # ConvTranspose weight: (in, out, k, k)
            shape = [1] * conv.weight.dim()
            shape[out_dim] = -1
            conv.weight.copy_(conv.weight * scale.reshape(shape))
            bias = conv.bias if conv.bias is not None else torch.zeros_like(bn.running_mean)
            new_bias = (bias - bn.running_mean) * scale + shift
            if conv.bias is None:
                conv.bias = nn.Parameter(new_bias)
            else:
                conv.bias.copy_(new_bias)
            seq[i + 1] = nn.Identity()
    return folded


def sampling_model(model: nn.Module, levers: Levers) -> nn.Module:
    """The network the sampler calls: the model itself, or a folded / NHWC / compiled eval copy."""
    model = model.eval()
    if levers.fold_bn:
        model = fold_batchnorm(model)
    if levers.sample_channels_last:
        model = (copy.deepcopy(model) if not levers.fold_bn else model).to(memory_format=torch.channels_last)
    if levers.sample_jit:
        return FrozenOnFirstCall(model)
    if levers.sample_compile:
        try:
            compiled = torch.compile(model, dynamic=False)
            compiled.num_classes = getattr(model, "num_classes", None)
            return compiled
        except Exception as exc:  # noqa: BLE001
            log.warning("torch.compile unavailable for sampling (%s); sampling eagerly", exc)
    return model


class FrozenOnFirstCall:
    """The network traced on its first call's inputs, frozen and optimised for inference (oneDNN fusions).

    Calls with another input shape, or a trace that fails, run the eager network: never a wrong answer.
    """

    def __init__(self, model: nn.Module):
        self.model, self.num_classes = model, getattr(model, "num_classes", None)
        self.jit, self.shape, self.failed = None, None, False

    def __call__(self, *args: torch.Tensor) -> torch.Tensor:
        if self.failed or (self.shape is not None and args[0].shape != self.shape):
            return self.model(*args)
        if self.jit is None:
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    traced = torch.jit.trace(self.model.eval(), args, check_trace=False)
                    self.jit = torch.jit.optimize_for_inference(torch.jit.freeze(traced))
                self.shape = args[0].shape
            except Exception as exc:  # noqa: BLE001
                log.warning("tracing the sampling network failed (%s: %s); sampling eagerly", type(exc).__name__, exc)
                self.failed = True
                return self.model(*args)
        return self.jit(*args)


def graph_eps_fn(eps_fn: Callable, shape: tuple[int, ...], device: torch.device, levers: Levers) -> Callable:
    """eps_fn(x, t) replayed from a CUDA graph for the fixed (x, t) shapes; eager when capture fails."""
    if not levers.sample_cuda_graph:
        return amp_eps_fn(eps_fn, levers)
    inner = amp_eps_fn(eps_fn, levers)
    try:
        sx = torch.zeros(shape, device=device)
        st = torch.zeros(shape[0], dtype=torch.long, device=device)
        stream = torch.cuda.Stream(device)
        stream.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(stream):
            for _ in range(GRAPH_WARMUP_STEPS):
                inner(sx, st)
        torch.cuda.current_stream(device).wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            sout = inner(sx, st)
        torch.cuda.synchronize(device)
    except Exception as exc:  # noqa: BLE001
        log.warning("CUDA graph capture of the sampler failed (%s: %s); sampling eagerly", type(exc).__name__, exc)
        return inner

    def replay(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        if x.shape != sx.shape:
            return inner(x, t)
        sx.copy_(x)
        st.copy_(t)
        graph.replay()
        return sout.clone()

    return replay


def amp_eps_fn(eps_fn: Callable, levers: Levers) -> Callable:
    if not levers.sample_amp:
        return eps_fn

    def cast(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        with torch.autocast(x.device.type, dtype=torch.bfloat16, cache_enabled=False):
            return eps_fn(x, t).float()

    return cast
