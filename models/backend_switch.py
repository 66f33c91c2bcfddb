"""The one mechanism that selects an attention kernel: a process-wide choice among named backends (set, read, or
forced for a block with a context manager), which a module may pin for itself (a constructor argument, None =
follow the process-wide choice). models.layers (dense attention) and models.nit.varlen_attention (packed sequences)
each hold one switch over their own kernels."""
from __future__ import annotations

import contextlib
import os


class BackendSwitch:
    def __init__(self, what: str, names: tuple[str, ...], default: str, env: str | None = None):
        self.what, self.names = what, tuple(names)
        # an environment variable may set the process-wide default (read once, here)
        if env is not None and env in os.environ:
            self.current = self.check(os.environ[env], env)
        else:
            self.current = self.check(default)

    def check(self, name, what: str | None = None) -> str:
        if name not in self.names:
            raise ValueError(f"{what or self.what} must be one of {self.names}, got {name!r}")
        return name

    def check_pin(self, name) -> None:
        """A module's own choice: a backend name, or None to follow the process-wide one."""
        if name is not None and name not in self.names:
            raise ValueError(f"{self.what} must be one of {self.names} or None, got {name!r}")

    def set(self, name: str) -> None:
        self.current = self.check(name)

    def get(self) -> str:
        return self.current

    def pick(self, pinned: str | None = None) -> str:
        """The backend of one call: the module's pin, else the process-wide choice."""
        return self.check(pinned or self.current)

    @contextlib.contextmanager
    def use(self, name: str):
        """`with switch.use('math'): ...`: the process-wide choice inside the block, restored after it."""
        previous = self.current
        self.set(name)
        try:
            yield
        finally:
            self.current = previous
