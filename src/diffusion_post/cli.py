"""diffusion-post: preview the post as you edit it, make one figure without Snakemake, inspect a figure's parameters,
verify the published figures, manage inputs and caches."""

import argparse
import json
import sys
from pathlib import Path


def _figure(args) -> None:
    from . import config as post_config, layout
    from .build import encode_figure_prompts, make_result, write_builtin_input

    config = post_config.load(args.config)
    if args.backend:
        config["backend"]["name"] = args.backend
    table = post_config.figure_table(config)
    if args.name not in table:
        raise post_config.ConfigError(f"no figure {args.name!r} in {args.config}: use one of {', '.join(table)}")
    spec = post_config.resolve(config, args.name)
    for key, value in config["inputs"].items():  # the shipped inputs (the ideal backend's set holds them all)
        path = post_config.input_path(config, key)
        if value.startswith(post_config.BUILTIN) and not Path(path).exists():
            write_builtin_input(value[len(post_config.BUILTIN):], path)
    inputs = post_config.input_files(config, spec)
    source = f"results/{spec['source']}.safetensors" if "source" in spec else None
    if source and not Path(source).exists():
        raise FileNotFoundError(f"figure {args.name} starts from {source}: make it first (diffusion-post figure {spec['source']})")
    result = f"results/{args.name}.safetensors"
    backend = post_config.figure_backend(config, spec)
    encode_figure_prompts(spec, backend)  # T5 released before the UNets load
    make_result(args.name, post_config.sampling_spec(spec), backend, inputs, source, result, progress=True,
                place=post_config.place(config, args.name))
    output = args.output or f"figures/{args.name}.png"
    layout.figure(result, output)
    print(output)


def _describe(args) -> None:
    from .png import read_parameters

    print(json.dumps(read_parameters(args.png), indent=2, sort_keys=True))


def _verify(args) -> int:
    from .verify import IDENTICAL, table, verify

    rows = verify(".", args.published, args.figures, cores=args.cores)
    print(table(rows))
    return 0 if all(row.status == IDENTICAL for row in rows) else 1


def _inputs(args) -> None:
    from .data.inputs import DEFAULT_INPUTS

    for name, about in DEFAULT_INPUTS.items():
        print(f"builtin:{name:20s} {about}")


def _check_config(args) -> None:
    from . import config as post_config

    post_config.load(args.config)
    print(f"{args.config}: valid")


def _preview(args) -> None:
    from . import preview

    preview.run(port=args.port, cores=args.cores)


def _import_embeddings(args) -> None:
    from .backends.catalog import text_encoder_key
    from .backends.prompt_cache import PromptCache

    cache = PromptCache(Path(args.cache_dir) / "prompt_embeds", text_encoder_key(args.text_encoder), lambda: None)
    print(f"imported {cache.import_dict(args.file)} prompt embeddings into {cache.folder}")


def _cores(text: str) -> str:
    if text != "all" and not (text.isdigit() and int(text) >= 1):
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive whole number or 'all'")
    return text


def _port(text: str) -> int:
    if not text.isdigit() or int(text) > 65535:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port number (0 to 65535; 0: any free port)")
    return int(text)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="diffusion-post", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    p = commands.add_parser("preview", help="serve the post on 127.0.0.1 and rebuild it (Snakemake) whenever config.yaml, a "
                                           "template, an input image or the site changes; the page reloads by itself")
    p.add_argument("--port", type=_port, default=4000, help="HTTP port (default 4000; 0: any free port)")
    p.add_argument("--cores", type=_cores, default="all", help="Snakemake's --cores (default all: each sampling job runs one thread)")
    p.set_defaults(run=_preview)

    p = commands.add_parser("figure", help="sample and lay out one figure of config.yaml (with a progress bar)")
    p.add_argument("name")
    p.add_argument("--config", default="config.yaml")
    p.add_argument("--backend", choices=["ideal", "deepfloyd", "tiny", "trained"], help="override backend/name")
    p.add_argument("--output", help="PNG path (default figures/NAME.png)")
    p.set_defaults(run=_figure)

    p = commands.add_parser("describe", help="print the parameters a figure PNG carries")
    p.add_argument("png")
    p.set_defaults(run=_describe)

    p = commands.add_parser("verify", help="rebuild the figures in a scratch folder and compare them with the published "
                                           "ones (exit 0 only when every one is identical)")
    p.add_argument("--figures", nargs="+", metavar="NAME", help="check only these figures (default: all)")
    p.add_argument("--published", help="the published figures (default: site/assets/figures)")
    p.add_argument("--cores", type=_cores, default="1", help="cores of the rebuild (default 1; the figures do not depend on it)")
    p.set_defaults(run=_verify)

    p = commands.add_parser("inputs", help="list the input images the project ships (builtin:NAME)")
    p.set_defaults(run=_inputs)

    p = commands.add_parser("check-config", help="validate a config file")
    p.add_argument("config", nargs="?", default="config.yaml")
    p.set_defaults(run=_check_config)

    p = commands.add_parser("import-embeddings", help="import a {prompt: tensor} file (e.g. the course's prompt_embeds_dict.pth)")
    p.add_argument("file")
    p.add_argument("--text-encoder", default="DeepFloyd/IF-I-L-v1.0",
                   help="the T5 the embeddings came from: any IF-I repository (IF-I-M, -L and -XL share one T5), or a folder")
    p.add_argument("--cache-dir", default=".cache")
    p.set_defaults(run=_import_embeddings)

    args = parser.parse_args(argv)
    try:
        status = args.run(args) or 0
    except (ValueError, OSError, RuntimeError) as error:  # every expected failure: one line, no traceback
        if isinstance(error, OSError) and error.filename is not None:
            message = f"{error.filename}: {error.strerror.lower()}: check the path"
        else:
            message = " ".join(str(error).split()) or type(error).__name__
        print(f"diffusion-post: error: {message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("diffusion-post: interrupted (nothing half-written is left: every output is written atomically)", file=sys.stderr)
        return 130
    return status


if __name__ == "__main__":
    sys.exit(main())
