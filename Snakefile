# Implementing Diffusion Models: every figure of the post, the post, and its Jekyll site, from config.yaml.
#   snakemake --cores 1            build everything (the profile in profiles/default is picked up)
#   snakemake -n                   what would rerun, and why
#   snakemake --cores 1 figures    figures only;  snakemake --cores 1 post   figures + the markdown post
from snakemake.utils import min_version

min_version("9.0")


configfile: "config.yaml"


include: "workflow/rules/common.smk"
include: "workflow/rules/sampling.smk"
include: "workflow/rules/figures.smk"
include: "workflow/rules/post.smk"


rule all:
    """The whole post: figures, markdown, and the built Jekyll site."""
    default_target: True
    input:
        rules.site.output,


rule figures:
    """Every figure of the post, and the frames of its interactive figures."""
    input:
        figure_files(),
        frame_files(),
