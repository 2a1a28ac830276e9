"""Inference memory: what an inference call will need, and the tile that makes it fit the budget.

* The budget: ``system_memory.memory_budget`` (80% of the memory available now, or exactly ``max_memory`` bytes).
* ``estimate_memory``: the peak an inference call adds, from the architecture, the precision path and the tiling.
* ``plan_memory``: untiled when the estimate fits the budget, else the largest tile that does and is worth its
  time (``work_factor``: a tile that makes the run k times the work must cut the estimate at least k times).
  InsufficientMemoryError when none does, or when an allocation fails anyway (``reporting_out_of_memory``).

The budget is what one inference call may add to the process's memory, on top of what it holds already (PyTorch and
the loaded model): the estimate counts the call's activations, its copies of the weights, the image and its colour
conversion, not the loaded model. ``--max-memory`` is that budget (cli/options.py's help says so).
"""

from __future__ import annotations

import contextlib
from typing import NamedTuple

import torch
from torch import nn

from . import hardware
from .model import SRDenseNet
from .runners import TAP_MULTIPLE, bottleneck_sources, gathers_bottleneck, resolve_plan, source_widths
from .system_memory import MemoryBudget, format_bytes, memory_budget
from .tiling import check_tile, receptive_field, spans, tile_extents, trunk_radius, upsampler_radius, upsampler_window
from .tiling import windows as upsampler_windows

# The smallest tile "auto" tries, whatever the model (useful_tile: the model's own, usually larger).
MIN_AUTO_TILE = 32
# HR pixels of upscale's colour conversion in flight, over all its threads (~50 MB of float64 at its peak), and at
# most per strip: ~10 MB of float64 planes stays in the cache, which made it 1.6-2x faster than one strip of 2**19.
STRIP_PIXELS = 2**19
STRIP_PIXELS_EACH = 2**16
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
    """An image that does not fit the memory at hand: the estimate exceeds the budget untiled and in every tile worth
    its time, or an allocation failed (``cause``, the allocator's message). ``needed``: the estimate in bytes for
    ``tile`` (None: untiled); ``budget``: a MemoryBudget; ``size``: the LR (height, width); ``smaller``: (tile,
    estimate) of the tile worth its time with the least estimate below ``needed``, or None when no tile is (an
    image this small gains too little from tiles). ``tiles_help``: False where tiles would not help at all (the host
    memory of a CUDA run)."""

    def __init__(self, needed: int, budget: MemoryBudget, tile: int | None, size: tuple[int, int],
                 cause: str | None = None, smaller: tuple[int, int] | None = None, tiles_help: bool = True) -> None:
        self.needed, self.budget, self.tile, self.size, self.cause = needed, budget, tile, size, cause
        self.smaller = smaller
        tiles = f"tiles of {tile} LR px" if tile else "untiled"
        if cause is None:
            least = (f", {format_bytes(smaller[1])} in tiles of {smaller[0]} LR px (the least of the tiles worth "
                     f"their time)" if smaller else "; no tile saves enough memory on an image this small to be worth "
                     "its time" if tiles_help else "")
            text = f"needs about {format_bytes(needed)} {tiles}{least}; {budget.describe()}"
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
    features, block outputs) is pushed once and freed; what stays alive is the first-layer accumulators (fp32) of
    the blocks to come and the bottleneck's input: in reduced precision every source it reads, gathered side by
    side (resident as the sources are copied in), in fp32 their 1x1 products summed in place. Beside them one
    block's layer outputs, the buffer their concatenations are written into, and the transient 3x3 push outputs."""
    f, g, layers, k = arch["num_features"], arch["growth_rate"], arch["layers_per_block"], arch["bottleneck_features"]
    blocks, block_out, all_blocks = arch["num_blocks"], layers * g, arch["variant"] == "all"
    gathers = gathers_bottleneck(size)
    if gathers:  # the gathered sources up to source s (0: the low-level features, 1 + i: block i)
        widths, read = source_widths(arch), bottleneck_sources(arch)
        held = [sum(widths[r] for r in read if r <= s) * size for s in range(blocks + 1)]
    else:  # the fp32 sum, started by the low-level features ("h": by the last block, at the end)
        held = [k * 4 if arch["variant"] != "h" else 0] * (blocks + 1)
    first = g * blocks if all_blocks else g  # the first layers' pushes from the low-level features
    peaks = [f * 4 + f * size + first * (size + 4) + held[0], held[-1] + k * size]
    for i in range(blocks):
        pending = (g * (blocks - i) if all_blocks else g) * 4
        push = (g * (blocks - i - 1) if all_blocks else g) * size
        # inside the block: its layer outputs, the concatenation buffer and a new output; then the block's output
        # (in that buffer) beside its push
        peaks.append(pending + held[i + 1] + max(2 * block_out + g, block_out + push // size) * size)
    tensors = [f * 4, f * size, first * size, k * size, held[-1] if gathers else k * 4, block_out * size] + [
        g * size] * layers
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
    scale2 = model.upscale_factor**2
    taps = -(-model.reconstruction.kernel_size[0] ** 2 // TAP_MULTIPLE) * TAP_MULTIPLE  # padded (runners.FastRunner)
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


def colour_workers() -> int:
    """Threads the colour conversion runs its strips on (inference.upscale): as many as PyTorch computes on."""
    return max(1, torch.get_num_threads())


def _image_bytes(h: int, w: int, scale: int, channels: int, itemsize: int) -> tuple[int, int]:
    """(bytes upscale holds while the model runs, peak bytes after it: the colour conversion or writing the file)
    for an LR image of h x w with ``channels`` channels of ``itemsize`` bytes."""
    lr, hr = h * w, h * w * scale**2
    strip = min(hr, STRIP_PIXELS + colour_workers() * w * scale) * _STRIP_BYTES_PER_PIXEL  # a row per strip at least
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


def _multiply_adds(model: SRDenseNet) -> tuple[int, int]:
    """Multiply-adds per LR pixel of the trunk and of the upsampler (its deconvolutions and the reconstruction, at
    the resolutions they run at)."""
    def per_pixel(conv: nn.Module) -> int:
        return conv.in_channels // conv.groups * conv.out_channels * conv.kernel_size[0] * conv.kernel_size[1]

    trunk = sum(per_pixel(m) for part in (model.low_level, model.blocks, model.bottleneck) for m in part.modules()
                if isinstance(m, nn.Conv2d))
    upsampler, area = 0, 1
    for deconv in model.upsample:  # a transposed convolution's work is counted per input pixel
        upsampler += area * per_pixel(deconv)
        area *= deconv.stride[0] ** 2
    return trunk, upsampler + area * per_pixel(model.reconstruction)


def _line_work(model: SRDenseNet, length: int, tile: int | None) -> tuple[int, int]:
    """(trunk pixels, upsampler window pixels) computed along a side of ``length`` in tiles of ``tile``: each tile's
    trunk input is the tile and its receptive-field margin, cut at the image border (tiling.forward_tile)."""
    t_margin, u_margin, window = trunk_radius(model), upsampler_radius(model), upsampler_window(model)
    trunk = upsampler = 0
    for a, b in spans(length, tile or length):
        trunk += min(length, b + t_margin + u_margin) - max(0, a - t_margin - u_margin)
        pieces, padded = upsampler_windows((a, b), (max(0, a - u_margin), min(length, b + u_margin)), length, window,
                                           u_margin, False)
        upsampler += len(pieces) * padded
    return trunk, upsampler


def work_factor(model: SRDenseNet, size: tuple[int, int], tile: int | None) -> float:
    """The work of running an LR image of ``size`` (H, W) in tiles of ``tile`` over running it untiled (1.0), in
    multiply-adds: every tile recomputes its receptive-field margin in the trunk, and the upsampler its windows' small
    margins. On the x4 paper model (2-core Xeon, fp32 fast path, warm) the measured time ratios were 1.25 / 1.87 /
    5.3 for tiles of 48 / 32 / 16 on 64x48 (this: 1.37 / 2.09 / 4.9) and 2.8 for tiles of 67 on 200x150 (2.6)."""
    if not tile:
        return 1.0
    trunk_work, upsampler_work = _multiply_adds(model)
    (trunk_h, up_h), (trunk_w, up_w) = _line_work(model, size[0], tile), _line_work(model, size[1], tile)
    (whole_h, whole_up_h), (whole_w, whole_up_w) = _line_work(model, size[0], None), _line_work(model, size[1], None)
    tiled = trunk_work * trunk_h * trunk_w + upsampler_work * up_h * up_w
    return tiled / (trunk_work * whole_h * whole_w + upsampler_work * whole_up_h * whole_up_w)


def useful_tile(model: SRDenseNet) -> int:
    """The smallest tile worth choosing by hand: twice the receptive field (tiling.receptive_field). A smaller tile
    spends more than 3/4 of its trunk's work on the margin it recomputes (67 LR px on every side for the paper model),
    so it runs several times slower than untiled while saving little memory."""
    return 2 * receptive_field(model)


def candidate_tiles(h: int, w: int, smallest: int = MIN_AUTO_TILE) -> list[int | None]:
    """Untiled, then every tile size of at least ``smallest`` that changes the tiling (ceil(side / k) for k tiles a
    side), largest first."""
    smallest = max(MIN_AUTO_TILE, smallest)
    sizes = {-(-side // k) for side in (h, w) for k in range(1, side // smallest + 1)}
    return [None, *sorted((t for t in sizes if smallest <= t < max(h, w)), reverse=True)]


def plan_memory(model: SRDenseNet, size: tuple[int, int] | tuple[int, int, int], *, tile: int | str | None = "auto",
                max_memory: int | None = None, precision: str = "auto", backend: str = "auto",
                self_ensemble: bool = False, channels: int = 0, itemsize: int = 1) -> MemoryPlan:
    """The tile to run an LR image of ``size`` with: an explicit ``tile`` (0/None: untiled) as given; "auto":
    untiled when ``estimate_memory`` fits the budget (``max_memory`` bytes, else ``memory_budget``: 80% of the memory
    available now), else the largest tile that fits and is worth its time: one that makes the run k times the work
    (``work_factor``) must cut the estimate at least k times. Raises InsufficientMemoryError when none does, with the
    untiled estimate and the least of the tiles worth their time. With no readable limit, "auto" runs untiled."""
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
    untiled = int(estimate_memory(model, size, tile=None, **options) * address)
    if budget.budget is None or untiled <= budget.budget:
        return MemoryPlan(None, untiled, budget, lr_size)
    fitting = _worthwhile_tiles(model, size, untiled, address, options, budget.budget)
    if fitting and fitting[-1][1] <= budget.budget:
        return MemoryPlan(*fitting[-1], budget, lr_size)
    raise InsufficientMemoryError(untiled, budget, None, lr_size, smaller=min(fitting, key=lambda t: t[1],
                                                                              default=None))


def _worthwhile_tiles(model: SRDenseNet, size: tuple[int, ...], untiled: int, address: float, options: dict,
                      stop_below: int | None = None) -> list[tuple[int, int]]:
    """(tile, estimate) of the automatic tiles worth their time, largest first: those of at least ``useful_tile``
    that cut the untiled estimate at least as many times as they multiply the work (``work_factor``). Stops at the
    first whose estimate is at most ``stop_below``."""
    found = []
    for candidate in candidate_tiles(*size[-2:], useful_tile(model))[1:]:
        needed = int(estimate_memory(model, size, tile=candidate, **options) * address)
        if untiled < needed * work_factor(model, tuple(size[-2:]), candidate):
            continue  # costs more time than it saves memory
        found.append((candidate, needed))
        if stop_below is not None and needed <= stop_below:
            break
    return found


def smaller_tile(model: SRDenseNet, size: tuple[int, int] | tuple[int, int, int], needed: int,
                 **options) -> tuple[int, int] | None:
    """(tile, estimate) of the tile worth its time with the least estimate below ``needed`` bytes (None: no such
    tile): what to try when an allocation fails. ``options``: estimate_memory's."""
    untiled = estimate_memory(model, size, tile=None, **options)
    below = [t for t in _worthwhile_tiles(model, size, untiled, 1, options) if t[1] < needed]
    return min(below, key=lambda t: t[1], default=None)


def _check_host_memory(model: SRDenseNet, size: tuple[int, int], channels: int, itemsize: int) -> None:
    """A CUDA run still converts colours and writes the file in RAM: that part must fit the host's budget."""
    during, after = _image_bytes(*size, model.upscale_factor, channels, itemsize)
    host = memory_budget(torch.device("cpu"))
    needed = max(during + size[0] * size[1] * model.upscale_factor**2 * 4, after) + _first_call_bytes(model)
    if host.budget is not None and needed > host.budget:
        raise InsufficientMemoryError(needed, host, None, size, tiles_help=False)  # tiles shrink no host buffer


# What PyTorch and numpy say when an allocation fails (CPU allocator, CUDA caching allocator, oneDNN).
_ALLOCATION_FAILURES = ("can't allocate memory", "DefaultCPUAllocator", "out of memory", "Cannot allocate memory",
                        "could not allocate")


def allocation_failure(error: BaseException) -> str | None:
    """What a failed allocation said, shortened to one line; None when ``error`` is not one."""
    if isinstance(error, MemoryError) or any(text in str(error) for text in _ALLOCATION_FAILURES):
        return _first_line(error)
    return None


def _first_line(error: BaseException) -> str:
    text = " ".join(str(error).split()) or type(error).__name__
    return text if len(text) <= 200 else text[:197] + "..."


@contextlib.contextmanager
def reporting_out_of_memory(plan: MemoryPlan, model: SRDenseNet | None = None,
                            size: tuple[int, ...] | None = None, **options):
    """Turn a failed allocation into an InsufficientMemoryError with the plan's numbers (an inner call's error is
    restated with this call's plan) and, given the model, the planned ``size`` (default: plan.size) and
    estimate_memory's ``options``, the tile to try instead (``smaller_tile``). Raised after the except block, so the
    failed call's frames, which hold its tensors, are released before the caller sees the error."""
    cause = None
    try:
        yield
        return
    except InsufficientMemoryError as error:
        if error.cause is None:
            raise
        cause = error.cause
    except (MemoryError, RuntimeError) as error:  # torch.cuda.OutOfMemoryError is a RuntimeError
        cause = allocation_failure(error)
        if cause is None:
            raise
    smaller = None if model is None else smaller_tile(model, size or plan.size, plan.needed, **options)
    raise InsufficientMemoryError(plan.needed, plan.budget, plan.tile, plan.size, cause, smaller)

