"""The runners that compute SRDenseNet's two halves for inference, and the cache of their prepared copies.

A runner has ``trunk(x)`` (LR Y -> features) and ``upsampler(features, padded)`` (features -> HR Y), which tiling.py
calls on tiles and windows:

* ``ReferenceRunner`` (precision "fp32"): eager PyTorch, fp32 NCHW, exactly ``model.forward``'s operations.
* ``FastRunner`` ("fp32-cl", "bf16", "fp16"): the same computation re-planned for inference. Weights are prepared
  once in the path's dtype and channels_last; the dense connections are pushed through slices of the weights of the
  layers that read them instead of concatenated; sums stay fp32; the first and last convolutions stay fp32; inputs
  run at a few padded sizes (``shape_bucket``) with every activation re-zeroed outside the real region, so the
  results equal an unpadded run's up to float rounding. docs/inference.md, "The fast path", says why.
* ``OrtRunner`` (backend "onnxruntime"): ONNX Runtime, fp32, on the CPU.

``prepared_runner`` keeps one prepared copy per model, backend and precision, weakly keyed by the model (the user's
model is never modified), and rebuilds it when a parameter or buffer is replaced, moved, or changed in place (their
version counters; for inference tensors, which have none, a fingerprint of the values). Writes through
``tensor.data`` bypass version counters: call ``clear_prepared(model)`` after them.
"""

from __future__ import annotations

import contextlib
import copy
import itertools
import os
import weakref

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from . import hardware
from .choices import BACKENDS, INFERENCE_PRECISIONS
from .model import SRDenseNet

PRECISIONS = INFERENCE_PRECISIONS
# oneDNN's primitive cache size, set unless the user set it: 512 keeps a long run flat (docs/inference.md).
PRIMITIVE_CACHE_CAPACITY = "512"
# Pixels per chunk of the fp32 reconstruction: 2,048 x 256 maps x 4 bytes = 2 MiB, one core's L2.
RECONSTRUCTION_CHUNK = 2048
# The reconstruction's k*k taps are padded with zeros to a multiple of this: one AVX-512 register of fp32 outputs per
# pixel, which oneDNN's matmul ran ~20% faster than 9.
TAP_MULTIPLE = 16


def onnxruntime_available() -> bool:
    """Whether the ONNX Runtime backend can run here (the onnx and onnxruntime packages are installed)."""
    try:
        import onnx  # noqa: F401  (the exporter needs it)
        import onnxruntime  # noqa: F401
    except ImportError:
        return False
    return True


def resolve_plan(precision: str, device: torch.device, backend: str = "auto") -> tuple[str, str]:
    """(backend, precision) actually used for a requested precision and backend on a device: "auto" is resolved by
    hardware.AUTO_PRECISION; ONNX Runtime runs fp32 on the CPU only. ValueError names what cannot run."""
    hardware.check_precision(precision, device, PRECISIONS)
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if backend == "onnxruntime":
        if device.type != "cpu":
            raise ValueError("backend onnxruntime runs on the CPU only here; use --device cpu or backend torch")
        if precision not in ("auto", "fp32", "fp32-cl"):
            raise ValueError(f"backend onnxruntime runs fp32 only, got precision {precision!r}")
        if not onnxruntime_available():
            raise ValueError("backend onnxruntime needs the onnx and onnxruntime packages (pip install onnx "
                             "onnxruntime, or pip install \"srdensenet[onnx]\")")
        return "onnxruntime", "fp32"
    return "torch", hardware.auto_precision(device).inference if precision == "auto" else precision


def shape_bucket(length: int) -> int:
    """The padded size the fast path runs a side of ``length`` pixels at: a multiple of 16 up to 512, then 16 sizes
    per octave (from 256 on at most 6.25% more pixels per side); e.g. 20 -> 32, 100 -> 112, 300 -> 304, 1000 -> 1024."""
    step = max(16, 2 ** (length.bit_length() - 5))
    return -(-length // step) * step


@contextlib.contextmanager
def _exact_fp32(device: torch.device):
    """No autocast, and fp32 means fp32: cuDNN would otherwise run fp32 convolutions and matmuls in TF32."""
    with hardware.exact_fp32(device), torch.autocast(device.type, enabled=False):
        yield


# --------------------------------------------------------------------------------------------------------------------
# The fp32 reference
# --------------------------------------------------------------------------------------------------------------------


class ReferenceRunner:
    """precision="fp32": eager PyTorch in fp32 NCHW on the model's device, exactly model.forward's operations, every
    input at its own size (a private fp32 copy, so a caller's later .half() or training does not touch it)."""

    bucketed = False
    reduced = False

    def __init__(self, model: SRDenseNet) -> None:
        self.device = next(model.parameters()).device
        with torch.no_grad():
            self.model = copy.deepcopy(model).float().eval().requires_grad_(False)

    def trunk(self, x: torch.Tensor) -> torch.Tensor:
        with _exact_fp32(self.device):
            return self.model.trunk(x.to(self.device, torch.float32).contiguous())

    def upsampler(self, features: torch.Tensor, padded: tuple[int, int] | None = None) -> torch.Tensor:
        with _exact_fp32(self.device):  # ``padded`` is for the bucketed fast path only
            return self.model.upsample_features(features)


# --------------------------------------------------------------------------------------------------------------------
# The fast path
# --------------------------------------------------------------------------------------------------------------------


def _weights(conv: nn.Module, dtype: torch.dtype, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    weight = conv.weight.detach().to(device, dtype).contiguous(memory_format=torch.channels_last)
    return weight, conv.bias.detach().to(device, dtype)


def _pixels(maps: torch.Tensor) -> torch.Tensor:
    """(N, C, H, W) channels_last maps as their (N*H*W, C) matrix of pixels: a view, so writing it writes them."""
    return maps.permute(0, 2, 3, 1).view(-1, maps.shape[1])


def _concatenate(parts: list[torch.Tensor], buffer: torch.Tensor) -> torch.Tensor:
    """torch.cat(parts, 1), written as a channels_last tensor into the start of ``buffer`` (flat, large enough)."""
    n, _, h, w = parts[0].shape
    channels = sum(part.shape[1] for part in parts)
    out = buffer[:n * h * w * channels].view(n, h, w, channels).permute(0, 3, 1, 2)
    return torch.cat(parts, 1, out=out)


class _Push:
    """One source's push: a 3x3 convolution whose output channels are, side by side, the first-layer pre-activations
    of every block that reads the source (``consumers``, 16 maps each at the paper's growth rate)."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor, consumers: list[int]) -> None:
        self.weight, self.bias, self.consumers = weight, bias, consumers


def _sources_of_block(model: SRDenseNet, j: int) -> list[int]:
    """The sources block j reads, in the order of its input channels: 0 is the low-level features, 1 + k block k."""
    if model.variant == "all":
        return [*range(j, 0, -1), 0]  # newest block first, then everything before it (model.trunk's order)
    return [j]  # chained: the previous block, or the low-level features for block 0


def source_widths(arch: dict) -> list[int]:
    """Maps of each source of an architecture: the low-level features, then every block's output."""
    return [arch["num_features"]] + [arch["layers_per_block"] * arch["growth_rate"]] * arch["num_blocks"]


def bottleneck_sources(arch: dict) -> list[int]:
    """The sources the 1x1 bottleneck reads, in the order of its input channels (0: the low-level features)."""
    last = arch["num_blocks"]
    return {"all": [*range(last, 0, -1), 0], "h": [last], "hl": [last, 0]}[arch["variant"]]


def gathers_bottleneck(itemsize: int) -> bool:
    """Whether the fast path's bottleneck gathers its sources into one buffer (activations of ``itemsize`` bytes:
    bf16, fp16) rather than summing their 1x1 shares in fp32 (_Bottleneck). The memory estimate asks the same."""
    return itemsize < 4


def _plan_pushes(model: SRDenseNet, dtype: torch.dtype, device: torch.device) -> list[_Push | None]:
    """For each source (low-level features, then each block but the last): the weight slices of the first layers
    that read it, stacked along the output channels. A block's first-layer bias goes with its oldest source, the
    one pushed first, which starts its accumulator."""
    widths = source_widths(model.arch)
    parts: list[list[tuple[int, torch.Tensor, torch.Tensor]]] = [[] for _ in widths]
    for j, block in enumerate(model.blocks):
        first = block.convs[0]
        sources = _sources_of_block(model, j)
        offset = 0
        for s in sources:
            weight = first.weight.detach()[:, offset:offset + widths[s]]
            bias = first.bias.detach() if s == min(sources) else torch.zeros_like(first.bias)
            parts[s].append((j, weight, bias))
            offset += widths[s]
    pushes: list[_Push | None] = []
    for part in parts:
        if not part:
            pushes.append(None)
            continue
        weight = torch.cat([w for _, w, _ in part]).to(device, dtype).contiguous(memory_format=torch.channels_last)
        pushes.append(_Push(weight, torch.cat([b for _, _, b in part]).to(device, dtype), [j for j, _, _ in part]))
    return pushes


class _Bottleneck:
    """The 1x1 bottleneck, planned one of two ways. ``gathers`` (reduced precisions): every source it reads is
    copied side by side, in ascending order (low-level features first), into one buffer (``offsets[s]``: where
    source s starts), and one convolution over it runs at the end. Otherwise (fp32): ``shares[s]``, each source's
    slice of the weights, whose products are added into one fp32 sum as the sources come (the oldest, pushed first,
    starts it with ``bias``), which holds a quarter of the memory."""

    def __init__(self, model: SRDenseNet, dtype: torch.dtype, device: torch.device) -> None:
        widths, read = source_widths(model.arch), bottleneck_sources(model.arch)  # read: in input-channel order
        starts = dict(zip(read, itertools.accumulate([0] + [widths[s] for s in read])))
        weight = model.bottleneck.weight.detach()
        self.relu, self.gathers = model.bottleneck_relu, gathers_bottleneck(dtype.itemsize)
        self.bias = model.bottleneck.bias.detach().to(device, dtype)
        self.offsets, self.shares, position = {}, {}, 0
        for s in sorted(read):
            self.offsets[s], position = position, position + widths[s]
            part = weight[:, starts[s]:starts[s] + widths[s]]
            self.shares[s] = part.to(device, dtype).contiguous(memory_format=torch.channels_last)
        self.channels = position
        if self.gathers:
            self.weight = torch.cat([self.shares[s] for s in sorted(read)], 1).contiguous(
                memory_format=torch.channels_last)
            self.shares = {}


class FastRunner:
    """The fast path for one model and precision ("fp32-cl", "bf16" or "fp16"): ``trunk`` (LR features) and
    ``upsampler`` (features -> Y), each run at bucketed shapes."""

    bucketed = True  # False (benchmarks/bench_inference.py --mixed) runs every input at its own size

    def __init__(self, model: SRDenseNet, precision: str) -> None:
        os.environ.setdefault("ONEDNN_PRIMITIVE_CACHE_CAPACITY", PRIMITIVE_CACHE_CAPACITY)
        self.device = next(model.parameters()).device
        self.dtype = hardware.PRECISIONS[precision].dtype
        self.reduced = self.dtype != torch.float32
        dtype, device = self.dtype, self.device
        with torch.no_grad():
            self.low_level = _weights(model.low_level, torch.float32, device)  # reads the Y values: fp32
            self.layers = [[_weights(conv, dtype, device) for conv in block.convs] for block in model.blocks]
            self.layers_width = model.arch["layers_per_block"] * model.arch["growth_rate"]  # a block's output maps
            self.pushes = _plan_pushes(model, dtype, device)
            self.bottleneck = _Bottleneck(model, dtype, device)
            self.deconvs = [(*_weights(d, dtype, device), d.stride, d.padding, d.output_padding)
                            for d in model.upsample]
            rec = model.reconstruction
            k = rec.kernel_size[0]
            # (k*k, maps) fp32: row ky*k + kx holds the tap at offset (ky, kx) of every input map; then zero rows up
            # to a multiple of TAP_MULTIPLE.
            taps = rec.weight.detach()[0].flatten(1).t().to(device, torch.float32)
            self.taps = F.pad(taps, (0, 0, 0, -len(taps) % TAP_MULTIPLE)).contiguous()
            self.tap_bias = rec.bias.detach().to(device, torch.float32)
            self.kernel = k

    # ---- shapes ------------------------------------------------------------------------------------------------

    def pad(self, x: torch.Tensor, padded: tuple[int, int] | None) -> tuple[torch.Tensor, tuple[int, int]]:
        """x padded at the bottom and right to ``padded`` (None: its shape bucket, when bucketed), channels_last, and
        its real (height, width)."""
        h, w = x.shape[-2:]
        ph, pw = padded or ((shape_bucket(h), shape_bucket(w)) if self.bucketed else (h, w))
        if (ph, pw) != (h, w):
            x = F.pad(x, (0, pw - w, 0, ph - h))
        return x.contiguous(memory_format=torch.channels_last), (h, w)

    @staticmethod
    def relu_inside(t: torch.Tensor, valid: tuple[int, int]) -> torch.Tensor:
        """In-place ReLU, then zeros outside the real region (at t's resolution), as an unpadded run would see."""
        t = F.relu_(t)
        h, w = valid
        if t.shape[-2] > h:
            t[..., h:, :] = 0
        if t.shape[-1] > w:
            t[..., :, w:] = 0
        return t

    # ---- the trunk ---------------------------------------------------------------------------------------------

    def trunk(self, x: torch.Tensor) -> torch.Tensor:
        """(N, 1, h, w) Y -> (N, maps, h, w) features after the bottleneck, in the path's dtype, channels_last."""
        with _exact_fp32(self.device):
            x, (h, w) = self.pad(x.to(self.device, torch.float32), None)
            valid = (h, w)
            # A 1-map input is as much NCHW as channels_last, and oneDNN answers it in NCHW: without the explicit
            # format every share of the low-level features would be NCHW, and each later channels_last share added
            # into it a transposing copy.
            low = self.relu_inside(F.conv2d(x, *self.low_level, padding=1), valid).to(
                self.dtype, memory_format=torch.channels_last)
            # In reduced precision what the bottleneck reads, side by side: one 1x1 convolution over it at the end
            # runs at the matmul's speed, where a share per source was converted to fp32 and added nine times.
            gathered = torch.empty(x.shape[0], self.bottleneck.channels, *x.shape[-2:], dtype=self.dtype,
                                   device=self.device, memory_format=torch.channels_last) if (
                self.bottleneck.gathers) else None
            pending: dict[int, torch.Tensor] = {}  # block -> its first layer's pre-activation summed so far
            scratch: dict[torch.Size, torch.Tensor] = {}  # fp32 copies of reduced shares, reused (see _accumulate)
            self._push(0, low, pending, scratch, gathered)
            del low
            # Every concatenation of a block's layer outputs is written into the start of this one buffer: a fresh
            # tensor per concatenation cost more in page faults than the copy itself (fp32: 67 against 9 ms a block
            # at 256x256 LR), and each is dead once the convolution after it has read it.
            concatenations = torch.empty(x.shape[0] * self.layers_width * x.shape[-2] * x.shape[-1],
                                         dtype=self.dtype, device=self.device)
            for j, layers in enumerate(self.layers):
                outputs = [self.relu_inside(pending.pop(j).to(self.dtype), valid)]
                for weight, bias in layers[1:]:
                    inputs = _concatenate(outputs, concatenations)
                    outputs.append(self.relu_inside(F.conv2d(inputs, weight, bias, padding=1), valid))
                block = _concatenate(outputs, concatenations)
                del outputs
                self._push(j + 1, block, pending, scratch, gathered)
                del block
            del scratch, concatenations
            if gathered is None:
                features = pending.pop(-1)
            else:
                features = F.conv2d(gathered, self.bottleneck.weight, self.bottleneck.bias)
            if self.bottleneck.relu:
                features = F.relu_(features)
            return features[..., :h, :w]  # the upsampler pads each window itself

    def _push(self, source: int, features: torch.Tensor, pending: dict[int, torch.Tensor],
              scratch: dict[torch.Size, torch.Tensor], gathered: torch.Tensor | None) -> None:
        """Add a source's share to every convolution that reads it -- the first layers of later blocks (3x3) and the
        bottleneck (its gathered input, or its 1x1 share into pending[-1]) -- so the source itself can be freed."""
        push = self.pushes[source]
        if push is not None:  # None: the last block, read by the bottleneck only
            out = F.conv2d(features, push.weight, push.bias, padding=1)
            for j, part in zip(push.consumers, out.split(out.shape[1] // len(push.consumers), 1)):
                self._accumulate(pending, j, part, scratch)
        start = self.bottleneck.offsets.get(source)
        if start is None:
            return
        if gathered is not None:
            gathered[:, start:start + features.shape[1]].copy_(features)
        elif -1 not in pending:  # the oldest source's share starts the sum, with the bias
            pending[-1] = F.conv2d(features, self.bottleneck.shares[source], self.bottleneck.bias).contiguous(
                memory_format=torch.channels_last)
        else:
            # A 1x1 convolution of channels_last maps is a matrix product over their pixels: addmm_ adds it into the
            # sum in place, where a convolution wrote each fp32 share to fresh memory first (a fifth less time).
            _pixels(pending[-1]).addmm_(_pixels(features), self.bottleneck.shares[source][:, :, 0, 0].t())

    @staticmethod
    def _accumulate(pending: dict[int, torch.Tensor], key: int, part: torch.Tensor,
                    scratch: dict[torch.Size, torch.Tensor]) -> None:
        # Summed in fp32 whatever the path's dtype, as a convolution over the concatenation sums inside oneDNN: a
        # bf16 running sum would round once more per source.
        if key not in pending:
            pending[key] = part.float()  # the oldest source's share, which carries the bias (fp32: no copy)
            return
        if part.dtype != torch.float32:
            # A mixed-dtype add_ converts the share into a new fp32 tensor on every call: allocating and faulting in
            # that memory cost several times the add. The same conversion into one buffer, kept, gives the same bits.
            buffer = scratch.get(part.shape)
            if buffer is None:
                buffer = scratch[part.shape] = torch.empty(part.shape, dtype=torch.float32, device=part.device,
                                                           memory_format=torch.channels_last)
            part = buffer.copy_(part)
        pending[key].add_(part)

    # ---- the upsampler -----------------------------------------------------------------------------------------

    def upsampler(self, features: torch.Tensor, padded: tuple[int, int] | None = None) -> torch.Tensor:
        """(N, maps, h, w) features -> (N, 1, s*h, s*w) float32 Y; run at ``padded`` (a window's bucket) if given."""
        with _exact_fp32(self.device):
            x, (h, w) = self.pad(features.to(self.device, self.dtype), padded)
            scale = 1
            for weight, bias, stride, padding, output_padding in self.deconvs:
                x = F.conv_transpose2d(x, weight, bias, stride=stride, padding=padding, output_padding=output_padding)
                scale *= stride[0]
                x = self.relu_inside(x, (h * scale, w * scale))
            return self.reconstruct(x)[..., :h * scale, :w * scale]

    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        """The final 3x3 conv (maps -> 1) in fp32: per-pixel products with its k*k taps, chunk by chunk, then the k*k
        shifted sums with zero padding, as F.conv2d(x.float(), weight, bias, padding=k // 2) computes them."""
        n, maps, rows, cols = x.shape
        pixels = x.permute(0, 2, 3, 1).reshape(-1, maps)  # a view: x is channels_last
        k = self.kernel
        # F.linear, not torch.mm: oneDNN's matmul reads the 256 maps once at memory speed (3x the BLAS mm here).
        taps = torch.empty(pixels.shape[0], self.taps.shape[0], device=x.device, dtype=torch.float32)
        if x.dtype == torch.float32:
            F.linear(pixels, self.taps, out=taps)
        else:  # converted chunk by chunk into one fp32 buffer that stays in the cache
            chunk = torch.empty(min(RECONSTRUCTION_CHUNK, pixels.shape[0]), maps, device=x.device,
                                dtype=torch.float32)
            for start in range(0, pixels.shape[0], RECONSTRUCTION_CHUNK):
                end = min(start + RECONSTRUCTION_CHUNK, pixels.shape[0])
                F.linear(chunk[:end - start].copy_(pixels[start:end]), self.taps, out=taps[start:end])
        r = k // 2
        taps = F.pad(taps.reshape(n, rows, cols, -1), (0, 0, r, r, r, r))
        out = self.tap_bias.expand(n, rows, cols).clone()
        for ky in range(k):
            for kx in range(k):
                out += taps[:, ky:ky + rows, kx:kx + cols, ky * k + kx]
        return out[:, None]

# --------------------------------------------------------------------------------------------------------------------
# ONNX Runtime
# --------------------------------------------------------------------------------------------------------------------


class OrtRunner:
    """ONNX Runtime (CPU, fp32) on the trunk and the upsampler, exported separately so tiling works the same way."""

    reduced = False
    bucketed = False  # runs every input at its own size

    def __init__(self, model: SRDenseNet) -> None:
        import onnxruntime as ort

        from .onnx_export import onnx_bytes

        cpu = copy.deepcopy(model).float().cpu().eval().requires_grad_(False)
        options = ort.SessionOptions()
        options.intra_op_num_threads = torch.get_num_threads()
        options.inter_op_num_threads = 1
        # No busy-waiting between runs: it would steal the cores from numpy/torch work in the same process.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        example = torch.rand(1, 1, 16, 16)
        trunk, up = ModelPart(cpu, "trunk"), ModelPart(cpu, "upsample_features")
        with torch.no_grad():
            example_features = trunk(example)
        providers = ["CPUExecutionProvider"]
        self.trunk_session = ort.InferenceSession(onnx_bytes(trunk, example), options, providers=providers)
        self.up_session = ort.InferenceSession(onnx_bytes(up, example_features), options, providers=providers)

    def trunk(self, x: torch.Tensor) -> torch.Tensor:
        array = np.ascontiguousarray(x.detach().to("cpu", torch.float32).numpy())
        return torch.from_numpy(self.trunk_session.run(None, {"input": array})[0])

    def upsampler(self, features: torch.Tensor, padded: tuple[int, int] | None = None) -> torch.Tensor:
        array = np.ascontiguousarray(features.numpy())  # ``padded`` is for bucketed runners only
        return torch.from_numpy(self.up_session.run(None, {"input": array})[0])


class ModelPart(nn.Module):
    """One half of the model (SRDenseNet.trunk or .upsample_features) as a module, for the ONNX exporter."""

    def __init__(self, model: SRDenseNet, method: str) -> None:
        super().__init__()
        self.model, self.method = model, method

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return getattr(self.model, self.method)(x)


# --------------------------------------------------------------------------------------------------------------------
# Prepared copies (the cache)
# --------------------------------------------------------------------------------------------------------------------


_PREPARED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _version(t: torch.Tensor) -> int | tuple[float, float]:
    """The tensor's in-place version counter; a model built under torch.inference_mode() has inference tensors,
    which keep none, so for them a fingerprint of the values (float64 sum and sum of squares) stands in."""
    if not t.is_inference():
        return t._version
    with torch.no_grad():
        values = t.detach().double()
        return float(values.sum()), float(values.square().sum())


def _state_signature(model: nn.Module) -> list[tuple]:
    # weakref identity (a replaced tensor never matches, even if its id or address is reused), in-place version,
    # storage address, dtype and device of every parameter and buffer.
    return [(weakref.ref(t), _version(t), t.data_ptr(), t.dtype, t.device)
            for t in itertools.chain(model.parameters(), model.buffers())]


def _signature_matches(model: nn.Module, signature: list[tuple]) -> bool:
    tensors = list(itertools.chain(model.parameters(), model.buffers()))
    return len(tensors) == len(signature) and all(
        ref() is t and (version, ptr, dtype, device) == (_version(t), t.data_ptr(), t.dtype, t.device)
        for t, (ref, version, ptr, dtype, device) in zip(tensors, signature))


def clear_prepared(model: nn.Module | None = None) -> None:
    """Forget the prepared copies of ``model`` (all models when None), e.g. after writing weights through .data."""
    if model is None:
        _PREPARED.clear()
    else:
        _PREPARED.pop(model, None)


def prepared_runner(model: SRDenseNet, backend: str, precision: str) -> ReferenceRunner | FastRunner | OrtRunner:
    """The runner of a resolved (backend, precision) for ``model``: its prepared copy, made on first use and again
    whenever the model's parameters or buffers change (see the module docstring)."""
    entries = _PREPARED.setdefault(model, {})
    key = (backend, precision)
    cached = entries.get(key)
    if cached is not None and _signature_matches(model, cached[0]):
        return cached[1]
    if backend == "onnxruntime":
        runner = OrtRunner(model)
    else:
        runner = ReferenceRunner(model) if precision == "fp32" else FastRunner(model, precision)
    entries[key] = (_state_signature(model), runner)
    return runner

