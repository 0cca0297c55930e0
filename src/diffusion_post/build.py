"""What the workflow's rules call: one function per kind of target."""

from pathlib import Path

from . import __version__, figures
from .backends import load_backend
from .images import load_image, load_result, save_result


def make_result(name: str, spec: dict, backend: dict, inputs: dict[str, str], source: str | None, output: str,
                progress: bool = False) -> None:
    """Sample one figure: resolved parameters in, a results/<name>.safetensors out (written atomically)."""
    cascade = load_backend(backend)
    size = cascade.stage_1.sample_size
    ctx = figures.Context(
        cascade=cascade, name=name, spec=spec, progress=progress,
        images={key: load_image(path, size) for key, path in inputs.items()},
        source=load_result(source)[0] if source else None,
    )
    tensors = figures.make(ctx)
    save_result(tensors, output, {"figure": name, **spec, "models": cascade.description, "diffusion_post": __version__})


def write_builtin_input(name: str, output: str) -> None:
    from .data.inputs import write_default_input

    Path(output).parent.mkdir(parents=True, exist_ok=True)
    write_default_input(name, output)
