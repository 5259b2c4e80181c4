"""The device mesh and the one table that places logical axes on it.

Mesh axes are ``data, fsdp, tensor, expert`` (grit_jax.choices.MESH_AXES). Every parameter carries
logical axis names in its ``out_sharding`` metadata (grit_jax/model/layers.py); activations are
constrained at block boundaries with ``constrain(x, ("batch", "length", "act_embed"))``.
``LOGICAL_AXIS_RULES`` maps each logical name to the mesh axes it is split over.

Divisibility policy: when a dimension's size is not divisible by the product of the mesh axes its
rule names, trailing mesh axes are dropped from that dimension until it divides (down to full
replication). Example: Mistral's 8 key/value heads on a 16-way ``tensor`` axis are replicated. This
keeps every configuration runnable; the cost is memory, which the AOT compile reports. Parameters
whose logical names are missing from the table are an error that names them.

``constrain`` is active inside ``use_mesh(mesh)`` (the train step traces under it; it works inside
``jax.jit``) or ``jax.set_mesh(mesh)``, and is a no-op when no mesh is set, so the model runs
unchanged on one device.
"""

from __future__ import annotations

import contextlib
import contextvars
import math
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import numpy as np
from flax import nnx
from jax.experimental import mesh_utils
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

from grit_jax.choices import BATCH_AXES, MESH_AXES
from grit_jax.errors import UsageError

# logical name -> mesh axes (a tuple; () = replicated). One table for parameters and activations.
LOGICAL_AXIS_RULES: dict[str, tuple[str, ...]] = {
    # parameters
    "vocab": ("tensor",),
    "embed": ("fsdp",),
    "heads": ("tensor",),
    "kv_heads": ("tensor",),
    "head_dim": (),
    "mlp": ("tensor",),
    "layers": (),
    "norm": (),
    "experts": ("expert",),
    "experts_router": (),
    "lora_rank": (),  # LoRA adapters' rank (grit_jax/model/lora.py): small, replicated
    # activations: the batch is split over every axis that does not split the model's features
    "batch": BATCH_AXES,
    "length": (),
    "act_embed": (),
}

# ----------------------------------------------------------------------------- mesh


def mesh_shape(mesh_config: Mapping[str, int], num_devices: int) -> tuple[int, ...]:
    """Sizes of (data, fsdp, tensor, expert) with the one -1 resolved to the remaining devices."""
    sizes = [int(mesh_config.get(a, 1)) for a in MESH_AXES]
    unknown = [a for a, s in zip(MESH_AXES, sizes) if s == -1]
    bad = [f"mesh.{a}={s}" for a, s in zip(MESH_AXES, sizes) if s == 0 or s < -1]
    if bad:
        raise UsageError(f"mesh sizes must be positive or -1, got {', '.join(bad)}")
    if len(unknown) > 1:
        raise UsageError(f"at most one mesh axis may be -1, got {unknown}; set all but one explicitly")
    known = math.prod(s for s in sizes if s != -1)
    if unknown:
        if num_devices % known:
            raise UsageError(
                f"{num_devices} devices are not divisible by the fixed mesh axes "
                f"({dict(zip(MESH_AXES, sizes))}, product {known}); change the mesh sizes"
            )
        sizes[MESH_AXES.index(unknown[0])] = num_devices // known
    total = math.prod(sizes)
    if total > num_devices:
        raise UsageError(
            f"mesh {dict(zip(MESH_AXES, sizes))} needs {total} devices but only {num_devices} are "
            f"available; shrink mesh.data/fsdp/tensor/expert (or set one to -1)"
        )
    return tuple(sizes)


def make_mesh(mesh_config: Mapping[str, int], devices: Sequence[Any] | None = None) -> Mesh:
    """A mesh over axes (data, fsdp, tensor, expert) from ``config.mesh``.

    ``devices`` defaults to ``jax.devices()``; pass a TPU topology's devices to compile ahead of time.
    A mesh smaller than the devices uses the first ones. ``mesh_config["slices"]`` (default 1) > 1 builds
    a multislice mesh (``slice_grid``): only ``data`` spans slices.
    """
    devices = list(jax.devices() if devices is None else devices)
    shape = mesh_shape(mesh_config, len(devices))
    slices = int(mesh_config.get("slices", 1))
    if slices < 1:
        raise UsageError(f"mesh.slices={slices}: expected an integer >= 1")
    if slices > 1 or _slices_of_devices(devices) > 1:
        grid = slice_grid(shape, devices, slices)
    else:
        grid = _grid(shape, devices[: math.prod(shape)])
    return Mesh(grid, MESH_AXES, axis_types=(AxisType.Auto,) * len(MESH_AXES))


def _grid(shape: tuple[int, ...], devices: list) -> np.ndarray:
    try:
        return mesh_utils.create_device_mesh(shape, devices)
    except Exception:  # topologies mesh_utils cannot lay out physically: plain order
        return np.asarray(devices, dtype=object).reshape(shape)


# ----------------------------------------------------------------------------- multislice


def _tpu_slice_indices(devices: Sequence[Any]) -> list[int] | None:
    """Each TPU device's ``slice_index`` (a multislice TPU says which slice each chip is in), or None for
    other devices (a CPU of a multi-process run has a slice_index too, always 0)."""
    if all(getattr(d, "platform", "") == "tpu" and hasattr(d, "slice_index") for d in devices):
        return [int(d.slice_index) for d in devices]
    return None


def _slices_of_devices(devices: Sequence[Any]) -> int:
    """How many slices the devices say they are in: TPU devices their slice_index, others 1."""
    return len(set(_tpu_slice_indices(devices) or [0]))


def device_slices(devices: Sequence[Any], slices: int) -> list[int]:
    """The slice of each device: its ``slice_index`` on TPU; elsewhere (CPU, GPU: no slice of their own) taken
    from its process, ``process_index // (processes // slices)`` (launch/local.sh's hosts, in slices of
    consecutive processes), or in one process from its position (``slices`` equal runs of the devices)."""
    indices = _tpu_slice_indices(devices)
    if indices is not None:
        return indices
    processes = sorted({d.process_index for d in devices})
    if len(processes) == 1:
        return [i * slices // len(devices) for i in range(len(devices))]
    if len(processes) % slices:
        raise UsageError(
            f"mesh.slices={slices} must divide the {len(processes)} hosts (processes): a host is in one slice"
        )
    per_slice = len(processes) // slices
    return [processes.index(d.process_index) // per_slice for d in devices]


def slice_grid(shape: tuple[int, ...], devices: Sequence[Any], slices: int) -> np.ndarray:
    """The device grid of a mesh of ``shape`` over ``slices`` slices: each slice holds a contiguous block
    of the data axis (data / slices of it) and the whole of fsdp, tensor and expert, so that only the
    data axis's collectives (the gradient reduction, the contrastive loss's gather) cross the
    data-center network (DCN) between slices; the heavy FSDP and tensor traffic stays on ICI.

    TPU devices (with ``slice_index``) go through ``mesh_utils.create_hybrid_device_mesh``; others are
    grouped by ``device_slices`` and laid out the same way: slice by slice along the data axis.
    """
    what = f"mesh.slices={slices}"
    mesh = dict(zip(MESH_AXES, shape))
    if len(devices) % slices:
        raise UsageError(f"{what} must divide the {len(devices)} devices")
    if math.prod(shape) != len(devices):
        raise UsageError(f"{what}: the mesh {mesh} must use all {len(devices)} devices of the slices")
    if shape[0] % slices:
        raise UsageError(
            f"{what}: mesh.data={shape[0]} must be a multiple of it; only the data axis spans slices "
            "(fsdp, tensor and expert stay inside one)"
        )
    tpu, found = _tpu_slice_indices(devices) is not None, _slices_of_devices(devices)
    if tpu and found != slices:
        raise UsageError(
            f"{what}, but the devices are in {found} slice(s) (their slice_index); set mesh.slices={found}"
        )
    inner, outer = (shape[0] // slices, *shape[1:]), (slices, *[1] * (len(shape) - 1))
    if tpu:
        try:
            return mesh_utils.create_hybrid_device_mesh(inner, outer, devices)
        except Exception:  # a per-slice shape mesh_utils cannot lay out physically: below, plain order
            pass
    of = device_slices(devices, slices)
    groups = [[d for d, s in zip(devices, of) if s == i] for i in sorted(set(of))]
    if len(groups) != slices or len({len(g) for g in groups}) != 1:
        raise UsageError(f"{what}: the devices do not split into {slices} equal slices")
    return np.concatenate([_grid(inner, g) for g in groups], axis=0)


# ----------------------------------------------------------------------------- logical -> spec


def logical_to_spec(
    names: Sequence[str | None],
    shape: Sequence[int] | None = None,
    mesh_axis_sizes: Mapping[str, int] | None = None,
    what: str = "array",
) -> PartitionSpec:
    """PartitionSpec for logical axis ``names`` (None = replicated), with the divisibility fallback.

    Mesh axes the mesh lacks or that are already used by an earlier dimension are skipped.
    """
    spec, used = [], set()
    for i, name in enumerate(names):
        if name is None:
            spec.append(None)
            continue
        if name not in LOGICAL_AXIS_RULES:
            raise UsageError(
                f"{what}: logical axis {name!r} has no rule in grit_jax.sharding.LOGICAL_AXIS_RULES "
                f"(known: {sorted(LOGICAL_AXIS_RULES)})"
            )
        axes = [
            a
            for a in LOGICAL_AXIS_RULES[name]
            if a not in used and (mesh_axis_sizes is None or a in mesh_axis_sizes)
        ]
        if shape is not None and mesh_axis_sizes is not None:
            while axes and shape[i] % math.prod(mesh_axis_sizes[a] for a in axes):
                axes.pop()  # divisibility fallback: drop trailing mesh axes
            axes = [a for a in axes if mesh_axis_sizes[a] > 1] or axes
        used.update(axes)
        spec.append(tuple(axes) if len(axes) > 1 else (axes[0] if axes else None))
    return PartitionSpec(*spec)


_ACTIVE_MESH: contextvars.ContextVar[Mesh | None] = contextvars.ContextVar("grit_mesh", default=None)


@contextlib.contextmanager
def use_mesh(mesh: Mesh | None):
    """Make ``constrain`` place activations on ``mesh`` while tracing (usable inside ``jax.jit``)."""
    token = _ACTIVE_MESH.set(mesh)
    try:
        yield mesh
    finally:
        _ACTIVE_MESH.reset(token)


def current_mesh():
    """The mesh ``constrain`` uses: ``use_mesh``'s, else ``jax.set_mesh``'s, else None."""
    mesh = _ACTIVE_MESH.get()
    if mesh is not None:
        return mesh
    abstract = jax.sharding.get_abstract_mesh()
    return None if abstract is None or abstract.empty else abstract


def constrain(x: jax.Array, names: Sequence[str | None]) -> jax.Array:
    """``with_sharding_constraint`` by logical names under the current mesh; no-op without one."""
    mesh = current_mesh()
    if mesh is None:
        return x
    if len(names) != x.ndim:
        raise ValueError(f"constrain: {len(names)} names {tuple(names)} for an array of shape {x.shape}")
    spec = logical_to_spec(names, x.shape, dict(mesh.shape), what="activation")
    if isinstance(mesh, Mesh):
        return jax.lax.with_sharding_constraint(x, NamedSharding(mesh, spec))
    return jax.lax.with_sharding_constraint(x, spec)


def _variable_names(variable) -> tuple[str | None, ...] | None:
    meta = variable.get_metadata() if hasattr(variable, "get_metadata") else {}
    names = meta.get("out_sharding")
    return tuple(names) if names else None


def param_specs(state, mesh: Mesh):
    """PartitionSpecs for every variable of an ``nnx.State``: the same tree, values replaced.

    Scalars may go without names (replicated); every other variable needs one logical name per
    dimension (``out_sharding`` metadata) that the rules table knows. Otherwise
    ``UsageError`` lists every such parameter by path.
    """
    sizes = dict(mesh.shape)
    problems, out = [], []
    for path, var in nnx.to_flat_state(state):
        key = ".".join(str(p) for p in path)
        shape = tuple(np.shape(var.get_value()))
        names = _variable_names(var)
        if names is None and shape:
            problems.append(f"{key} {shape}: no logical axis names (out_sharding metadata)")
        elif names is not None and len(names) != len(shape):
            problems.append(f"{key} {shape}: {len(names)} logical names {names} for {len(shape)} dims")
        elif names is not None and any(n is not None and n not in LOGICAL_AXIS_RULES for n in names):
            unknown = [n for n in names if n is not None and n not in LOGICAL_AXIS_RULES]
            problems.append(f"{key} {shape}: logical names {unknown} have no rule")
        else:
            out.append((path, var.replace(logical_to_spec(names or (), shape, sizes, what=key))))
    if problems:
        raise UsageError(
            "parameters the sharding rules do not place (add their logical names to "
            "grit_jax.sharding.LOGICAL_AXIS_RULES or to the parameter's out_sharding):\n  "
            + "\n  ".join(problems)
        )
    return nnx.from_flat_state(out)


def named_shardings(specs, mesh: Mesh):
    """Turn a tree of PartitionSpecs into NamedShardings on ``mesh``."""
    return jax.tree.map(
        lambda p: NamedSharding(mesh, p), specs, is_leaf=lambda x: isinstance(x, PartitionSpec)
    )
