"""The training loop: the two-phase PCSR recipe, validation, logging and exact-resume checkpoints.

A checkpoint (`last.pt`) is the complete state after an iteration (model, optimiser, scheduler,
every RNG including each rank's data generator, best validation, wall time) in types that
`torch.load(weights_only=True)` accepts, written to a temporary file and renamed into place, so
a run killed at any moment (kill -9 included) resumes from the last checkpoint and continues as
if it had never stopped.
"""
from __future__ import annotations

import json
import math
import os
import signal
import sys
import threading
import time
from contextlib import nullcontext
from pathlib import Path

import torch
from torch import nn

from .. import weights as weights_io
from ..core import Core
from ..device import autocast, emulated_bf16
from ..errors import PcsrError
from ..io import atomic_write
from ..models.pcsr import Routing, build_model
from . import distributed as D
from .config import TrainConfig, save_config
from .data import Batch, PatchSampler, load_images
from .ema import Ema, inference_state
from .hold import apply_holds, hold_masks, named_parts
from .losses import RECONSTRUCTION, average_loss

CHECKPOINT_FORMAT = 1
LICENCE_NOTE = ("Trained on the HR folders listed under 'data'. T91, BSD200 (BSDS: non-commercial research use) "
                "and SunHays80 carry research-only licences, and so do weights trained on them.")


def pick_device(name: str, local_rank: int = 0) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda":
        if not torch.cuda.is_available():
            raise PcsrError("device cuda: no CUDA device is available")
        return torch.device("cuda", local_rank)
    return torch.device(name)


def training_precision(name: str, device: torch.device) -> str:
    """The autocast precision a run uses. `auto` is bf16 only where the hardware runs it natively
    (AMX / AVX512-BF16 CPUs, CUDA with bf16): elsewhere bf16 is emulated, far slower than fp32."""
    why = emulated_bf16(device) if name in ("auto", "bf16") else ""
    if name == "auto":
        return "fp32" if why else "bf16"
    if why:
        print(f"pcsr train: warning: {why} (use precision: auto)", file=sys.stderr)
    return name


def atomic_torch_save(obj, path: Path) -> None:
    """A checkpoint written as every file of pcsr is (pcsr.io.atomic_write): complete or not at all."""
    atomic_write(path, lambda f: torch.save(obj, f), error=PcsrError)


def read_checkpoint(path: str | Path) -> dict:
    try:
        ck = torch.load(str(path), map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise PcsrError(f"{path}: no such checkpoint") from None
    except Exception as e:  # torch raises several kinds for a damaged file
        raise PcsrError(f"{path}: cannot read checkpoint ({str(e).splitlines()[0][:200]})") from None
    if not isinstance(ck, dict) or ck.get("format") != CHECKPOINT_FORMAT:
        raise PcsrError(f"{path}: not a pcsr training checkpoint")
    return ck


def load_init_state(src: str) -> dict:
    """Model weights from a run folder (its last.pt), a .pt checkpoint (inference_state) or a .safetensors model."""
    p = Path(src)
    if p.is_dir():
        p = p / "last.pt"
    if p.suffix == ".safetensors":
        net, _ = weights_io.load(p)
        return net.state_dict()
    return inference_state(read_checkpoint(p))


class CosineSchedule:
    """Cosine annealing from `base` to `floor` over `total` iterations, in closed form of the step
    count, so that a resumed run with a longer (or shorter) `optim.iterations` follows the new curve."""

    def __init__(self, opt: torch.optim.Optimizer, base: float, floor: float, total: int):
        self.opt, self.base, self.floor, self.total, self.steps = opt, base, floor, total, 0
        self._apply()

    def lr(self, t: int) -> float:
        t = min(t, self.total)
        return self.floor + (self.base - self.floor) * (1 + math.cos(math.pi * t / self.total)) / 2

    def _apply(self) -> None:
        for g in self.opt.param_groups:
            g["lr"] = self.lr(self.steps)

    def step(self) -> None:
        self.steps += 1
        self._apply()

    def get_last_lr(self) -> list[float]:
        return [self.lr(self.steps)]

    def state_dict(self) -> dict:
        return {"steps": self.steps, "base": self.base, "floor": self.floor, "total": self.total}

    def load_state_dict(self, state: dict) -> None:
        self.steps = int(state["steps"])
        self._apply()


class Trainer:
    def __init__(self, cfg: TrainConfig, run_dir: str | Path, resume: bool = False, stop_after: int | None = None,
                 progress: bool = True, minutes: float | None = None, images: list[torch.Tensor] | None = None):
        if minutes is not None and not minutes > 0:
            raise PcsrError(f"minutes must be positive, got {minutes}")
        self.cfg, self.run_dir, self.stop_after, self.progress, self.minutes = cfg, Path(run_dir), stop_after, progress, minutes
        self.dist = D.init_from_env(use_cuda=cfg.device in ("auto", "cuda") and torch.cuda.is_available())
        self.device = pick_device(cfg.device, self.dist.local_rank)
        threads = cfg.threads or max(1, (os.cpu_count() or 1) // self.dist.local_world)
        torch.set_num_threads(threads)
        if cfg.flush_denormal:
            torch.set_flush_denormal(True)
        self.spec = cfg.spec()
        self.is_pcsr = self.spec.is_pcsr
        ckpt_path = self.run_dir / "last.pt"
        if self.dist.main:
            if ckpt_path.exists() and not resume:
                raise PcsrError(f"{self.run_dir} already holds a run: add --resume to continue it, "
                                f"or --out to start a new one elsewhere")
            if resume and not ckpt_path.exists():
                raise PcsrError(f"--resume: {ckpt_path} does not exist")
            self.run_dir.mkdir(parents=True, exist_ok=True)
        D.barrier(self.dist)

        torch.manual_seed(cfg.seed)
        self.net = build_model(self.spec)
        if cfg.init_from:
            self._load_init(cfg.init_from)
        self._freeze()
        self.net.to(self.device)
        if cfg.channels_last:
            self.net.to(memory_format=torch.channels_last)
        self.params = [p for p in self.net.parameters() if p.requires_grad]
        self.holds = hold_masks(self.net, cfg.hold.parts, cfg.hold.channels)
        self.opt = torch.optim.Adam(self.params, lr=cfg.optim.lr, betas=tuple(cfg.optim.betas),
                                    weight_decay=cfg.optim.weight_decay)
        self.sched = CosineSchedule(self.opt, cfg.optim.lr, cfg.optim.min_lr, cfg.optim.iterations)
        self.ema = Ema(self.net, cfg.optim.ema) if cfg.optim.ema else None
        self.precision = training_precision(cfg.precision, self.device)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.precision == "fp16")
        self.model = self.net
        if self.dist.enabled:
            ids = [self.device.index] if self.device.type == "cuda" else None
            self.model = nn.parallel.DistributedDataParallel(self.net, device_ids=ids)
        self.gen = torch.Generator().manual_seed(cfg.seed * 1_000_003 + 7919 * (self.dist.rank + 1))
        if images is None:  # a caller running several phases on one pool decodes it once (load_images)
            images, _ = load_images(cfg.data.folders)
        self.sampler = PatchSampler(images, cfg.data, self.spec.scale, self.gen, self.device)
        self.iteration, self.wall, self.best, self.last_val = 0, 0.0, None, None
        if resume:
            self._restore(read_checkpoint(ckpt_path))
        if self.dist.main:
            save_config(cfg, self.run_dir / "config.yaml")
            self._trim_log()

    # ------------------------------------------------------------------ setup
    def _load_init(self, src: str) -> None:
        state = load_init_state(src)
        if self.is_pcsr and self.cfg.phase == 1:
            heavy = f"upsamplers.{len(self.spec.upsamplers) - 1}."
            keep = {k: v for k, v in state.items() if k.startswith(("backbone.", heavy))}
            own = {k for k in self.net.state_dict() if k.startswith(("backbone.", heavy))}
            if set(keep) != own:
                raise PcsrError(f"init_from {src}: its backbone / heavy upsampler do not match this model")
            state = {**self.net.state_dict(), **keep}
        try:
            self.net.load_state_dict(state)
        except RuntimeError as e:
            raise PcsrError(f"init_from {src}: weights do not fit the model ({str(e).splitlines()[0]})") from None

    def frozen_modules(self) -> list[nn.Module]:
        own = named_parts(self.net, self.cfg.freeze, "freeze")
        if not self.is_pcsr:
            return own
        if self.cfg.phase == 0:  # classifier and lighter upsamplers take no part in phase 0
            return [*own, self.net.classifier, *self.net.upsamplers[:-1]]
        return [*own, self.net.backbone, self.net.upsamplers[-1]]

    def _freeze(self) -> None:
        for m in self.frozen_modules():
            for p in m.parameters():
                p.requires_grad_(False)

    def train_mode(self) -> None:
        """Frozen parts stay in eval mode so that their batch-norm statistics never move."""
        self.net.train()
        for m in self.frozen_modules():
            m.eval()

    # ------------------------------------------------------------------ state
    def state(self) -> dict:
        data_states = D.gather_generator_states(self.dist, self.gen.get_state())
        rng = {"torch": torch.get_rng_state(), "data": data_states}
        if torch.cuda.is_available():
            rng["cuda"] = torch.cuda.get_rng_state(self.device) if self.device.type == "cuda" else torch.cuda.get_rng_state()
        return {
            "format": CHECKPOINT_FORMAT, "iteration": self.iteration, "wall_time": self.wall,
            "model": {k: v.detach().cpu() for k, v in self.net.state_dict().items()},
            "optimizer": self.opt.state_dict(), "scheduler": self.sched.state_dict(),
            "scaler": self.scaler.state_dict(), "rng": rng, "world_size": self.dist.world,
            "best": self.best or {}, "last_val": json.dumps(self.last_val) if self.last_val else "",
            "config": self.cfg.to_dict(), "spec": self.spec.to_dict(), "precision": self.precision,
            "ema": self.ema.state_dict() if self.ema else {},
        }

    def _restore(self, ck: dict) -> None:
        self.net.load_state_dict(ck["model"])
        self.opt.load_state_dict(ck["optimizer"])
        self.sched.load_state_dict(ck["scheduler"])  # the config's schedule wins: a run may be lengthened
        if ck.get("scaler"):
            self.scaler.load_state_dict(ck["scaler"])
        self.iteration, self.wall = int(ck["iteration"]), float(ck["wall_time"])
        if self.ema is not None and ck.get("ema"):
            self.ema.load_state_dict(ck["ema"])
        elif self.ema is not None:  # averaging switched on for a resumed run: start from its weights
            self.ema = Ema(self.net, self.cfg.optim.ema)
        self.best = ck.get("best") or None
        self.last_val = json.loads(ck["last_val"]) if ck.get("last_val") else None
        rng = ck["rng"]
        torch.set_rng_state(rng["torch"])
        if "cuda" in rng and self.device.type == "cuda":
            torch.cuda.set_rng_state(rng["cuda"], self.device)
        if int(ck.get("world_size", 1)) == self.dist.world:
            self.gen.set_state(rng["data"][self.dist.rank])
        else:  # another world size cannot continue the same batches; stay reproducible at least
            self.gen.manual_seed(self.cfg.seed * 1_000_003 + 7919 * (self.dist.rank + 1) + self.iteration)

    def save_checkpoint(self) -> None:
        D.sync_buffers(self.dist, self.net)  # collectives under DDP: every rank calls them
        state = self.state()
        if self.dist.main:
            atomic_torch_save(state, self.run_dir / "last.pt")

    def _trim_log(self) -> None:
        """After a resume, drop log lines written past the checkpoint the run continues from."""
        log = self.run_dir / "log.jsonl"
        if not log.exists():
            return
        keep = []
        for line in log.read_text().splitlines():
            try:
                if json.loads(line).get("it", 0) <= self.iteration:
                    keep.append(line)
            except json.JSONDecodeError:
                continue  # a line cut short by a kill
        log.write_text("".join(k + "\n" for k in keep))

    def log(self, record: dict) -> None:
        if self.dist.main:
            with open(self.run_dir / "log.jsonl", "a") as f:
                f.write(json.dumps(record) + "\n")

    # ------------------------------------------------------------------ one step
    def loss(self, b: Batch) -> tuple[torch.Tensor, dict]:
        cfg = self.cfg
        lr = b.lr.contiguous(memory_format=torch.channels_last) if cfg.channels_last else b.lr
        q = {} if b.coord is None else {"coord": b.coord, "cell": b.cell}
        s = None if b.coord is not None else int(round(b.scale))
        kind, rec = cfg.loss.kind, RECONSTRUCTION[cfg.loss.kind]
        if not self.is_pcsr:
            pred = self.model(lr)
            loss = rec(pred, b.hr)
            return loss, {kind: loss.item()}
        if cfg.phase == 0:
            pred, _ = self.model(lr, scale=s, heavy_only=True, **q)
            loss = rec(pred, b.hr)
            return loss, {kind: loss.item()}
        pred, prob = self.model(lr, scale=s, **q)
        rgb = rec(pred, b.hr)
        avg = average_loss(prob, class_dim=1 if b.coord is None else -1)
        loss = cfg.loss.w_rgb * rgb + cfg.loss.w_avg * avg
        heavy = prob.float().movedim(1 if b.coord is None else -1, -1)[..., -1].mean().item()
        return loss, {kind: rgb.item(), "l_avg": avg.item(), "heavy_p": heavy}

    def step(self) -> tuple[float, dict]:
        batch = self.sampler.next()
        with autocast(self.device, self.precision):
            loss, parts = self.loss(batch)
        self.opt.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        apply_holds(self.holds)
        self.scaler.step(self.opt)
        self.scaler.update()
        self.sched.step()
        if self.ema is not None:
            self.ema.update(self.net)
        return loss.item(), parts

    # ------------------------------------------------------------------ validation
    def routings(self) -> dict[str, Routing | None]:
        if not self.is_pcsr:
            return {"original": None}
        if self.cfg.phase == 0:
            return {"all-heavy": Routing(budget=1.0)}
        out = {f"k={k:g}": Routing(k=k) for k in self.cfg.val.k}
        if self.cfg.val.all_heavy:
            out["all-heavy"] = Routing(budget=1.0)
        return out

    def validate(self) -> dict:
        """Figures by folder and routing, fp32, through the same path as `pcsr eval`; with averaging,
        of the averaged weights, and of the raw ones too (keys ending in " raw") to show what it gives."""
        from ..eval import evaluate
        res: dict = {}

        def measure(suffix: str) -> None:
            model = Core(self.net, device=str(self.device), precision="fp32")
            for folder in self.cfg.val.folders:
                figs = res.setdefault(Path(folder).name, {})
                for key, r in self.routings().items():
                    e = evaluate(model, folder, scale=self.spec.scale, routing=r)
                    figs[key + suffix] = {"psnr_y": round(e["psnr_y"], 4), "psnr_rgb": round(e["psnr_rgb"], 4),
                                          "gflops": round(e["gflops"], 4), "heavy_fraction": e["heavy_fraction"]}
        try:
            if self.ema is not None:
                with self.ema.swapped_in(self.net):
                    measure("")
            measure(" raw" if self.ema is not None else "")
        finally:
            self.train_mode()
        return res

    def save_weights(self, path: Path) -> None:
        """Inference weights: the averaged ones where the run keeps an average."""
        with self.ema.swapped_in(self.net) if self.ema is not None else nullcontext():
            weights_io.save(self.net, path, info=self.info())

    def info(self) -> dict:
        return {
            "trained_by": "pcsr train", "run": self.cfg.name, "phase": self.cfg.phase if self.is_pcsr else None,
            "iterations": self.iteration, "wall_time_hours": round(self.wall / 3600, 3),
            "precision": self.precision, "batch_size": self.cfg.data.batch_size * self.dist.world,
            "lr_patch": self.cfg.data.lr_patch, "validation": self.last_val, "best": self.best,
            "data": [str(f) for f in self.cfg.data.folders], "licence": LICENCE_NOTE,
        }

    def _after_validation(self, res: dict) -> None:
        self.last_val = {"it": self.iteration, **res}
        first = next(iter(res.values()), None)
        if not first:
            return
        key, fig = next(iter(first.items()))
        if self.best is None or fig["psnr_y"] > self.best.get("psnr_y", -1.0):
            self.best = {"psnr_y": fig["psnr_y"], "it": self.iteration, "routing": key,
                         "folder": next(iter(res))}
            self.save_weights(self.run_dir / "best.safetensors")

    # ------------------------------------------------------------------ the loop
    def run(self) -> "Trainer":
        cfg, main = self.cfg, self.dist.main
        total = cfg.optim.iterations
        stop_at = total if self.stop_after is None else min(total, self.iteration + self.stop_after)
        stop, old = {"flag": False}, None
        if main and threading.current_thread() is threading.main_thread():
            old = signal.signal(signal.SIGTERM, lambda *_: stop.update(flag=True))
        bar = None
        if main and self.progress:
            from tqdm import tqdm
            bar = tqdm(total=total, initial=self.iteration, unit="it", dynamic_ncols=True, mininterval=5,
                       smoothing=0.05, desc=cfg.name)
        self.train_mode()
        session_t0, wall0 = time.perf_counter(), self.wall
        last_ckpt = time.monotonic()
        acc: dict[str, float] = {}
        n_acc, t_steps = 0, 0.0
        try:
            while self.iteration < stop_at:
                t0 = time.perf_counter()
                loss, parts = self.step()
                t_steps += time.perf_counter() - t0
                self.iteration += 1
                self.wall = wall0 + time.perf_counter() - session_t0
                if not math.isfinite(loss):
                    raise PcsrError(f"iteration {self.iteration}: the loss is {loss}; lower optim.lr or use fp32")
                for k, v in {"loss": loss, **parts}.items():
                    acc[k] = acc.get(k, 0.0) + v
                n_acc += 1
                if bar is not None:
                    bar.update(1)
                    if self.iteration % 10 == 0:
                        bar.set_postfix(loss=f"{loss:.4f}", refresh=False)
                if self.iteration % cfg.log_every == 0 or self.iteration == stop_at:
                    rec = {"it": self.iteration, **{k: v / n_acc for k, v in acc.items()},
                           "lr": self.sched.get_last_lr()[0], "it_per_s": n_acc / max(t_steps, 1e-9),
                           "wall": round(self.wall, 1)}
                    self.log(rec)
                    acc, n_acc, t_steps = {}, 0, 0.0
                val_due = cfg.val.folders and cfg.val.every and self.iteration % cfg.val.every == 0
                end = self.iteration == total
                if cfg.val.folders and (val_due or (end and cfg.val.at_end)):
                    D.sync_buffers(self.dist, self.net)
                    if main:
                        res = self.validate()
                        self._after_validation(res)
                        self.log({"it": self.iteration, "val": res})
                        if bar is not None:
                            bar.write(f"[{self.iteration}] validation {json.dumps(res)}")
                    D.barrier(self.dist)
                due = time.monotonic() - last_ckpt >= cfg.checkpoint_minutes * 60
                # a lent GPU is held for minutes, not iterations: stop (with a checkpoint) on time
                late = self.minutes is not None and time.perf_counter() - session_t0 >= self.minutes * 60
                due, stopping = D.broadcast_flags(self.dist, [due, stop["flag"] or late])
                if due or stopping:
                    self.save_checkpoint()
                    last_ckpt = time.monotonic()
                if stopping:
                    break
        finally:
            if bar is not None:
                bar.close()
            if old is not None:
                signal.signal(signal.SIGTERM, old)
        self.save_checkpoint()
        if main and self.iteration == total and not (self.run_dir / "best.safetensors").exists():
            self.save_weights(self.run_dir / "best.safetensors")
        D.barrier(self.dist)
        return self


def train(cfg: TrainConfig, run_dir: str | Path, resume: bool = False, stop_after: int | None = None,
          progress: bool = True, minutes: float | None = None, images: list[torch.Tensor] | None = None) -> Trainer:
    """`stop_after` iterations / `minutes` end a session early (checkpointed); `images`: cfg's decoded pool."""
    return Trainer(cfg, run_dir, resume, stop_after, progress, minutes, images).run()


