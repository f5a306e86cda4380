"""Devices, meshes and data-parallel steps, with the BN statistics' scope kept apart
from the SGD batch (docs/ARCHITECTURE.md).

A `Layout` says how a step runs: `none` (one device, `jit`), `pmap`, or
`shard_map` over a 2-D mesh ('group', 'member'). The global batch is split over
the devices; gradients are averaged over all of them. BN batch statistics pool over
`sync_size` devices: all (`global`), one (`local`) or groups of k. Under shard_map
a group is the mesh's 'member' axis, so no `axis_index_groups` is needed (Flax's
BN with groups fails under shard_map's checks); under pmap groups are
`axis_index_groups`. The step body is one function for both.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import sys
from typing import Any

import jax
import numpy as np
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from bnlab.config import ConfigError

PMAP_AXIS = "batch"
MESH_AXES = ("group", "member")
MODES = ("none", "pmap", "shard_map")


@dataclasses.dataclass(frozen=True)
class Layout:
    mode: str = "none"
    num_devices: int = 1
    sync_size: int = 1  # devices whose examples pool into one BN statistic

    @property
    def data_axes(self) -> str | tuple[str, ...] | None:
        """The axis name(s) that span every data-parallel device inside a step."""
        return {"none": None, "pmap": PMAP_AXIS, "shard_map": MESH_AXES}[self.mode]

    def bn_options(self) -> dict[str, Any]:
        """The cross-device options of `norms.BatchNorm` for this layout: the axes its
        batch statistics pool over, and the remaining data-parallel axes its running
        averages are averaged over (so every replica keeps the same ones)."""
        if self.mode == "none":
            return {}
        k, whole = self.sync_size, self.sync_size == self.num_devices
        if self.mode == "pmap":
            options: dict[str, Any] = {"axis_name": None if whole else PMAP_AXIS}
            if k > 1:
                options["sync_axis_name"] = PMAP_AXIS
            if 1 < k < self.num_devices:
                options["sync_groups"] = tuple(tuple(range(i, i + k))
                                               for i in range(0, self.num_devices, k))
            return options
        # shard_map tracks which axes a value varies over: reduce each axis once.
        if whole:
            return {"sync_axis_name": MESH_AXES}
        if k == 1:
            return {"axis_name": MESH_AXES}
        return {"sync_axis_name": "member", "axis_name": "group"}

    @functools.cached_property
    def devices(self) -> list:
        # pmap runs on this process's devices; a mesh spans every process's.
        pool = jax.local_devices() if self.mode == "pmap" else jax.devices()
        return pool[:self.num_devices]

    @functools.cached_property
    def mesh(self) -> jax.sharding.Mesh:
        shape = (self.num_devices // self.sync_size, self.sync_size)
        return jax.make_mesh(shape, MESH_AXES, devices=self.devices)

    # ------------------------------------------------------------ compiling

    def compile(self, body, batch_args: int, *, replicated_args: int = 1):
        """Compiles `body(*replicated, *batch)` → outputs replicated on every device.

        The first `replicated_args` arguments (state, totals) are the same on every
        device; the next `batch_args` are split along their first axis. The body must
        reduce what it returns over `data_axes` (its outputs are taken as replicated).
        """
        if self.mode == "none":
            return jax.jit(body)
        if self.mode == "pmap":
            return jax.pmap(body, axis_name=PMAP_AXIS, devices=self.devices)
        data = P(MESH_AXES)
        in_specs = (P(),) * replicated_args + (data,) * batch_args
        return jax.jit(jax.shard_map(body, mesh=self.mesh, in_specs=in_specs, out_specs=P()))

    def vary(self, tree):
        """Marks replicated values as per-device before differentiating, so that
        shard_map does not sum their gradients over devices by itself; the step then
        averages them explicitly, the same way under pmap and shard_map."""
        if self.mode != "shard_map":
            return tree
        return jax.lax.pcast(tree, MESH_AXES, to="varying")

    def mean(self, tree):
        return tree if self.mode == "none" else jax.lax.pmean(tree, self.data_axes)

    def sum(self, tree):
        return tree if self.mode == "none" else jax.lax.psum(tree, self.data_axes)

    # ------------------------------------------------------------ data placement

    def replicate(self, tree):
        """One copy of `tree` on every device (the same value in every process)."""
        if self.mode == "none":
            return tree
        host = jax.device_get(tree)
        if self.mode == "pmap":
            # A stacked copy per device, split over a 1-D mesh: what pmap takes
            # (jax.device_put_replicated is gone since JAX 0.10).
            line = jax.sharding.Mesh(np.array(self.devices), (PMAP_AXIS,))
            split = NamedSharding(line, P(PMAP_AXIS))
            count = self.num_devices
            return jax.tree.map(
                lambda x: jax.device_put(np.broadcast_to(x, (count,) + np.shape(x)), split), host)
        sharding = NamedSharding(self.mesh, P())
        return jax.tree.map(
            lambda x: jax.make_array_from_callback(np.shape(x), sharding, lambda _: x), host)

    def local_slice(self, global_rows: int) -> slice:
        """This process's rows of a global batch (all of them with one process)."""
        per_process = global_rows // jax.process_count()
        start = jax.process_index() * per_process
        return slice(start, start + per_process)

    def shard(self, *arrays: np.ndarray):
        """Puts global host batches (the same in every process) on the devices, split
        along the first axis; each process sends only its own rows."""
        if self.mode == "none":
            return arrays
        if self.mode == "pmap":
            return tuple(a.reshape((self.num_devices, -1) + a.shape[1:]) for a in arrays)
        sharding = NamedSharding(self.mesh, P(MESH_AXES))
        rows = self.local_slice(len(arrays[0]))
        return tuple(jax.make_array_from_process_local_data(sharding, a[rows], a.shape)
                     for a in arrays)

    def fetch(self, tree):
        """Host values of replicated device values (pmap: replica 0; all are equal)."""
        if self.mode == "pmap":
            tree = jax.tree.map(lambda x: x[0], tree)
        elif self.mode == "shard_map":
            tree = jax.tree.map(lambda x: x.addressable_data(0), tree)
        return jax.device_get(tree)

    def replicas(self, tree) -> list:
        """Every device's copy, for checking that replicas agree."""
        if self.mode == "pmap":
            return [jax.tree.map(lambda x, i=i: np.asarray(x[i]), tree)
                    for i in range(self.num_devices)]
        if self.mode == "shard_map":
            count = len(jax.tree.leaves(tree)[0].addressable_shards)
            return [jax.tree.map(lambda x, i=i: np.asarray(x.addressable_shards[i].data), tree)
                    for i in range(count)]
        return [jax.device_get(tree)]


def layout_from_config(config) -> Layout:
    """The layout a config asks for; a `ConfigError` when it cannot run here."""
    if config.parallel not in MODES:
        raise ConfigError("parallel", config.parallel, f"allowed: {', '.join(MODES)}")
    if config.parallel == "none":
        return Layout()
    if jax.process_count() > 1 and config.get("checkpoint_every"):
        raise ConfigError("checkpoint_every", config.checkpoint_every,
                          "checkpoints of multi-process runs are not supported yet")
    if jax.process_count() > 1 and config.parallel == "pmap":
        # Here pmap spans this process's devices: its means would skip the others.
        raise ConfigError("parallel", config.parallel,
                          "several processes need parallel='shard_map'")
    available = jax.local_device_count() if config.parallel == "pmap" else jax.device_count()
    num_devices = config.num_devices or available
    if jax.process_count() > 1 and num_devices != available:
        raise ConfigError("num_devices", num_devices,
                          f"several processes use all {available} devices")
    if not 1 <= num_devices <= available:
        raise ConfigError("num_devices", num_devices,
                          f"must be between 1 and the {available} devices here")
    if num_devices == 1:
        _warn_once(f"warning: parallel={config.parallel} on 1 device: each BN statistic "
                   f"spans the whole batch of {config.batch_size}, not a device's share "
                   f"(on a CPU, XLA_FLAGS=--xla_force_host_platform_device_count=8 "
                   f"simulates 8 devices)")
    if config.batch_size % num_devices:
        raise ConfigError("batch_size", config.batch_size,
                          f"must divide over the {num_devices} devices")
    if config.batch_size % jax.process_count():
        raise ConfigError("batch_size", config.batch_size,
                          f"must divide over the {jax.process_count()} processes")
    sync = str(config.bn_sync)
    if sync == "global":
        sync_size = num_devices
    elif sync == "local":
        sync_size = 1
    elif sync.isdigit() and int(sync) >= 1:
        sync_size = int(sync)
        if num_devices % sync_size:
            raise ConfigError("bn_sync", config.bn_sync,
                              f"groups of {sync_size} must divide the {num_devices} devices")
    else:
        raise ConfigError("bn_sync", config.bn_sync,
                          "allowed: global, local, or a group size k (e.g. 2)")
    return Layout(config.parallel, num_devices, sync_size)


_WARNED: set[str] = set()


def _warn_once(message: str) -> None:
    """A warning line on stderr, once per process (a sweep checks each shape, then
    each run prepares: the same layout many times)."""
    if message not in _WARNED:
        _WARNED.add(message)
        print(message, file=sys.stderr, flush=True)


def norm_batch_size(config, layout: Layout) -> int:
    """Examples one BN statistic averages over: the ghost batch (or the per-device
    batch) times the devices that pool their statistics."""
    per_device = config.batch_size // layout.num_devices
    return (config.virtual_batch_size or per_device) * layout.sync_size


def initialize_distributed(config) -> None:
    """`jax.distributed.initialize` when the config names a coordinator, or when a
    cluster launched several tasks (Slurm, Open MPI); a no-op otherwise and when
    already done. Must run before anything touches the devices."""
    if jax.distributed.is_initialized():
        return
    if config.get("coordinator_address"):
        jax.distributed.initialize(coordinator_address=config.coordinator_address,
                                   num_processes=config.num_processes,
                                   process_id=config.process_id)
    elif int(os.environ.get("SLURM_NTASKS", "1")) > 1 or int(
            os.environ.get("OMPI_COMM_WORLD_SIZE", "1")) > 1:
        jax.distributed.initialize()
