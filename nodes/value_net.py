"""A learned critic (beyond the paper): a small torch value network trained by TD(0).

It values a state from the embedding of its text, with no LLM call, so the critic costs
microseconds instead of a model call per step; it learns from the same transitions that fill the
critic memory: target = r + gamma * V(s') (V = 0 after the last step).
"""

from __future__ import annotations

import json
import threading
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from storage.files import atomic_write_bytes, atomic_write_json

VALUE_RANGE = 5.0


class LearnedCritic:
    """Estimate V(s) in [-5, 5] from a state embedding; learn by TD(0); persist as safetensors."""

    def __init__(
        self, dim: int, path: Path | None = None, hidden: int = 64, lr: float = 1e-2, seed: int = 0
    ) -> None:
        gen = torch.Generator().manual_seed(seed)
        self.net = torch.nn.Sequential(
            torch.nn.Linear(dim, hidden), torch.nn.Tanh(), torch.nn.Linear(hidden, 1)
        )
        with torch.no_grad():
            for p in self.net.parameters():
                p.copy_(torch.randn(p.shape, generator=gen) * 0.05)
        self.opt = torch.optim.SGD(self.net.parameters(), lr=lr)
        self.path = Path(path) if path else None
        self.updates = 0
        self._lock = threading.Lock()
        if self.path and (self.path / "value_net.safetensors").is_file():
            self._load()
        self._saved = self.updates  # untrained weights are a pure function of the seed

    def _forward(self, vector: np.ndarray) -> torch.Tensor:
        x = torch.as_tensor(np.asarray(vector, dtype=np.float32)).reshape(1, -1)
        return VALUE_RANGE * torch.tanh(self.net(x)[0, 0])

    def value(self, vector: np.ndarray) -> float:
        """Return V(s) for a state embedding."""
        with self._lock, torch.no_grad():
            return float(self._forward(vector))

    def update(self, state: np.ndarray, target: float) -> float:
        """Take one TD(0) step towards `target` (= r + gamma * V(s')); return the TD error."""
        with self._lock:
            pred = self._forward(state)
            target_t = torch.tensor(float(np.clip(target, -VALUE_RANGE, VALUE_RANGE)))
            loss = (pred - target_t) ** 2
            self.opt.zero_grad()
            loss.backward()
            self.opt.step()
            self.updates += 1
            return float(target_t - pred.detach())

    def save(self) -> None:
        """Write weights and the update count atomically (no-op without a path or new updates).

        Skipping an unchanged network spares every episode of the LLM critic two fsyncs; an
        untrained one is rebuilt identically from its seed.
        """
        if self.path is None:
            return
        with self._lock:
            if self.updates == self._saved:
                return
            self.path.mkdir(parents=True, exist_ok=True)
            tmp = self.path / ".value_net.tmp"
            save_file(self.net.state_dict(), str(tmp))
            atomic_write_bytes(self.path / "value_net.safetensors", tmp.read_bytes())
            tmp.unlink(missing_ok=True)
            atomic_write_json(self.path / "value_net.json", {"updates": self.updates})
            self._saved = self.updates

    def _load(self) -> None:
        assert self.path is not None
        file = self.path / "value_net.safetensors"
        try:
            self.net.load_state_dict(load_file(str(file)))
            meta = json.loads((self.path / "value_net.json").read_text())
            self.updates = int(meta.get("updates", 0))
        except (SafetensorError, OSError, ValueError, RuntimeError) as err:
            raise ValueError(
                f"{file} is corrupt ({err}); delete {self.path} to start the learned critic afresh"
            ) from err
