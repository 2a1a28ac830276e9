"""The fast inference path (CPU and CUDA): SRDenseNet re-planned for inference, in fp32, bf16 or fp16.

What it does to the graph, and why (measured on 2-core Xeons, x4 paper model, 256x256 LR; benchmarks/
bench_inference.py prints the rows):

* **No growing concatenation.** In the "all" variant every block reads the concatenation of the low-level features
  and all earlier blocks (128 ... 1024 maps); concatenating it anew for each block copied 5,632 maps per pixel and
  took a third of the trunk's time. A convolution over a concatenation is the sum of convolutions over its parts, so
  each block's output is *pushed* once, as soon as it exists, through the slices of the first-layer weights of every
  later block that reads it: one convolution (128 maps in, 16 per later block out), added into each later block's
  first-layer accumulator. Only the bottleneck still reads one concatenation, made once. The FLOPs are the model's;
  only the order of the sums changes (fp32 results agree with the reference to ~1e-6). In "h"/"hl" each block reads
  one source, so the push is the plain convolution.
* **Weights prepared once** in the path's dtype and channels_last, and activations kept in that dtype: no autocast,
  so no per-call weight casts and no fp32 feature stack re-cast to bf16 before every convolution.
* **The first and last layers stay fp32** (they see the Y values themselves; bf16 would round the image to 8
  significant bits), but cheaply: the low-level conv reads one channel; the reconstruction (256 maps -> 1, 3x3) runs
  as a matrix product of the features with its 9 taps in fp32, over cache-sized chunks of pixels cast on the fly,
  then 9 shifted adds -- instead of a whole fp32 copy of the largest tensor of the model and a 1-output-channel
  convolution that oneDNN runs at a few % of the machine's peak (5 ms against 42 ms per 256x256 HR window, bf16).
* **Shape buckets and windows** (kept from the earlier path): the trunk runs at a padded size (``shape_bucket``) and
  the upsampler on windows of a few fixed sizes, with every activation re-zeroed outside the real region -- exactly
  the zero padding an unpadded run sees -- because oneDNN keeps memory for every input shape it has met; a process
  upscaling photos of many sizes grew without bound (benchmarks/soak_inference.py).
* **Not done, measured:** oneDNN's fused conv+ReLU (``torch.ops.mkldnn._convolution_pointwise``) was slower than
  conv then in-place ReLU without prepacked weights; a sub-pixel rewrite of the 3x3 stride-2 deconvolutions needs
  1.8x their FLOPs and oneDNN already runs them at the rate of plain convolutions. Run-time compilation is not used:
  the first image of a fresh process must not wait for it.
"""

from __future__ import annotations

import contextlib
import os

import torch
import torch.nn.functional as F
from torch import nn

import hardware
from model import SRDenseNet

# oneDNN's primitive cache (default 1,024 primitives, ~50 KB each here): a long process meeting the bucket shapes of
# many image sizes filled it, ending +9-11% RSS in benchmarks/soak_inference.py with the x4 weights, at the 10% limit.
# Measured (300 images, x4 weights / 600 images, the soak's small default model): 256 -> +3-4% / +8.8% and still
# creeping (the small model's shapes no longer fit, primitives are re-created); 512 -> +6.5% / +6.5%, both flat; 1,024
# -> +9-11% / +6.7%. oneDNN reads the variable when it first creates a primitive, so it is set (unless the user set
# it) when the first fast path is prepared; in a process that already ran a convolution, e.g. training before its
# validation, it changes nothing.
PRIMITIVE_CACHE_CAPACITY = "512"
# Pixels per chunk of the fp32 reconstruction: 2,048 x 256 maps x 4 bytes = 2 MiB, one core's L2 on these Xeons.
RECONSTRUCTION_CHUNK = 2048

__all__ = ["FastRunner", "exact_fp32", "shape_bucket"]


def shape_bucket(length: int) -> int:
    """The padded size the fast path runs a side of ``length`` pixels at: a multiple of 16 up to 512, then 16 sizes
    per octave (from 256 on at most 6.25% more pixels per side); e.g. 20 -> 32, 100 -> 112, 300 -> 304, 1000 -> 1024."""
    step = max(16, 2 ** (length.bit_length() - 5))
    return -(-length // step) * step


@contextlib.contextmanager
def exact_fp32(device: torch.device):
    """No autocast, and fp32 means fp32: cuDNN would otherwise run fp32 convolutions and matmuls in TF32."""
    with hardware.exact_fp32(device), torch.autocast(device.type, enabled=False):
        yield


def _weights(conv: nn.Module, dtype: torch.dtype, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    weight = conv.weight.detach().to(device, dtype).contiguous(memory_format=torch.channels_last)
    return weight, conv.bias.detach().to(device, dtype)


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


def _source_widths(model: SRDenseNet) -> list[int]:
    """Maps of each source: the low-level features, then every block's output."""
    return [model.arch["num_features"]] + [model.arch["layers_per_block"] * model.arch["growth_rate"]] * len(
        model.blocks)


def _bottleneck_sources(model: SRDenseNet) -> list[int]:
    last = len(model.blocks)
    return {"all": [*range(last, 0, -1), 0], "h": [last], "hl": [last, 0]}[model.variant]


def _plan_pushes(model: SRDenseNet, dtype: torch.dtype, device: torch.device) -> list[_Push | None]:
    """For each source (low-level features, then each block but the last): the weight slices of the first layers
    that read it, stacked along the output channels. A block's first-layer bias goes with its oldest source, the
    one pushed first, which starts its accumulator."""
    widths = _source_widths(model)
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


def _plan_bottleneck(model: SRDenseNet, dtype: torch.dtype, device: torch.device) -> list[tuple | None]:
    """For each source: its slice of the 1x1 bottleneck's weights (None if the bottleneck does not read it); the
    bias goes with the oldest source, pushed first."""
    widths = _source_widths(model)
    sources = _bottleneck_sources(model)
    weight, bias = model.bottleneck.weight.detach(), model.bottleneck.bias.detach()
    parts: list[tuple | None] = [None] * len(widths)
    offset = 0
    for s in sources:
        part = weight[:, offset:offset + widths[s]].to(device, dtype).contiguous(memory_format=torch.channels_last)
        parts[s] = (part, (bias if s == min(sources) else torch.zeros_like(bias)).to(device, dtype))
        offset += widths[s]
    return parts


class FastRunner:
    """The fast path for one model and dtype: ``trunk`` (LR features) and ``upsampler`` (features -> Y), each run at
    bucketed shapes; the same interface as inference's reference runner."""

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
            self.pushes = _plan_pushes(model, dtype, device)
            self.bottleneck = _plan_bottleneck(model, dtype, device)
            self.bottleneck_relu = model.bottleneck_relu
            self.deconvs = [(*_weights(d, dtype, device), d.stride, d.padding, d.output_padding)
                            for d in model.upsample]
            rec = model.reconstruction
            k = rec.kernel_size[0]
            # (maps, k*k) fp32: column ky*k + kx holds the tap at offset (ky, kx) of every input map.
            self.taps = rec.weight.detach()[0].reshape(rec.in_channels, k * k).to(device, torch.float32).contiguous()
            self.tap_bias = rec.bias.detach().to(device, torch.float32)
            self.kernel = k

    # ---- shapes ------------------------------------------------------------------------------------------------

    def _padded(self, x: torch.Tensor, padded: tuple[int, int] | None) -> tuple[torch.Tensor, tuple[int, int]]:
        h, w = x.shape[-2:]
        ph, pw = padded or ((shape_bucket(h), shape_bucket(w)) if self.bucketed else (h, w))
        if (ph, pw) != (h, w):
            x = F.pad(x, (0, pw - w, 0, ph - h))
        return x.contiguous(memory_format=torch.channels_last), (h, w)

    @staticmethod
    def _relu(t: torch.Tensor, valid: tuple[int, int]) -> torch.Tensor:
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
        with exact_fp32(self.device):
            x, (h, w) = self._padded(x.to(self.device, torch.float32), None)
            valid = (h, w)
            low = self._relu(F.conv2d(x, *self.low_level, padding=1), valid).to(self.dtype)
            # block -> its first layer's pre-activation summed so far; -1: the bottleneck's
            pending: dict[int, torch.Tensor] = {}
            self._push(0, low, pending)
            del low
            for j, layers in enumerate(self.layers):
                outputs = [self._relu(pending.pop(j).to(self.dtype), valid)]
                for weight, bias in layers[1:]:  # (the concatenation is freed as soon as the conv has read it)
                    outputs.append(self._relu(F.conv2d(torch.cat(outputs, 1), weight, bias, padding=1), valid))
                block = torch.cat(outputs, 1)
                del outputs
                self._push(j + 1, block, pending)
                del block
            features = pending.pop(-1).to(self.dtype)
            if self.bottleneck_relu:
                features = F.relu_(features)
            return features[..., :h, :w]  # the upsampler pads each window itself

    def _push(self, source: int, features: torch.Tensor, pending: dict[int, torch.Tensor]) -> None:
        """Add a source's share to every convolution that reads it -- the first layers of later blocks (3x3) and the
        bottleneck (1x1, into pending[-1]) -- so the source itself can be freed."""
        push = self.pushes[source]
        if push is not None:  # None: the last block, read by the bottleneck only
            out = F.conv2d(features, push.weight, push.bias, padding=1)
            for j, part in zip(push.consumers, out.split(out.shape[1] // len(push.consumers), 1)):
                self._accumulate(pending, j, part)
        if self.bottleneck[source] is not None:
            self._accumulate(pending, -1, F.conv2d(features, *self.bottleneck[source]))

    @staticmethod
    def _accumulate(pending: dict[int, torch.Tensor], key: int, part: torch.Tensor) -> None:
        # Summed in fp32 whatever the path's dtype, as a convolution over the concatenation sums inside oneDNN: a
        # bf16 running sum would round once more per source (9 times for the bottleneck of "all").
        if key in pending:
            pending[key].add_(part)
        else:
            pending[key] = part.float()  # the oldest source's share, which carries the bias (fp32: no copy)

    # ---- the upsampler -----------------------------------------------------------------------------------------

    def upsampler(self, features: torch.Tensor, padded: tuple[int, int] | None = None) -> torch.Tensor:
        """(N, maps, h, w) features -> (N, 1, s*h, s*w) float32 Y; run at ``padded`` (a window's bucket) if given."""
        with exact_fp32(self.device):
            x, (h, w) = self._padded(features.to(self.device, self.dtype), padded)
            scale = 1
            for weight, bias, stride, padding, output_padding in self.deconvs:
                x = F.conv_transpose2d(x, weight, bias, stride=stride, padding=padding, output_padding=output_padding)
                scale *= stride[0]
                x = self._relu(x, (h * scale, w * scale))
            return self._reconstruct(x)[..., :h * scale, :w * scale]

    def _reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        """The final 3x3 conv (maps -> 1) in fp32: per-pixel products with its k*k taps, chunk by chunk, then the k*k
        shifted sums with zero padding, as F.conv2d(x.float(), weight, bias, padding=k // 2) computes them."""
        n, maps, rows, cols = x.shape
        pixels = x.permute(0, 2, 3, 1).reshape(-1, maps)  # a view: x is channels_last
        k = self.kernel
        taps = torch.empty(pixels.shape[0], k * k, device=x.device, dtype=torch.float32)
        if x.dtype == torch.float32:
            torch.mm(pixels, self.taps, out=taps)
        else:
            for start in range(0, pixels.shape[0], RECONSTRUCTION_CHUNK):
                chunk = slice(start, start + RECONSTRUCTION_CHUNK)
                torch.mm(pixels[chunk].float(), self.taps, out=taps[chunk])
        r = k // 2
        taps = F.pad(taps.reshape(n, rows, cols, k * k), (0, 0, r, r, r, r))
        out = self.tap_bias.expand(n, rows, cols).clone()
        for ky in range(k):
            for kx in range(k):
                out += taps[:, ky:ky + rows, kx:kx + cols, ky * k + kx]
        return out[:, None]
