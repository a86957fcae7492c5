"""Weight transfer learner -> vLLM through vLLM's own protocol, over gloo on CPU.

vLLM 0.32 moves weights from a trainer into its engines with a pair of engines registered in two factories
(`vllm.distributed.weight_transfer.factory`): a worker-side `WeightTransferEngine` (in each vLLM worker) and
a trainer-side `TrainerWeightTransferEngine` (in the trainer's rank 0) that drives the engine's control plane
(`init_weight_transfer_engine`, `start_weight_update`, `update_weights`, `finish_weight_update`) through a
client while it sends the data. vLLM ships NCCL engines (GPU); this module adds `memrl_gloo`, the same
protocol over a gloo process group between the trainer's rank 0 and every engine worker, so the trainer-side
code is one path on CPU and GPU (the backend name comes from `memrl.device`).

Wire format: the trainer sends, once per update, the names / dtypes / shapes of every parameter and the
sizes of the per-layer groups (`layerwise_groups`: embeddings, one group per decoder layer, final norm and
head); then one gloo broadcast per group of that group's bytes. The worker loads each group as it arrives
(`model.load_weights`) inside vLLM's layerwise reload (`initialize_layerwise_reload` in start,
`finalize_layerwise_reload` in finish: the same calls `reload_weights` makes, which repack CPU kernels), so
neither side ever holds more than one layer's weights in flight.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from datetime import timedelta
from typing import ClassVar

import torch
from vllm.distributed.weight_transfer.base import (
    ParamMeta,
    TrainerInitInfo,
    TrainerWeightTransferEngine,
    WeightSource,
    WeightTransferEngine,
    WeightTransferInitInfo,
    WeightTransferUpdateInfo,
)
from vllm.distributed.weight_transfer.factory import WeightTransferEngineFactory, WeightTransferTrainerFactory

from memrl.net import free_port

log = logging.getLogger(__name__)

BACKEND = "memrl_gloo"
TIMEOUT = timedelta(minutes=10)  # a peer that dies mid-transfer fails the broadcast instead of hanging for good


@dataclass
class GlooInitInfo(WeightTransferInitInfo):
    """Worker side: where the group meets, and this engine's first rank in it (the trainer is rank 0)."""

    master_address: str
    master_port: int
    rank_offset: int
    world_size: int


@dataclass
class GlooUpdateInfo(WeightTransferUpdateInfo):
    """One update: every parameter in send order, cut into per-layer groups of `group_sizes[g]` parameters."""

    names: list[str]
    dtype_names: list[str]  # torch dtype names, e.g. "float32"
    shapes: list[list[int]]  # full (HF checkpoint) shapes
    group_sizes: list[int]  # parameters per broadcast; sums to len(names)

    def __post_init__(self) -> None:
        n = len(self.names)
        if len(self.dtype_names) != n or len(self.shapes) != n or sum(self.group_sizes) != n:
            raise ValueError(f"inconsistent update info: {n} names, {len(self.dtype_names)} dtypes, "
                             f"{len(self.shapes)} shapes, groups covering {sum(self.group_sizes)}")


@dataclass
class GlooTrainerInitInfo(TrainerInitInfo):
    """Trainer side: rank 0 opens the group at `master_address:master_port`; `world_size` = 1 + engine workers."""

    backend: ClassVar[str] = BACKEND

    master_address: str
    master_port: int
    world_size: int


def open_group(address: str, port: int, rank: int, world_size: int):
    """A gloo group of its own, outside torch.distributed's global state (the learner ranks have theirs)."""
    from vllm.distributed.utils import stateless_init_torch_distributed_process_group

    return stateless_init_torch_distributed_process_group(address, port, rank, world_size, "gloo",
                                                          timeout=TIMEOUT)


def close_group(group) -> None:
    """Destroy a group of `open_group` (None: nothing to do); returns None, the closed group's new value."""
    if group is not None:
        from vllm.distributed.utils import stateless_destroy_torch_distributed_process_group

        stateless_destroy_torch_distributed_process_group(group)


ALIGN = 16  # bytes: every tensor starts at a multiple of this in a group buffer, so it can be viewed as any dtype


def pack(tensors: list[torch.Tensor]) -> torch.Tensor:
    """One group's tensors as one flat uint8 CPU buffer (any mix of dtypes), in order, each padded to ALIGN."""
    parts = []
    for t in tensors:
        raw = t.detach().to("cpu").contiguous().reshape(-1).view(torch.uint8)
        parts.append(raw)
        if raw.numel() % ALIGN:
            parts.append(raw.new_zeros(ALIGN - raw.numel() % ALIGN))
    return torch.cat(parts)


def _nbytes(dtype: torch.dtype, shape: list[int]) -> int:
    return torch.Size(shape).numel() * torch.empty((), dtype=dtype).element_size()


def _padded(n: int) -> int:
    return -(-n // ALIGN) * ALIGN


def packed_bytes(dtypes: list[torch.dtype], shapes: list[list[int]]) -> int:
    """The size of `pack`'s buffer for tensors of these dtypes and shapes."""
    return sum(_padded(_nbytes(d, s)) for d, s in zip(dtypes, shapes, strict=True))


def unpack(buf: torch.Tensor, dtypes: list[torch.dtype], shapes: list[list[int]]) -> list[torch.Tensor]:
    """The inverse of `pack`: views into `buf`, one per tensor."""
    if packed_bytes(dtypes, shapes) != buf.numel():
        raise ValueError(f"group buffer holds {buf.numel()} bytes, the update info describes "
                         f"{packed_bytes(dtypes, shapes)}")
    sizes = [_nbytes(d, s) for d, s in zip(dtypes, shapes, strict=True)]
    out, at = [], 0
    for dtype, shape, n in zip(dtypes, shapes, sizes, strict=True):
        out.append(buf[at:at + n].view(dtype).reshape(shape))
        at += _padded(n)
    return out


def broadcast(group, buf: torch.Tensor) -> None:
    """Broadcast from rank 0 of a stateless group (its own ranks; torch.distributed.broadcast maps global ranks)."""
    opts = torch.distributed.BroadcastOptions()
    opts.rootRank = 0
    group.broadcast([buf], opts).wait()


class GlooWeightTransferEngine(WeightTransferEngine[GlooInitInfo, GlooUpdateInfo]):
    """Worker side (one per vLLM worker): receives each layer group and loads it in vLLM's layerwise reload."""

    init_info_cls = GlooInitInfo
    update_info_cls = GlooUpdateInfo
    supports_draft_weight_update = False

    def __init__(self, config, vllm_config, device, model) -> None:
        super().__init__(config, vllm_config, device, model)
        self.group = None

    def init_transfer_engine(self, init_info: GlooInitInfo) -> None:
        pc = self.parallel_config
        rank = init_info.rank_offset + pc.data_parallel_index * pc.world_size + pc.rank
        self.group = open_group(init_info.master_address, init_info.master_port, rank, init_info.world_size)

    def start_weight_update(self) -> None:
        from vllm.model_executor.model_loader.reload import initialize_layerwise_reload

        initialize_layerwise_reload(self.model)

    def update_weights(self, update_info: dict) -> None:
        # vendor (vLLM 0.32): the base update_weights ends with torch.accelerator.synchronize(), which raises
        # "Cannot access accelerator device when none is available" on CPU. gloo is synchronous: nothing to
        # wait for. tests/rl/test_weight_transfer.py fails when the base call stops raising on CPU.
        self.receive_weights(self.parse_update_info(update_info))

    def receive_weights(self, update_info: GlooUpdateInfo) -> None:
        """Receive one update: per group of `update_info.group_sizes`, a uint8 buffer of `packed_bytes` is
        filled by the trainer's broadcast, unpacked into tensors and loaded with `model.load_weights`, so one
        group is in flight at a time. Raises RuntimeError before `init_transfer_engine`."""
        if self.group is None:
            raise RuntimeError("memrl_gloo weight transfer: init_weight_transfer_engine was not called")
        dtypes = [getattr(torch, d) for d in update_info.dtype_names]
        at = 0
        for size in update_info.group_sizes:
            names, ds, shapes = (update_info.names[at:at + size], dtypes[at:at + size],
                                 update_info.shapes[at:at + size])
            buf = torch.empty(packed_bytes(ds, shapes), dtype=torch.uint8)
            broadcast(self.group, buf)
            self.model.load_weights(list(zip(names, unpack(buf, ds, shapes), strict=True)))
            at += size

    def finish_weight_update(self) -> None:
        from vllm.model_executor.model_loader.reload import finalize_layerwise_reload

        finalize_layerwise_reload(self.model, self.model_config)

    def shutdown(self) -> None:
        self.group = close_group(self.group)


class GlooTrainerWeightTransferEngine(TrainerWeightTransferEngine[GlooTrainerInitInfo]):
    """Trainer side: every trainer rank iterates the source (ZeRO-3 gathers are collectives); rank 0 drives the
    engines through the client and broadcasts each group while they receive."""

    init_info_cls = GlooTrainerInitInfo

    def __init__(self, *, client, source: WeightSource, is_sender: bool = True) -> None:
        super().__init__(client=client, source=source, is_sender=is_sender)
        self.group = None

    @classmethod
    def trainer_init(cls, init_info: GlooTrainerInitInfo, *, client, source: WeightSource | None = None):
        """The trainer engine of this rank. On the sender (rank 0) it also opens the gloo group as its rank 0
        while the client has every engine join it (their workers from rank 1 up), both at once since the
        rendezvous blocks until all have joined; other ranks get an engine with no group."""
        if source is None:
            raise ValueError("memrl_gloo weight transfer needs a WeightSource")
        engine = cls(client=client, source=source, is_sender=init_info.is_sender)
        if not engine.is_sender:
            return engine
        worker_info = GlooInitInfo(init_info.master_address, init_info.master_port, 1, init_info.world_size)
        with ThreadPoolExecutor(max_workers=1) as pool:  # the engines block in the rendezvous until rank 0 joins
            joined = pool.submit(client.init_weight_transfer_engine, asdict(worker_info))
            engine.group = open_group(init_info.master_address, init_info.master_port, 0, init_info.world_size)
            joined.result()
        return engine

    def send_weights(self) -> None:
        """One weight update, called on every trainer rank. Non-senders only iterate the source (its ZeRO-3
        gathers are collectives). The sender drives start -> update -> finish on the engines: it sends the
        GlooUpdateInfo through `client.update_weights` (run in a thread, as the engines block receiving),
        then broadcasts each group `pack`ed, checked against the metadata. Raises ValueError when the
        source's groups disagree with its metadata, and an engine's error as soon as it is known."""
        source = self.source
        if not self.is_sender:
            for _ in source.iter_groups():  # stay in the gathers of the sending rank
                pass
            return
        meta = source.metadata()
        groups = source.groups()
        info = GlooUpdateInfo(names=[m.name for m in meta], dtype_names=[str(m.dtype).split(".")[-1] for m in meta],
                              shapes=[list(m.shape) for m in meta], group_sizes=[len(g) for g in groups])
        order = [n for g in groups for n in g]
        if order != info.names:
            raise ValueError("WeightSource.groups() must list metadata() names in order")
        self.client.start_weight_update()
        pool = ThreadPoolExecutor(max_workers=1)
        try:
            received = pool.submit(self.client.update_weights, asdict(info))
            for _names, tensors in _checked(source.iter_groups(), meta):
                if received.done():  # the engines failed before the data: surface it instead of blocking
                    received.result()
                broadcast(self.group, pack(tensors))
            received.result()
        finally:
            pool.shutdown(wait=False)  # a failed broadcast leaves the engines' call pending: never join it
        self.client.finish_weight_update()

    def shutdown(self) -> None:
        self.group = close_group(self.group)


class LearnerSource(WeightSource):
    """The trainable module's parameters in HF names, one per-layer group at a time (`layerwise_groups`).
    Under ZeRO-3 each group is gathered (a collective: every rank iterates the same groups) and released."""

    def __init__(self, module: torch.nn.Module, zero3: bool) -> None:
        self.module, self.zero3 = module, zero3

    def metadata(self) -> list[ParamMeta]:
        return [ParamMeta(n, p.dtype, tuple(getattr(p, "ds_shape", p.shape))) for n, p in self.module.named_parameters()]

    def iter_groups(self) -> Iterator[tuple[list[str], list[torch.Tensor]]]:
        import deepspeed

        params = dict(self.module.named_parameters())
        for names in self.groups():
            ps = [params[n] for n in names]
            gathered = (deepspeed.zero.GatheredParameters(ps, modifier_rank=None) if self.zero3
                        else contextlib.nullcontext())
            with gathered:
                yield names, [p.detach() for p in ps]

    def __iter__(self) -> Iterator[tuple[str, torch.Tensor]]:
        for names, tensors in self.iter_groups():
            yield from zip(names, tensors, strict=True)


def _checked(groups: Iterator[tuple[list[str], list[torch.Tensor]]], meta) -> Iterator:
    """The source's groups, each tensor checked against the metadata the engines were told to expect."""
    at = 0
    for names, tensors in groups:
        for name, t in zip(names, tensors, strict=True):
            m = meta[at]
            if name != m.name or t.dtype != m.dtype or tuple(t.shape) != tuple(m.shape):
                raise ValueError(f"WeightSource disagrees with its metadata at {at}: declared {m.name} {m.dtype} "
                                 f"{tuple(m.shape)}, got {name} {t.dtype} {tuple(t.shape)}")
            at += 1
        yield names, tensors
    if at != len(meta):
        raise ValueError(f"WeightSource yielded {at} parameters, its metadata declares {len(meta)}")


def register() -> None:
    """Register the gloo engines in vLLM's two factories (idempotent; runs at import, in every process that
    imports this module: the vLLM workers import it through the worker extension, memrl.weight_sync)."""
    if BACKEND not in WeightTransferEngineFactory._registry:
        WeightTransferEngineFactory.register_engine(BACKEND, GlooWeightTransferEngine)
    if BACKEND not in WeightTransferTrainerFactory._registry:
        WeightTransferTrainerFactory.register_engine(BACKEND, GlooTrainerWeightTransferEngine)


register()


class EnginesClient:
    """The control plane of several vLLM engines as one `VLLMWeightSyncClient` (what a trainer engine drives).

    `engines` are objects with the methods `init_weight_transfer`, `start_weight_update`, `update_weights`,
    `finish_weight_update(version)` (a `memrl.agents.VLLMBackend`, or a Ray handle of a rollout worker with
    `ray=True`); every call goes to all engines at once (they rendezvous and receive together). Engine i's
    workers take ranks `rank_offset + i * workers_per_engine ...` of the transfer group. The weight version an
    update commits is `self.version`, set by the caller before `send_weights` (vLLM's trainer engines call
    `finish_weight_update()` without one)."""

    def __init__(self, engines: list, workers_per_engine: int = 1, ray: bool = False, timeout: float | None = None):
        self.engines, self.per_engine, self.ray, self.timeout = list(engines), workers_per_engine, ray, timeout
        self.version: int | None = None

    @property
    def world_size(self) -> int:
        """Trainer rank 0 plus every engine worker."""
        return 1 + len(self.engines) * self.per_engine

    def _all(self, method: str, args: list[tuple]) -> list:
        if self.ray:
            import ray

            return ray.get([getattr(e, method).remote(*a) for e, a in zip(self.engines, args, strict=True)],
                           timeout=self.timeout)
        with ThreadPoolExecutor(max_workers=len(self.engines)) as pool:
            futures = [pool.submit(getattr(e, method), *a) for e, a in zip(self.engines, args, strict=True)]
            return [f.result(timeout=self.timeout) for f in futures]

    def init_weight_transfer_engine(self, init_info: dict) -> None:
        base = init_info["rank_offset"]
        self._all("init_weight_transfer", [({**init_info, "rank_offset": base + i * self.per_engine},)
                                           for i in range(len(self.engines))])

    def start_weight_update(self) -> None:
        self._all("start_weight_update", [()] * len(self.engines))

    def update_weights(self, update_info: dict) -> None:
        self._all("update_weights", [(update_info,)] * len(self.engines))

    def finish_weight_update(self, weight_version: str | None = None) -> None:
        version = int(weight_version) if weight_version is not None else self.version
        if version is None:
            raise ValueError("EnginesClient.version must be set before an update is committed")
        self._all("finish_weight_update", [(version,)] * len(self.engines))


def trainer_init_info(backend: str, address: str, port: int, world_size: int, rank: int) -> TrainerInitInfo:
    """The trainer-side init info of a backend: ours (`memrl_gloo`) or vLLM's `nccl` (same fields)."""
    if backend == BACKEND:
        return GlooTrainerInitInfo(address, port, world_size, rank=rank)
    if backend == "nccl":
        from vllm.distributed.weight_transfer.nccl_engine import NCCLTrainerInitInfo

        return NCCLTrainerInitInfo(address, port, world_size, rank=rank)
    raise ValueError(f"unknown weight-transfer backend {backend!r}: {BACKEND} (CPU) or nccl (GPU)")


def connect(source: WeightSource, engines: list, backend: str = BACKEND, address: str = "127.0.0.1"):
    """A trainer engine in this process, joined with in-process engines (`VLLMBackend`s): for tests and benchmarks.
    Returns (trainer engine, client); set `client.version`, then `send_weights()`."""
    client = EnginesClient(engines)
    info = trainer_init_info(backend, address, free_port(), client.world_size, rank=0)
    return WeightTransferTrainerFactory.trainer_init(info, client=client, source=source), client
