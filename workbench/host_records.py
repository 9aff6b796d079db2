"""Each statistic's per-layer records gathered into one host tensor while the forward runs.

A capture files every layer's statistics as its attention returns (`tracer.Capture.keep`); a trace wants each
statistic stacked over the layers on the host, [layer, ...]. So each statistic gets a slab of every layer at its
first record, and each record goes into its row as it comes:
- on the CPU, the record as kept is its row of the slab: the small records then do not pin pieces of the C
  allocator's heap between the forward's large buffers, which cost up to a quarter more peak memory than the
  plain forward on a long input (benchmarks/cpu_trace.py);
- on a CUDA device the record stays on the device and is copied into a pinned host slab on a stream of its own as
  soon as its layer has run, so the copy engine works while the later layers compute and the end of the forward
  waits for the last layer's copy alone. Copied after the forward instead, the one-pass statistics of a 1.1B
  Llama at 32k tokens (22 layers x 32 heads) are about 0.7 GB that the whole trace waits for.
Records on other devices are kept as they are, and the caller stacks and copies them at the end (`take` gives
None for them).
"""

from __future__ import annotations

import torch


class HostSlabs:
    """One host tensor per statistic, [n_layers, *record shape], filled a layer at a time and handed out whole."""

    def __init__(self, n_layers: int):
        self.n_layers = n_layers
        self.slabs: dict[str, torch.Tensor] = {}
        self.filed: dict[str, set[int]] = {}  # the layers whose record went into the slab as it is now
        self.streams: dict[torch.device, torch.cuda.Stream] = {}

    def put(self, name: str, layer: int, record: torch.Tensor) -> torch.Tensor:
        """File `record` (statistic `name` of `layer`) and return the record as the capture keeps it: its row of
        the slab on the CPU; on a CUDA device the record itself, its copy to the host under way. A slab is
        allocated at a statistic's first record, and again where a record's shape or dtype differs."""
        if record.device.type not in ("cpu", "cuda"):
            return record
        slab = self.slabs.get(name)
        if slab is None or slab.shape[1:] != record.shape or slab.dtype != record.dtype:
            slab = self.slabs[name] = torch.empty((self.n_layers, *record.shape), dtype=record.dtype,
                                                  pin_memory=record.device.type == "cuda")
            self.filed[name] = set()
        self.filed[name].add(layer)
        if record.device.type == "cpu":
            slab[layer].copy_(record)
            return slab[layer]
        stream = self.streams.get(record.device)
        if stream is None:
            stream = self.streams[record.device] = torch.cuda.Stream(record.device)
        stream.wait_stream(torch.cuda.current_stream(record.device))  # the record is written
        with torch.cuda.stream(stream):
            slab[layer].copy_(record, non_blocking=True)
        record.record_stream(stream)  # its memory is not reused before the copy has read it
        return record

    def take(self, name: str, n_layers: int) -> torch.Tensor | None:
        """The slab of `name` over layers 0 .. n_layers - 1 once every copy into it has landed, handed over: a
        later forward fills a new one. None where one of those layers' records did not go into it."""
        if not set(range(n_layers)) <= self.filed.get(name, set()):
            return None
        for stream in self.streams.values():
            stream.synchronize()
        del self.filed[name]
        return self.slabs.pop(name)[:n_layers]
