"""Inference memory: what an inference call will need, and the tile that makes it fit the budget.

* The budget: ``system_memory.memory_budget`` (80% of the memory available now, or exactly ``max_memory`` bytes).
* ``estimate_memory``: the peak an inference call adds, from the architecture, the precision path and the tiling.
* ``plan_memory``: untiled when the estimate fits the budget, else the largest tile that does.
  InsufficientMemoryError when none does, or when an allocation fails anyway (``reporting_out_of_memory``).
"""

from __future__ import annotations

import contextlib
from typing import NamedTuple

import torch
from torch import nn

from . import hardware
from .model import SRDenseNet
from .runners import resolve_plan
from .system_memory import MemoryBudget, format_bytes, memory_budget
from .tiling import check_tile, tile_extents

# The smallest tile "auto" tries: below it a tile is mostly margin.
MIN_AUTO_TILE = 32
# HR pixels per strip of upscale's colour conversion (~50 MB of float64 at its peak).
STRIP_PIXELS = 2**19
# Calibrated so the estimate exceeds every measured peak (docs/inference.md, "How the memory estimate is calibrated"):
HEAP_BLOCK_LIMIT = 32 * 2**20  # glibc's largest mmap threshold: freed blocks up to this size stay in its heap
HEAP_FACTOR = 2.5  # heap fragments of the reference's trunk, in multiples of its distinct tensors of one pass
FAST_HEAP_FACTOR = 1.7  # the same for the fast path, which returns freed heap between tiles
LIVE_SLACK = 1.1  # oneDNN's scratch space and alignment on top of the live tensors
ORT_FACTOR = 2.0  # ONNX Runtime's resident peak against PyTorch's, per pixel
ORT_ADDRESS_FACTOR = 2.5  # ONNX Runtime's address space (RLIMIT_AS) against its resident peak
FIRST_CALL_BYTES = 16 * 2**20  # the first call's fixed cost: thread stacks, library code paged in
FIRST_CALL_PER_CONV = 2**19  # the first call's cost per convolution: oneDNN's JIT kernels
_LR_COLOUR_BYTES = 56  # per LR pixel inside upscale: the YCbCr planes (float64) and the Y input (float32)
_STRIP_BYTES_PER_PIXEL = 160  # per HR pixel of a colour strip: float64 planes and temporaries (~120 measured)


class InsufficientMemoryError(MemoryError):
    """An image that does not fit the memory at hand: the estimate exceeds the budget even for the smallest automatic
    tile, or an allocation failed (``cause``, the allocator's message). ``needed``: the estimate in bytes for
    ``tile`` (None: untiled); ``budget``: a MemoryBudget; ``size``: the LR (height, width)."""

    def __init__(self, needed: int, budget: MemoryBudget, tile: int | None, size: tuple[int, int],
                 cause: str | None = None) -> None:
        self.needed, self.budget, self.tile, self.size, self.cause = needed, budget, tile, size, cause
        tiles = f"tiles of {tile} LR px" if tile else "untiled"
        if cause is None:
            smallest = f"even in {tiles}, the smallest automatic tile" if tile else tiles
            text = f"needs about {format_bytes(needed)} {smallest}; {budget.describe()}"
        else:
            where = f"in {tiles}" if tile else tiles
            text = f"ran out of memory {where} ({cause}); estimated {format_bytes(needed)}, {budget.describe()}"
        super().__init__(text)


class MemoryPlan(NamedTuple):
    """The tile a call runs with (None: untiled), its estimated peak in bytes and the budget it was fitted to."""

    tile: int | None
    needed: int
    budget: MemoryBudget
    size: tuple[int, int]


def _reference_trunk_bytes(arch: dict) -> tuple[int, int, list[int]]:
    """(peak bytes alive per trunk input pixel, bytes per pixel of the trunk's output, the bytes per pixel of each
    distinct tensor of one pass) of the fp32 reference, from model.trunk's order of operations: the growing feature
    stack is concatenated anew for each block ("all"). The distinct tensors are those glibc can leave fragments of: a
    block's internal ones (listed once: every block reuses the sizes) and the low-level and bottleneck outputs; the
    growing feature stack is alive at the peak, so counted in it."""
    f, g, layers, k = arch["num_features"], arch["growth_rate"], arch["layers_per_block"], arch["bottleneck_features"]
    block_out = layers * g
    peaks, c_in = [2 * f * 4], f  # the low-level conv's output and its ReLU
    tensors = [f * 4, f * 4, 2 * k * 4] + [t for j in range(layers) for t in (g * 4, g * 4, (j + 1) * g * 4)]
    for i in range(arch["num_blocks"]):
        held = f if i else 0  # `low` stays referenced while the blocks run (block 0 reads it as its input)
        peaks.append((held + c_in) * 4 + (3 * block_out + 2 * g) * 4)  # inside the block
        if arch["variant"] == "all":
            peaks.append((held + c_in) * 4 + block_out * 4 + (c_in + block_out) * 4)  # torch.cat([out, features])
            c_in += block_out
        else:
            c_in = block_out
    if arch["variant"] == "hl":
        peaks.append(f * 4 + block_out * 4 + (block_out + f) * 4)
        c_in = block_out + f
    peaks.append((f + c_in) * 4 + 2 * k * 4)  # the bottleneck and its ReLU
    return max(peaks), k * 4, tensors


def _fast_trunk_bytes(arch: dict, size: int) -> tuple[int, int, list[int]]:
    """The same for runners.FastRunner.trunk with activations of ``size`` bytes. Each source (low-level
    features, block outputs) is pushed once and freed, so what stays alive is the fp32 sums: the first-layer
    accumulators of the blocks to come and the bottleneck's; beside them one block's layer outputs and
    concatenations, and the transient push outputs (3x3 to later blocks, 1x1 to the bottleneck)."""
    f, g, layers, k = arch["num_features"], arch["growth_rate"], arch["layers_per_block"], arch["bottleneck_features"]
    blocks, block_out, all_blocks = arch["num_blocks"], layers * g, arch["variant"] == "all"
    bottleneck = k * 4 if arch["variant"] != "h" else 0  # the fp32 sum, started by the low-level features
    first = g * blocks if all_blocks else g  # the first layers' pushes from the low-level features
    peaks = [f * 4 + f * size + first * (size + 4) + k * size + bottleneck]
    for i in range(blocks):
        pending = (g * (blocks - i) if all_blocks else g) * 4
        push = (g * (blocks - i - 1) if all_blocks else g) * size
        # inside the block: its layer outputs, their concatenation and a new output; then the block's output
        # beside its push (3x3) or its bottleneck share (1x1), one after the other
        peaks.append(pending + bottleneck + max(2 * block_out + g, block_out + max(push, k * size) // size) * size)
    tensors = [f * 4, f * size, first * size, k * size, k * 4] + [
        t for j in range(layers) for t in (g * size, (j + 1) * g * size)]
    return max(peaks), k * size, tensors


def _window_bytes(model: SRDenseNet, fast_size: int | None, onnxruntime: bool) -> list[int]:
    """Bytes per (padded) LR pixel of each tensor of one upsampler window, all alive at its peak: the input copies,
    each deconvolution's output (ReLU in place on the fast path) at its resolution, then the output piece; on the fast
    path (activations of ``fast_size`` bytes; None: the fp32 reference or ONNX Runtime) the reconstruction's taps (k*k
    fp32 values per HR pixel, and their zero-padded copy) too."""
    k, area, fast = model.arch["bottleneck_features"], 1, fast_size is not None
    size = fast_size or 4
    tensors = [k * size] if fast else [k * 4, k * 4]  # the padded input (and the reference's contiguous copy)
    for deconv in model.upsample:
        if onnxruntime:  # its ConvTranspose builds a column buffer of kernel^2 x channels per input pixel
            tensors.append(k * deconv.kernel_size[0] ** 2 * area * 4)
        area *= deconv.stride[0] ** 2
        tensors += [k * area * size] if fast else [k * area * 4, k * area * 4]
    scale2, taps = model.upscale_factor**2, model.reconstruction.kernel_size[0] ** 2
    return tensors + ([2 * taps * scale2 * 4] if fast else []) + [scale2 * 4, scale2 * 4]


def _heap_resident(tensors: list[int], pixels: int) -> int:
    return sum(t * pixels for t in tensors if t * pixels <= HEAP_BLOCK_LIMIT)


def _model_bytes(model: SRDenseNet, size: tuple[int, int, int], tile: int | None, backend: str, precision: str,
                 self_ensemble: bool) -> int:
    """Peak extra bytes of one predict_y call on the model's device (resolved backend and precision)."""
    n, h, w = size
    ort = backend == "onnxruntime"
    bucketed = not ort and precision != "fp32"
    fast_size = hardware.PRECISIONS[precision].dtype.itemsize if bucketed else None  # bytes per activation
    trunk_h, window_h = tile_extents(model, h, tile, bucketed)
    trunk_w, window_w = tile_extents(model, w, tile, bucketed)
    if bucketed:
        trunk_peak, features, trunk_tensors = _fast_trunk_bytes(model.arch, fast_size)
    else:
        trunk_peak, features, trunk_tensors = _reference_trunk_bytes(model.arch)
    window_tensors = _window_bytes(model, fast_size, ort)
    trunk_pixels, window_pixels = n * trunk_h * trunk_w, n * window_h * window_w
    live = max(trunk_pixels * (trunk_peak + 8), trunk_pixels * features + window_pixels * sum(window_tensors))
    heap_factor = FAST_HEAP_FACTOR if bucketed else HEAP_FACTOR
    heap = heap_factor * _heap_resident(trunk_tensors, trunk_pixels) + _heap_resident(window_tensors, window_pixels)
    tile_peak = (LIVE_SLACK * live + heap) * (ORT_FACTOR if ort else 1)
    hr = n * h * w * model.upscale_factor**2 * 4
    params = sum(p.numel() for p in model.parameters()) * 4 * (8 if ort else 3)  # copies; ONNX export and sessions
    return int(tile_peak + hr * (4 if self_ensemble else 2) + n * h * w * 4 * 3 + params + _first_call_bytes(model))


def _first_call_bytes(model: SRDenseNet) -> int:
    convolutions = sum(isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)) for m in model.modules())
    return FIRST_CALL_BYTES + FIRST_CALL_PER_CONV * convolutions


def _image_bytes(h: int, w: int, scale: int, channels: int, itemsize: int) -> tuple[int, int]:
    """(bytes upscale holds while the model runs, peak bytes after it: the colour conversion or writing the file)
    for an LR image of h x w with ``channels`` channels of ``itemsize`` bytes."""
    lr, hr = h * w, h * w * scale**2
    strip = min(hr, STRIP_PIXELS + w * scale) * _STRIP_BYTES_PER_PIXEL
    colour = hr * (4 + channels * itemsize) + lr * _LR_COLOUR_BYTES + strip
    # image_files.write_image: the image, a BGR copy, OpenCV's growing encode buffer (~2x the file) and its bytes copy.
    writing = hr * channels * itemsize * 5
    return lr * _LR_COLOUR_BYTES, max(colour, writing)


def estimate_memory(model: SRDenseNet, size: tuple[int, int] | tuple[int, int, int], *, tile: int | None = None,
                    precision: str = "auto", backend: str = "auto", self_ensemble: bool = False, channels: int = 0,
                    itemsize: int = 1) -> int:
    """Estimated peak memory, in bytes on top of the loaded model, of ``predict_y`` on an LR Y of ``size`` ((H, W)
    or (N, H, W)) with ``tile`` (None: untiled), or with ``channels`` > 0 of ``upscale`` (and writing the result)
    on an image of that many channels of ``itemsize`` bytes. On a CUDA model: the device's share only.

    Built from the architecture (feature widths, growth, blocks, bottleneck, the upsampler's windows and strides),
    the precision's dtype sizes and the shape buckets: the tensors alive at the peak (times LIVE_SLACK) and glibc's
    heap fragments (HEAP_FACTOR / FAST_HEAP_FACTOR), plus the outputs, the prepared copies and the first call's cost
    (FIRST_CALL_BYTES); calibrated to exceed every measured peak (benchmarks/bench_inference.py --memory prints
    both).
    """
    device = next(model.parameters()).device
    backend, precision = resolve_plan(precision, device, backend)
    n, h, w = size if len(size) == 3 else (1, *size)
    needed = _model_bytes(model, (n, h, w), tile or None, backend, precision, self_ensemble)
    if channels and device.type == "cpu":
        during, after = _image_bytes(h, w, model.upscale_factor, channels, itemsize)
        needed = max(needed + during, after + _first_call_bytes(model))
    return needed


def candidate_tiles(h: int, w: int) -> list[int | None]:
    """Untiled, then every tile size that changes the tiling (ceil(side / k) for k tiles a side), largest first."""
    sizes = {-(-side // k) for side in (h, w) for k in range(1, side // MIN_AUTO_TILE + 1)}
    return [None, *sorted((t for t in sizes if MIN_AUTO_TILE <= t < max(h, w)), reverse=True)]


def plan_memory(model: SRDenseNet, size: tuple[int, int] | tuple[int, int, int], *, tile: int | str | None = "auto",
                max_memory: int | None = None, precision: str = "auto", backend: str = "auto",
                self_ensemble: bool = False, channels: int = 0, itemsize: int = 1) -> MemoryPlan:
    """The tile to run an LR image of ``size`` with: an explicit ``tile`` (0/None: untiled) as given; "auto":
    untiled when ``estimate_memory`` fits the budget (``max_memory`` bytes, else ``memory_budget``: 80% of the memory
    available now), else the largest tile that fits. Raises InsufficientMemoryError when even MIN_AUTO_TILE does not.
    With no readable limit, "auto" runs untiled."""
    check_tile(tile)
    device = next(model.parameters()).device
    budget = memory_budget(device, max_memory)
    options = dict(precision=precision, backend=backend, self_ensemble=self_ensemble, channels=channels,
                   itemsize=itemsize)
    lr_size = tuple(size[-2:])
    if tile != "auto":
        return MemoryPlan(tile or None, estimate_memory(model, size, tile=tile or None, **options), budget, lr_size)
    if device.type == "cuda" and channels:
        _check_host_memory(model, lr_size, channels, itemsize)
    # Under ulimit -v / -d ONNX Runtime's arena reserves more address space than it makes resident.
    address = ORT_ADDRESS_FACTOR if budget.source.startswith("RLIMIT") and resolve_plan(
        precision, device, backend)[0] == "onnxruntime" else 1
    needed = 0
    for candidate in candidate_tiles(*lr_size):
        needed = int(estimate_memory(model, size, tile=candidate, **options) * address)
        if budget.budget is None or needed <= budget.budget:
            return MemoryPlan(candidate, needed, budget, lr_size)
    raise InsufficientMemoryError(needed, budget, candidate, lr_size)


def _check_host_memory(model: SRDenseNet, size: tuple[int, int], channels: int, itemsize: int) -> None:
    """A CUDA run still converts colours and writes the file in RAM: that part must fit the host's budget."""
    during, after = _image_bytes(*size, model.upscale_factor, channels, itemsize)
    host = memory_budget(torch.device("cpu"))
    needed = max(during + size[0] * size[1] * model.upscale_factor**2 * 4, after) + _first_call_bytes(model)
    if host.budget is not None and needed > host.budget:
        raise InsufficientMemoryError(needed, host, None, size)


# What PyTorch and numpy say when an allocation fails (CPU allocator, CUDA caching allocator, oneDNN).
_ALLOCATION_FAILURES = ("can't allocate memory", "DefaultCPUAllocator", "out of memory", "Cannot allocate memory",
                        "could not allocate")


def _first_line(error: BaseException) -> str:
    text = " ".join(str(error).split()) or type(error).__name__
    return text if len(text) <= 200 else text[:197] + "..."


@contextlib.contextmanager
def reporting_out_of_memory(plan: MemoryPlan):
    """Turn a failed allocation into an InsufficientMemoryError with the plan's numbers (an inner call's error is
    restated with this call's plan). Raised after the except block, so the failed call's frames, which hold its
    tensors, are released before the caller sees the error."""
    cause = None
    try:
        yield
        return
    except InsufficientMemoryError as error:
        if error.cause is None:
            raise
        cause = error.cause
    except (MemoryError, RuntimeError) as error:  # torch.cuda.OutOfMemoryError is a RuntimeError
        if not isinstance(error, MemoryError) and not any(text in str(error) for text in _ALLOCATION_FAILURES):
            raise
        cause = _first_line(error)
    raise InsufficientMemoryError(plan.needed, plan.budget, plan.tile, plan.size, cause)

