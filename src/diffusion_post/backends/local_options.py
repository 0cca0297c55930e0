"""The local denoiser's options (config.yaml `backend/local`), without torch: the config check builds them while the
workflow is parsed, so a bad value is one line before any job runs (backends/local.py says what each one does)."""

from dataclasses import dataclass

from ..spec import STAGE_1_SIZE

POOL = 4  # ranking resolution: 4 x 4 cells of the 64-px grid


@dataclass(frozen=True)
class LocalOptions:
    """The local denoiser's settings and their defaults, tuned on the post's config (docs/local_denoiser.md says what
    each does and why it has its value; docs/experiments/quality.md the measurements). config.yaml may override any
    of them under backend/local."""

    window: tuple[int, int] = (3, 15)  # window side P (odd, 64-px pixels) at t = 0 and at t = 999, linear in between
    temperature: float = 0.05  # of the prompt weights w_n (the exact denoiser's sharper 0.01 picks one caption)
    shift: int = 0  # shifted copies of every image, offsets {-shift, 0, shift}^2 pixels (a multiple of 4); 0 = none
    prior_fade: float = 1  # below the top steps the prompt prior is scaled by lambda = (P / window[1])^prior_fade
    candidates: int = 8  # images kept per block of `block` x `block` pixels ...
    share: int = 2  # ... plus the `share` best of each of its 4 neighbours (<= candidates)
    block: int = 8
    top: int = 930  # stage I's top steps, t >= top (1000 = none), use ...
    top_window: int = 3  # ... this window side ...
    top_prior: float = 0.8  # ... and lambda = top_prior

    @classmethod
    def from_config(cls, local: dict) -> "LocalOptions":
        """From config.yaml's `backend/local` (lists as tuples); raises ValueError with one line naming the setting."""
        unknown = sorted(set(local) - set(cls.__dataclass_fields__))
        if unknown:
            raise ValueError(f"local/{unknown[0]}: not a local setting: use one of {', '.join(cls.__dataclass_fields__)}")
        return cls(**{key: tuple(value) if isinstance(value, list) else value for key, value in local.items()})

    def __post_init__(self):
        small, large = self.window
        if not (small % 2 == 1 and large % 2 == 1 and 1 <= small <= large):
            raise ValueError(f"local/window {list(self.window)}: give [small, large], both odd, small <= large")
        if self.temperature <= 0:
            raise ValueError(f"local/temperature {self.temperature}: give a positive temperature, e.g. 0.05")
        if self.shift % POOL or self.shift < 0:
            raise ValueError(f"local/shift {self.shift}: give 0 or a positive multiple of {POOL}")
        if STAGE_1_SIZE % self.block or self.block % POOL:
            raise ValueError(f"local/block {self.block}: give a multiple of {POOL} that divides {STAGE_1_SIZE}")
        if self.candidates < 1:
            raise ValueError(f"local/candidates {self.candidates}: give 1 or more")
        if not 0 <= self.share <= self.candidates:
            raise ValueError(f"local/share {self.share}: give 0 (each block its own candidates) to candidates "
                             f"({self.candidates})")
        if self.prior_fade < 0:
            raise ValueError(f"local/prior_fade {self.prior_fade}: give 0 (the full prior at every window) or more")
        if not 0 <= self.top <= 1000:
            raise ValueError(f"local/top {self.top}: give 0 to 1000 (1000: no top steps)")
        if not (self.top_window % 2 == 1 and self.top_window >= 1):
            raise ValueError(f"local/top_window {self.top_window}: give an odd window side, e.g. 3")
        if self.top_prior < 0:
            raise ValueError(f"local/top_prior {self.top_prior}: give 0 or more")

    def window_at(self, t: int) -> int:
        """P(t), odd: window[0] at t = 0, window[1] at t = 999."""
        small, large = self.window
        return 2 * round((small + (large - small) * t / 999 - 1) / 2) + 1

    def prior_scale(self, P: int) -> float:
        """lambda(P) = (P / window[1])^prior_fade, the prompt prior's scale at window side P."""
        return (P / self.window[1]) ** self.prior_fade

    def at(self, t: int, stage: int = 1) -> tuple[int, float]:
        """The window side and the prior scale at t: stage I's top steps' own, else P(t) and lambda(P(t))."""
        if stage == 1 and t >= self.top:
            return self.top_window, self.top_prior
        P = self.window_at(t)
        return P, self.prior_scale(P)

    def offsets(self) -> list[tuple[int, int]]:
        steps = (-self.shift, 0, self.shift) if self.shift else (0,)
        return [(dy, dx) for dy in steps for dx in steps]
