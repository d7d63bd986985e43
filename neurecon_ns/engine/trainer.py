"""nerfstudio's trainer with what long surface runs need: steps with a non-finite loss or gradient are
skipped, checkpoints never hold non-finite values and are written whole, `--load-dir` resumes exactly,
the writer gets plain numbers, and several processes train on a CPU.

Every method of the plugin trains with `SurfaceTrainer` (`methods.py`); the loop itself is nerfstudio's.

- Non-finite steps: after the backward pass, if a loss term or a parameter's gradient is NaN or infinite,
  the optimisers and schedulers do not step (parameters, Adam's moments and the learning rate stay as
  they were), and one line names the step and the culprit. Under DDP the decision is all-reduced, so every
  process skips the same steps. With a gradient scaler (mixed precision on a GPU) infinite gradients are
  the scaler's business: it skips those steps itself and lowers its scale, so only the loss is checked.
- Checkpoints: written to a temporary file and renamed, so an interrupted save leaves the previous one;
  a state holding NaN or infinity is not written at all. Each checkpoint also holds the random number
  generators' states, so a resumed run draws the same rays as an uninterrupted one.
- Resume: with `--load-dir`, `--max-num-iterations` counts from step 0 as in the run that wrote the
  checkpoint (nerfstudio counts it from the checkpoint's step), so stopping at step N and resuming ends
  on the same step, in the same state, as never stopping.
- DDP on a CPU: nerfstudio's pipeline hands its rank to DDP as a CUDA device id, which torch refuses for a
  CPU module; here the model of a CPU run with several processes is wrapped without device ids.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import os
import random
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Literal, Optional, Sequence, Set, Tuple, Type

import numpy as np
import torch
import torch.distributed as dist
from nerfstudio.engine.trainer import Trainer, TrainerConfig
from nerfstudio.utils import profiler
from nerfstudio.utils.decorators import check_main_thread
from nerfstudio.utils.rich_utils import CONSOLE
from torch import Tensor
from torch.nn.parallel import DistributedDataParallel

from neurecon_ns.errors import UserInputError
from neurecon_ns.utils.host_memory import keep_freed_host_memory

CHECKPOINT_NAME = re.compile(r"^step-(\d+)\.ckpt$")


@dataclass
class SurfaceTrainerConfig(TrainerConfig):
    """nerfstudio's training settings; `--load-dir` resumes to the same final step as an uninterrupted run."""

    _target: Type = field(default_factory=lambda: SurfaceTrainer)
    keep_freed_host_memory: bool = True
    """On a CPU, tell this process's C library (glibc's malloc; nothing happens elsewhere) to keep freed memory for
    the next step instead of unmapping every large tensor when it is freed and faulting its pages in again: a
    process-wide change, made when training is set up (docs/speed.md has what it saves). Resident memory then
    stays at its peak."""
    cpu_size: bool = True
    """A hash-grid method (`neus-fast`) set up with `--machine.device-type cpu` trains at its CPU size: the grid
    shrunk to 8 levels up to 512 cells, 512 rays, the closed-form SDF gradient of the torch grid, schedules fitted to
    `--max-num-iterations` (`training.fit_hash_grid_method_to_cpu`). False keeps the GPU size."""

    def __post_init__(self) -> None:
        """Settles the CPU size once the command line is read, before nerfstudio saves config.yml, so that the
        saved config is the model that trains (ns-viewer, ns-render and `neurecon mesh` rebuild it from there).
        A setting given on the command line is kept: the CPU size replaces only the values that are still the
        registered method's."""
        from neurecon_ns.training import fit_hash_grid_method_to_cpu, has_hash_grid

        if not (self.cpu_size and self.machine.device_type == "cpu" and has_hash_grid(self)):
            return
        from nerfstudio.configs.method_configs import all_methods

        fitted = copy.deepcopy(self)
        fit_hash_grid_method_to_cpu(fitted, self.max_num_iterations)
        preset = all_methods.get(self.method_name, self)
        given = command_line_settings(sys.argv[1:])
        self.pipeline = merge_unchanged(copy.deepcopy(self.pipeline), fitted.pipeline, preset.pipeline, given, "pipeline")
        self.optimizers = merge_unchanged(copy.deepcopy(self.optimizers), fitted.optimizers, preset.optimizers, given, "optimizers")
        grid = self.pipeline.model.networks.geometry.hash_grid
        rays = self.pipeline.datamanager.train_num_rays_per_batch
        quadratic = f", the coarsest {grid.quadratic_levels} quadratic" if grid.quadratic_levels > 0 else ""
        CONSOLE.print(
            f"{self.method_name} on a CPU: training at the CPU size ({grid.num_levels}-level grid up to "
            f"{grid.max_resolution} cells{quadratic}, {rays} rays, "
            f"closed-form SDF gradient, curvature loss at the surface, grid smoothness, schedules over {self.max_num_iterations} "
            "steps); pass --cpu-size False to keep the GPU size."
        )


def command_line_settings(argv: Sequence[str]) -> Set[str]:
    """The dotted names of the settings a command line gives (`--pipeline.model.networks.gradient numerical` or
    `--pipeline.model.networks.gradient=numerical` -> `pipeline.model.networks.gradient`), dashes read as
    underscores as tyro reads them."""
    return {token[2:].partition("=")[0].replace("-", "_") for token in argv if token.startswith("--")}


def merge_unchanged(given, fitted, preset, set_by_user: Set[str] = frozenset(), path: str = ""):
    """`fitted`'s value wherever `given` still holds `preset`'s and the setting at `path` is not in `set_by_user`
    (a command line may repeat the preset's value on purpose), `given`'s elsewhere, leaf by leaf through
    dataclasses and dicts (`given` is updated in place where it is a dataclass)."""
    if dataclasses.is_dataclass(given) and not isinstance(given, type) and type(fitted) is type(given) is type(preset):
        for config_field in dataclasses.fields(given):
            name = config_field.name
            merged = merge_unchanged(getattr(given, name), getattr(fitted, name), getattr(preset, name), set_by_user, f"{path}.{name}")
            setattr(given, name, merged)
        return given
    if isinstance(given, dict) and isinstance(fitted, dict) and isinstance(preset, dict):
        return {key: merge_unchanged(value, fitted[key], preset.get(key, value), set_by_user, f"{path}.{key}") if key in fitted else value
                for key, value in given.items()}
    return fitted if given == preset and path not in set_by_user else given


class SurfaceTrainer(Trainer):
    """nerfstudio's `Trainer` with non-finite steps skipped, whole and finite checkpoints, exact resume and
    CPU multi-process training (see the module's docstring)."""

    config: SurfaceTrainerConfig

    def __init__(self, config: TrainerConfig, local_rank: int = 0, world_size: int = 1) -> None:
        super().__init__(config, local_rank, world_size)
        self.skipped_steps: List[int] = []
        """Steps whose update was skipped because a loss term or gradient was not finite."""
        self.latest_loss: float = float("nan")
        """Total loss of the last training step (a progress bar reads it)."""

    # -- set-up -------------------------------------------------------------------------------------

    def setup(self, test_mode: Literal["test", "val", "inference"] = "val") -> None:
        if self.device == "cpu" and self.config.keep_freed_host_memory:
            keep_freed_host_memory()
        wrap_on_cpu = self.world_size > 1 and self.device == "cpu"
        if not wrap_on_cpu:
            super().setup(test_mode)
            return
        # nerfstudio's pipeline would call DDP(model, device_ids=[rank]), which torch refuses on a CPU:
        # build it as a single process's, then wrap it here
        world_size, self.world_size = self.world_size, 1
        try:
            super().setup(test_mode)
        finally:
            self.world_size = world_size
        self.pipeline.world_size = world_size
        self.pipeline.datamanager.world_size = world_size
        self.pipeline._model = DistributedDataParallel(self.pipeline._model, find_unused_parameters=True)
        dist.barrier()

    # -- one step -------------------------------------------------------------------------------------

    @profiler.time_function
    def train_iteration(self, step: int) -> Tuple[Tensor, Dict[str, Tensor], Dict[str, Tensor]]:
        """nerfstudio's iteration (gradient accumulation, autocast, scaler), with the update skipped when the
        loss or a gradient is not finite; returns detached values for the writer."""
        groups = list(self.optimizers.parameters.keys())
        accumulation = self.gradient_accumulation_steps
        self.optimizers.zero_grad_some([group for group in groups if step % accumulation[group] == 0])
        device_type = self.device.split(":")[0]
        with torch.autocast(device_type="cpu" if device_type == "mps" else device_type, enabled=self.mixed_precision):
            _, loss_dict, metrics_dict = self.pipeline.get_train_loss_dict(step=step)
            loss = functools.reduce(torch.add, loss_dict.values())
        self.grad_scaler.scale(loss).backward()  # type: ignore[union-attr]

        problem = self.non_finite_problem(loss_dict)
        if self._any_process(problem is not None):
            self.optimizers.zero_grad_all()
            self.skipped_steps.append(step)
            what = problem or "a non-finite loss or gradient in another process"
            CONSOLE.print(f"[yellow]step {step}: {what}; the step is skipped (parameters and optimiser state unchanged).", soft_wrap=True)
        else:
            self.optimizers.optimizer_scaler_step_some(
                self.grad_scaler, [group for group in groups if step % accumulation[group] == accumulation[group] - 1]
            )
            scale = self.grad_scaler.get_scale()
            self.grad_scaler.update()
            # as nerfstudio does: a step the scaler skipped does not advance the schedules
            if scale <= self.grad_scaler.get_scale():
                self.optimizers.scheduler_step_all(step)

        if self.config.log_gradients:
            norms = {
                f"Gradients/{name}": value.grad.detach().norm()
                for name, value in self.pipeline.model.named_parameters()
                if value.grad is not None
            }
            metrics_dict.update(norms)
            metrics_dict["Gradients/Total"] = sum(norms.values(), torch.tensor(0.0))
        self.latest_loss = float(loss.detach())
        # the writer turns each value into a float: hand it values outside autograd
        return loss.detach(), _detached(loss_dict), _detached(metrics_dict)

    def non_finite_problem(self, loss_dict: Dict[str, Tensor]) -> Optional[str]:
        """What is not finite in this step, in words (the first loss term, else the first parameter whose
        gradient holds NaN or infinity), or None."""
        for name, value in loss_dict.items():
            if not bool(torch.isfinite(value.detach()).all()):
                return f"loss term '{name}' is {_kind(value)}"
        if self.grad_scaler.is_enabled():
            return None
        named = [(name, p.grad) for name, p in self.pipeline.model.named_parameters() if p.grad is not None]
        if not named:
            return None
        norms = torch._foreach_norm([grad.detach() for _, grad in named])
        if bool(torch.isfinite(torch.stack(norms)).all()):
            return None
        for (name, grad), norm in zip(named, norms):
            if not bool(torch.isfinite(norm)):
                return f"the gradient of '{name}' is {_kind(grad)}"
        return None

    def _any_process(self, flag: bool) -> bool:
        if self.world_size <= 1 or not dist.is_initialized():
            return flag
        flag_tensor = torch.tensor([1.0 if flag else 0.0], device=self.device)
        dist.all_reduce(flag_tensor, op=dist.ReduceOp.MAX)
        return bool(flag_tensor.item() > 0)

    # -- checkpoints ------------------------------------------------------------------------------------

    def train(self) -> None:
        total = self.config.max_num_iterations
        remaining = total - self._start_step
        if self._start_step > 0 and remaining <= 0:
            CONSOLE.print(f"The checkpoint is at step {self._start_step - 1}, where --max-num-iterations {total} ends: nothing to train.")
        # nerfstudio's loop runs `max_num_iterations` steps after the loaded one; a resumed run ends where the
        # uninterrupted run would. Before the first step `self.step` is the checkpoint's, so a run with
        # nothing left to do saves the same step again instead of a step 0
        self.step = max(self._start_step - 1, 0)
        self.config.max_num_iterations = max(remaining, 0)
        try:
            super().train()
        finally:
            self.config.max_num_iterations = total

    @check_main_thread
    def save_checkpoint(self, step: int) -> None:
        """nerfstudio's checkpoint plus the random generators' states, written whole (temporary file, then
        rename) and only when every value in it is finite."""
        pipeline_state = self.pipeline.state_dict()
        optimizer_states = {name: optimizer.state_dict() for name, optimizer in self.optimizers.optimizers.items()}
        for where, value in _tensors(pipeline_state, "model") + _tensors(optimizer_states, "optimiser"):
            if value.is_floating_point() and not bool(torch.isfinite(value).all()):
                CONSOLE.print(
                    f"[red]step {step}: {where} holds NaN or infinite values; no checkpoint is written "
                    f"(the latest one in {self.checkpoint_dir} is kept).",
                    soft_wrap=True,
                )
                return
        self.checkpoint_dir.mkdir(parents=True, exist_ok=True)
        path = self.checkpoint_dir / f"step-{step:09d}.ckpt"
        partial = path.with_name(path.name + ".partial")
        torch.save(
            {
                "step": step,
                "pipeline": pipeline_state,
                "optimizers": optimizer_states,
                "schedulers": {name: scheduler.state_dict() for name, scheduler in self.optimizers.schedulers.items()},
                "scalers": self.grad_scaler.state_dict(),
                "rng": random_states(),
            },
            partial,
        )
        os.replace(partial, path)
        if self.config.save_only_latest_checkpoint:
            for old in self.checkpoint_dir.glob("step-*.ckpt"):
                if old != path:
                    old.unlink()

    def _load_checkpoint(self) -> None:
        path = self._checkpoint_to_load()
        if path is None:
            CONSOLE.print("No checkpoint to load: training from scratch.")
            return
        try:
            state = torch.load(path, map_location="cpu")
        except Exception as error:
            raise UserInputError(f"{path}: not a readable checkpoint ({type(error).__name__}); pass another --load-dir or --load-step.") from None
        try:
            self.pipeline.load_pipeline(state["pipeline"], state["step"])
            self.optimizers.load_optimizers(state["optimizers"])
        except UserInputError:
            raise
        except (KeyError, RuntimeError, ValueError) as error:
            first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
            raise UserInputError(
                f"{path}: this checkpoint does not fit {self.config.method_name} with these settings ({first_line}); "
                "resume with the method and settings of the run that wrote it (its config.yml, via --load-config)."
            ) from None
        if "schedulers" in state and self.config.load_scheduler:
            self.optimizers.load_schedulers(state["schedulers"])
        self.grad_scaler.load_state_dict(state["scalers"])
        self._start_step = int(state["step"]) + 1
        if "rng" in state and self.local_rank == 0 and (not dist.is_initialized() or dist.get_rank() == 0):
            set_random_states(state["rng"])
        else:
            # only the first process's generators are saved: the others start afresh, as distinct as at step 0
            seed = self.config.machine.seed + (dist.get_rank() if dist.is_initialized() else self.local_rank)
            set_random_seed(seed + 100_003 * self._start_step)
        CONSOLE.print(f"Resuming from {path} (step {state['step']}).")

    def _checkpoint_to_load(self) -> Optional[Path]:
        if self.config.load_checkpoint is not None:
            path = Path(self.config.load_checkpoint)
            if not path.is_file():
                raise UserInputError(f"{path}: checkpoint not found; pass an existing step-*.ckpt with --load-checkpoint.")
            return path
        if self.config.load_dir is None:
            return None
        directory = Path(self.config.load_dir)
        steps = sorted(int(m.group(1)) for m in map(CHECKPOINT_NAME.match, os.listdir(directory) if directory.is_dir() else []) if m)
        if not steps:
            raise UserInputError(f"{directory}: no checkpoints (step-*.ckpt) here; pass the run's nerfstudio_models/ folder with --load-dir.")
        step = steps[-1] if self.config.load_step is None else self.config.load_step
        if step not in steps:
            raise UserInputError(f"{directory}: no checkpoint of step {step} (steps here: {', '.join(map(str, steps))}); pass one of them with --load-step.")
        return directory / f"step-{step:09d}.ckpt"


def random_states() -> Dict:
    """States of Python's, numpy's and torch's generators, as types `torch.load` reads with weights only."""
    name, keys, position, has_gauss, cached_gaussian = np.random.get_state()
    states = {
        "python": random.getstate(),
        "numpy": (name, torch.from_numpy(np.asarray(keys, dtype=np.int64)), int(position), int(has_gauss), float(cached_gaussian)),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def set_random_states(states: Dict) -> None:
    random.setstate(_as_tuples(states["python"]))
    name, keys, position, has_gauss, cached_gaussian = states["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), position, has_gauss, cached_gaussian))
    torch.set_rng_state(states["torch"])
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


def set_random_seed(seed: int) -> None:
    """Seed Python's, numpy's and torch's generators, as `ns-train` does at the start of a run."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _as_tuples(value):
    """`random.setstate` wants tuples; a checkpoint may hand back lists."""
    return tuple(_as_tuples(item) for item in value) if isinstance(value, (list, tuple)) else value


def _kind(value: Tensor) -> str:
    return "NaN" if bool(torch.isnan(value.detach()).any()) else "infinite"


def _detached(values: Dict[str, Tensor]) -> Dict[str, Tensor]:
    return {name: value.detach() if isinstance(value, Tensor) else value for name, value in values.items()}


def _tensors(tree, where: str) -> List[Tuple[str, Tensor]]:
    """Every tensor in nested dicts and lists, with a readable path."""
    found: List[Tuple[str, Tensor]] = []

    def visit(node, path: str) -> None:
        if isinstance(node, Tensor):
            found.append((path, node))
        elif isinstance(node, dict):
            for key, child in node.items():
                visit(child, f"{path}.{key}" if path else str(key))
        elif isinstance(node, (list, tuple)):
            for index, child in enumerate(node):
                visit(child, f"{path}[{index}]")

    visit(tree, where)
    return found
