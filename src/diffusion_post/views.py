"""Views for visual anagrams: view(x) transforms the model input (all channels), inverse_view(out) maps the
model output (noise and learned-range values) back. Adding a view = one class + one registry line."""

from torch import Tensor

from .denoiser import join_output, split_output


class View:
    def view(self, x: Tensor) -> Tensor:
        raise NotImplementedError

    def inverse_view(self, out: Tensor) -> Tensor:
        raise NotImplementedError


class Identity(View):
    def view(self, x):
        return x

    def inverse_view(self, out):
        return out


class Flip(View):
    """Upside down (flip along H)."""

    def view(self, x):
        return x.flip(-2)

    def inverse_view(self, out):
        return out.flip(-2)


class RotateCW(View):
    def view(self, x):
        return x.rot90(-1, dims=(-2, -1))

    def inverse_view(self, out):
        return out.rot90(1, dims=(-2, -1))


class RotateCCW(View):
    def view(self, x):
        return x.rot90(1, dims=(-2, -1))

    def inverse_view(self, out):
        return out.rot90(-1, dims=(-2, -1))


class Rotate180(View):
    def view(self, x):
        return x.rot90(2, dims=(-2, -1))

    def inverse_view(self, out):
        return out.rot90(2, dims=(-2, -1))


class Negate(View):
    """x -> -x; the noise estimate flips sign, the variance does not."""

    def view(self, x):
        return -x

    def inverse_view(self, out):
        eps_hat, v = split_output(out)
        return join_output(-eps_hat, v)


VIEWS: dict[str, type[View]] = {
    "identity": Identity,
    "flip": Flip,
    "rotate_cw": RotateCW,
    "rotate_ccw": RotateCCW,
    "rotate_180": Rotate180,
    "negate": Negate,
}


def get_view(name: str) -> View:
    if name not in VIEWS:
        raise ValueError(f"unknown view {name!r}: use one of {', '.join(VIEWS)}")
    return VIEWS[name]()
